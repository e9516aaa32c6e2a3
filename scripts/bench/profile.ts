/**
 * Summary of a V8 CPU profile (`node --cpu-prof`): self and inclusive time per function, as a
 * share of the profile's busy time (everything except "(idle)"). The bench runner uses it for
 * `--profile`; it can also be run on its own:
 *
 *   npx tsx scripts/bench/profile.ts FILE.cpuprofile [TOP] [FROM_US]
 *
 * It reads a profile; it does not start or stop anything.
 */
import { readFileSync } from "node:fs"
import { relative } from "node:path"
import { fileURLToPath } from "node:url"

interface CallFrame {
  readonly functionName: string
  readonly url: string
  readonly lineNumber: number
}
interface ProfileNode {
  readonly id: number
  readonly callFrame: CallFrame
  readonly children?: readonly number[]
}
interface CpuProfile {
  readonly startTime: number
  readonly nodes: readonly ProfileNode[]
  readonly samples: readonly number[]
  readonly timeDeltas: readonly number[]
}

export interface ProfileRow {
  /** `name (file:line)` */
  readonly fn: string
  readonly selfPct: number
  readonly totalPct: number
}

export interface ProfileSummary {
  readonly busyMs: number
  readonly idleMs: number
  /** Self time by area (koffi syscalls, data path, Effect runtime, GC, …), % of busy. */
  readonly areas: ReadonlyArray<{ readonly area: string; readonly pct: number }>
  readonly self: readonly ProfileRow[]
  readonly inclusive: readonly ProfileRow[]
}

const areaOf = (f: CallFrame, root: string): string => {
  if (f.functionName === "(garbage collector)") return "garbage collector"
  const u = f.url.startsWith("file://") ? relative(root, fileURLToPath(f.url)) : f.url
  if (/^(dist|src)\/ffi\//.test(u)) return "syscalls through koffi (ffi/)"
  if (/^(dist|src)\/(proxy\/connection|shadow|wire|protocol|generated)/.test(u)) return "data path (connection, shadow, wire)"
  if (/^(dist|src)\/(transport|proxy)\//.test(u)) return "transport and listener"
  if (/^(dist|src)\//.test(u)) return "other sommelier code"
  if (u.includes("node_modules/effect/")) return "Effect runtime"
  if (u.includes("node_modules/")) return "other packages"
  if (u.startsWith("node:")) return "Node internals"
  return "V8/native (program, builtins)"
}

const label = (f: CallFrame, root: string): string => {
  const name = f.functionName === "" ? "(anonymous)" : f.functionName
  if (f.url === "") return name
  const path = f.url.startsWith("file://") ? relative(root, fileURLToPath(f.url)) : f.url
  return `${name} (${path}:${f.lineNumber + 1})`
}

/**
 * `fromUs`: ignore samples taken before this CLOCK_MONOTONIC time in µs (V8 stamps profiles with
 * that clock on Linux, like `process.hrtime`), so the proxy's start-up does not drown the
 * steady state.
 */
export const summarizeProfile = (
  file: string,
  options: {
    readonly top?: number
    readonly root?: string
    readonly fromUs?: number
    /** Only samples inside one of these [from, to] CLOCK_MONOTONIC µs windows. */
    readonly windows?: ReadonlyArray<readonly [number, number]>
  } = {}
): ProfileSummary => {
  const top = options.top ?? 15
  const root = options.root ?? process.cwd()
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile
  const byId = new Map<number, ProfileNode>()
  const parent = new Map<number, number>()
  for (const n of p.nodes) {
    byId.set(n.id, n)
    for (const c of n.children ?? []) parent.set(c, n.id)
  }
  const self = new Map<string, number>()
  const incl = new Map<string, number>()
  const areas = new Map<string, number>()
  let busy = 0
  let idle = 0
  let t = p.startTime
  const from = options.fromUs ?? 0
  for (let i = 0; i < p.samples.length; i++) {
    const node = byId.get(p.samples[i]!)
    const dt = p.timeDeltas[i] ?? 0
    t += dt
    if (node === undefined || t < from) continue
    if (options.windows !== undefined && !options.windows.some(([a, b]) => t >= a && t <= b)) continue
    if (node.callFrame.functionName === "(idle)") {
      idle += dt
      continue
    }
    busy += dt
    const area = areaOf(node.callFrame, root)
    areas.set(area, (areas.get(area) ?? 0) + dt)
    const key = label(node.callFrame, root)
    self.set(key, (self.get(key) ?? 0) + dt)
    // Inclusive time: each function once per sample, however often it recurses.
    const seen = new Set<string>()
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const k = label(byId.get(id)!.callFrame, root)
      if (seen.has(k)) continue
      seen.add(k)
      incl.set(k, (incl.get(k) ?? 0) + dt)
    }
  }
  const rows = (m: Map<string, number>, skip: (k: string) => boolean): ProfileRow[] =>
    [...m.entries()]
      .filter(([k]) => !skip(k))
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([fn]) => ({ fn, selfPct: (100 * (self.get(fn) ?? 0)) / busy, totalPct: (100 * (incl.get(fn) ?? 0)) / busy }))
  return {
    busyMs: busy / 1000,
    idleMs: idle / 1000,
    areas: [...areas.entries()].sort((a, b) => b[1] - a[1]).map(([area, t]) => ({ area, pct: (100 * t) / busy })),
    self: rows(self, () => false),
    // The root and the event loop's own frames include everything; they say nothing.
    inclusive: rows(incl, (k) => k === "(root)" || k.startsWith("(program)"))
  }
}

export const formatProfile = (s: ProfileSummary): string => {
  const lines = [
    `busy ${s.busyMs.toFixed(0)} ms (idle ${s.idleMs.toFixed(0)} ms); self time by area: ${s.areas.map((a) => `${a.area} ${a.pct.toFixed(1)} %`).join(", ")}`,
    "",
    "| self % | total % | function |",
    "|---:|---:|---|"
  ]
  for (const r of s.self) lines.push(`| ${r.selfPct.toFixed(1)} | ${r.totalPct.toFixed(1)} | ${r.fn} |`)
  lines.push("", "| total % | self % | function (by inclusive time) |", "|---:|---:|---|")
  for (const r of s.inclusive) lines.push(`| ${r.totalPct.toFixed(1)} | ${r.selfPct.toFixed(1)} | ${r.fn} |`)
  return lines.join("\n")
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2]
  if (file === undefined) {
    process.stderr.write("usage: tsx scripts/bench/profile.ts FILE.cpuprofile [TOP]\n")
    process.exit(2)
  }
  const fromUs = process.argv[4] !== undefined ? Number(process.argv[4]) : undefined
  console.log(formatProfile(summarizeProfile(file, { top: Number(process.argv[3] ?? 20), ...(fromUs !== undefined ? { fromUs } : {}) })))
}
