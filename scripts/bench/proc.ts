/**
 * What the bench reads from /proc about the processes it measures: a process and its
 * descendants (waypipe forks one handler per client), CPU time summed over every thread
 * (schedstat, nanoseconds), RSS and PSS (smaps_rollup), and the machine's own busy time so the
 * report can say how loaded the machine was.
 *
 * Linux only; it measures and never signals anything.
 */
import { readdirSync, readFileSync } from "node:fs"

const readText = (path: string): string | null => {
  try {
    return readFileSync(path, "utf8")
  } catch {
    return null
  }
}

interface StatLine {
  readonly pid: number
  readonly comm: string
  readonly ppid: number
}

/** /proc/PID/stat: the comm is in parentheses and may itself contain spaces or ')'. */
const parseStat = (pid: number, text: string): StatLine | null => {
  const open = text.indexOf("(")
  const close = text.lastIndexOf(")")
  if (open < 0 || close < 0) return null
  const rest = text.slice(close + 2).split(" ")
  return { pid, comm: text.slice(open + 1, close), ppid: Number(rest[1]) }
}

/** `root` and every live descendant, minus processes whose comm is in `exclude`. */
export const processTree = (root: number, exclude: ReadonlySet<string> = new Set()): number[] => {
  const children = new Map<number, StatLine[]>()
  const self = new Map<number, StatLine>()
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue
    const text = readText(`/proc/${name}/stat`)
    if (text === null) continue
    const s = parseStat(Number(name), text)
    if (s === null) continue
    self.set(s.pid, s)
    const list = children.get(s.ppid) ?? []
    list.push(s)
    children.set(s.ppid, list)
  }
  const out: number[] = []
  const walk = (pid: number): void => {
    const s = self.get(pid)
    if (s === undefined || exclude.has(s.comm)) return
    out.push(pid)
    for (const c of children.get(pid) ?? []) walk(c.pid)
  }
  walk(root)
  return out
}

/** Per-thread schedstat and per-process tick counts of a set of processes at one moment. */
export interface CpuSnapshot {
  readonly threads: ReadonlyMap<string, number>
  readonly ticks: ReadonlyMap<number, number>
}

/** cutime + cstime: waypipe's per-client processes count here once their parent reaps them. */
const childTicksOf = (pid: number): number => {
  const text = readText(`/proc/${pid}/stat`)
  if (text === null) return 0
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ")
  return Number(rest[13] ?? 0) + Number(rest[14] ?? 0)
}

export const cpuSnapshot = (pids: readonly number[]): CpuSnapshot => {
  const threads = new Map<string, number>()
  const ticks = new Map<number, number>()
  for (const pid of pids) {
    ticks.set(pid, childTicksOf(pid))
    let tids: string[]
    try {
      tids = readdirSync(`/proc/${pid}/task`)
    } catch {
      continue
    }
    for (const tid of tids) {
      const t = readText(`/proc/${pid}/task/${tid}/schedstat`)
      if (t !== null) threads.set(`${pid}/${tid}`, Number(t.split(" ")[0]))
    }
  }
  return { threads, ticks }
}

/**
 * CPU ns used between two snapshots: per thread from schedstat (ns; threads born in between
 * count from 0), plus the reaped children's time of each process (10 ms ticks). A thread that
 * exited in between loses what it used after the first snapshot (never negative): node's
 * threads live on; waypipe's short-lived workers may be undercounted a little.
 */
export const cpuDelta = (a: CpuSnapshot, b: CpuSnapshot): number => {
  let total = 0
  for (const [key, v] of b.threads) total += v - (a.threads.get(key) ?? 0)
  for (const [pid, t1] of b.ticks) {
    const t0 = a.ticks.get(pid)
    if (t0 !== undefined) total += (t1 - t0) * 1e7
  }
  return total
}

export interface Memory {
  readonly rssKiB: number
  readonly pssKiB: number
}

/** RSS and PSS summed over `pids` (smaps_rollup, KiB). */
export const memory = (pids: readonly number[]): Memory => {
  let rss = 0
  let pss = 0
  for (const pid of pids) {
    const t = readText(`/proc/${pid}/smaps_rollup`)
    if (t === null) continue
    rss += Number(/^Rss:\s+(\d+)/m.exec(t)?.[1] ?? 0)
    pss += Number(/^Pss:\s+(\d+)/m.exec(t)?.[1] ?? 0)
  }
  return { rssKiB: rss, pssKiB: pss }
}

/** Machine-wide busy and total jiffies since boot (/proc/stat "cpu" line). */
export const machineCpu = (): { busy: number; total: number } => {
  const line = (readText("/proc/stat") ?? "").split("\n")[0] ?? ""
  const f = line.trim().split(/\s+/).slice(1).map(Number)
  const idle = (f[3] ?? 0) + (f[4] ?? 0)
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0)
  return { busy: total - idle, total }
}

/**
 * Jiffies used by `root` and its live descendants, including their reaped children
 * (utime + stime + cutime + cstime), to tell the bench's own CPU from everyone else's.
 */
export const treeJiffies = (root: number): number => {
  let total = 0
  for (const pid of processTree(root)) {
    const text = readText(`/proc/${pid}/stat`)
    if (text === null) continue
    const rest = text.slice(text.lastIndexOf(")") + 2).split(" ")
    for (const i of [11, 12, 13, 14]) total += Number(rest[i] ?? 0)
  }
  return total
}

/** The 1, 5 and 15 minute load averages. */
export const loadAverage = (): string => (readText("/proc/loadavg") ?? "").split(" ").slice(0, 3).join(" ")
