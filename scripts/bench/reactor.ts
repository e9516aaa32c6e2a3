/**
 * Reactor ping-pong: what the Reactor + SocketEndpoint data path adds to a small-message round
 * trip. A native client and echo server (scripts/bench/pingpong.c, built with `cc -O2` into
 * node_modules/.cache/sommelier-bench) talk either directly over a Unix socket or through a
 * minimal forwarding proxy in a separate node process built on the reactor (accept, connect
 * upstream, forward bytes + fds both ways, nothing else). Everything runs on CPU 0 by default
 * (`taskset -c 0`); rounds interleave direct and proxy, and every figure is a median across rounds.
 *
 *   npx tsx scripts/bench/reactor.ts [--quick] [--no-pin] [--rounds N] [--iterations N] [--size B]
 *
 * Also imported by scripts/bench/run.ts: `runReactorBench(options)` and `formatReactorTable`.
 * The proxy side is this same file run as `reactor.ts --proxy LISTEN UPSTREAM`.
 *
 * Not here: Wayland framing (the proxy forwards opaque bytes), assertions (it measures; the
 * target ≤ 25 µs added median is printed as PASS/MISS).
 */
import { Effect } from "effect"
import { spawn, spawnSync, type ChildProcess } from "node:child_process"
import { createHash } from "node:crypto"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import * as Reactor from "../../src/transport/reactor.js"
import { acceptUnix, closeFd, connectUnix, listenUnix, SocketEndpoint } from "../../src/transport/socket.js"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const TARGET_ADDED_MEDIAN_US = 25

export interface ReactorBenchOptions {
  /** Fewer iterations and rounds. */
  readonly quick?: boolean
  /** Pin every process to one CPU (default true). */
  readonly pin?: boolean
  /** The CPU list for taskset (default "0"). */
  readonly cpu?: string
  readonly rounds?: number
  readonly iterations?: number
  readonly warmup?: number
  /** Message size in bytes (default 32). */
  readonly size?: number
  /** Fd counts to attach to every ping, one row each (default [0, 1]). */
  readonly fds?: readonly number[]
}

export interface Stats {
  readonly medianUs: number
  readonly p99Us: number
  readonly meanUs: number
}

export interface ReactorBenchRow {
  readonly fds: number
  readonly direct: Stats
  readonly proxy: Stats
  /** proxy median − direct median. */
  readonly addedMedianUs: number
  readonly addedP99Us: number
  /** Proxy process CPU (user + system) per round trip, µs. */
  readonly proxyCpuUsPerRoundTrip: number
}

export interface ReactorBenchResult {
  readonly rows: readonly ReactorBenchRow[]
  readonly size: number
  readonly iterations: number
  readonly rounds: number
  readonly pinned: string | null
  readonly targetAddedMedianUs: number
}

// ---------------------------------------------------------------------------------------------
// The proxy (child process)

/** Forward bytes and fds between a client and its upstream connection until either side ends. */
const proxyMain = (listenPath: string, upstreamPath: string): Promise<void> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const reactor = yield* Reactor.make
        const listenFd = yield* listenUnix(listenPath)
        yield* Effect.async<void, Error>((resume) => {
          let connections = 0
          const listenWatch = reactor.watch(listenFd, Reactor.EPOLLIN, () => {
            for (let fd = acceptUnix(listenFd); fd >= 0; fd = acceptUnix(listenFd)) {
              connections++
              const up = Effect.runSync(Effect.either(connectUnix(upstreamPath)))
              if (up._tag === "Left") {
                closeFd(fd)
                resume(Effect.fail(new Error(up.left.message)))
                return
              }
              const client = new SocketEndpoint(fd)
              const server = new SocketEndpoint(up.right)
              let clientWatch: Reactor.Watch | undefined
              let serverWatch: Reactor.Watch | undefined
              const end = (): void => {
                clientWatch?.close()
                serverWatch?.close()
                client.close()
                server.close()
                if (--connections === 0) {
                  listenWatch.close()
                  resume(Effect.void)
                }
              }
              const sync = (): void => {
                // Stop reading a side while the other is backlogged.
                clientWatch?.setEvents((server.pendingBytes > 0 ? 0 : Reactor.EPOLLIN) | (client.pendingBytes > 0 ? Reactor.EPOLLOUT : 0))
                serverWatch?.setEvents((client.pendingBytes > 0 ? 0 : Reactor.EPOLLIN) | (server.pendingBytes > 0 ? Reactor.EPOLLOUT : 0))
              }
              const fds: number[] = []
              const forward = (from: SocketEndpoint, to: SocketEndpoint): boolean => {
                const r = from.fill()
                if (r === "eof") return false
                const n = from.inEnd - from.inStart
                if (n === 0) return true
                fds.length = 0
                for (let f = from.inFds.shift(); f !== undefined; f = from.inFds.shift()) fds.push(f)
                const w = to.write(from.inBuf, from.inStart, n, fds)
                from.consume(n)
                return w !== "overflow"
              }
              const handler = (self: SocketEndpoint, other: SocketEndpoint) => (events: number) => {
                if (events & Reactor.EPOLLOUT) self.flush()
                if (events & ~Reactor.EPOLLOUT && !forward(self, other)) return end()
                if (self.pendingBytes > 0 || other.pendingBytes > 0 || events & Reactor.EPOLLOUT) sync()
              }
              clientWatch = reactor.watch(client.fd, Reactor.EPOLLIN, handler(client, server))
              serverWatch = reactor.watch(server.fd, Reactor.EPOLLIN, handler(server, client))
            }
          })
          process.stdout.write("ready\n")
        })
      })
    )
  )

// ---------------------------------------------------------------------------------------------
// The benchmark

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** Build pingpong.c once per source hash. */
const buildPingpong = (): string => {
  const source = join(root, "scripts", "bench", "pingpong.c")
  const hash = createHash("sha256").update(readFileSync(source)).digest("hex").slice(0, 12)
  const cache = join(root, "node_modules", ".cache", "sommelier-bench")
  const target = join(cache, `pingpong-${hash}`)
  if (existsSync(target)) return target
  mkdirSync(cache, { recursive: true })
  const tmp = `${target}.${process.pid}.tmp`
  const r = spawnSync("cc", ["-O2", "-Wall", "-o", tmp, source], { encoding: "utf8" })
  if (r.status !== 0) throw new Error(`cc pingpong.c failed: ${r.stderr || r.error?.message}`)
  renameSync(tmp, target)
  return target
}

const command = (pin: string | null, cmd: string, args: readonly string[]): [string, string[]] =>
  pin !== null ? ["taskset", ["-c", pin, cmd, ...args]] : [cmd, [...args]]

const exited = (child: ChildProcess): Promise<number | null> =>
  new Promise((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode)
    else child.on("exit", (code) => resolve(code))
  })

const waitFor = async (what: string, check: () => boolean, timeoutMs: number): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

const firstLine = (child: ChildProcess, timeoutMs: number): Promise<string> =>
  new Promise((resolve, reject) => {
    let buf = ""
    let err = ""
    const timer = setTimeout(() => reject(new Error(`no output within ${timeoutMs} ms: ${err}`)), timeoutMs)
    child.stderr?.on("data", (d: Buffer) => (err += d.toString()))
    child.stdout?.on("data", (d: Buffer) => {
      buf += d.toString()
      const nl = buf.indexOf("\n")
      if (nl >= 0) {
        clearTimeout(timer)
        resolve(buf.slice(0, nl))
      }
    })
    child.on("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`exited (${code}) before printing a line: ${err}`))
    })
  })

const cpuTicks = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return Number(fields[11]) + Number(fields[12])
}

const USER_HZ = 100

interface RunResult extends Stats {
  readonly proxyCpuUs: number
}

const runClient = (bin: string, pin: string | null, path: string, iterations: number, warmup: number, size: number, fds: number): Stats => {
  const [cmd, args] = command(pin, bin, ["client", path, String(iterations), String(warmup), String(size), String(fds)])
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 300_000 })
  if (r.status !== 0) throw new Error(`pingpong client failed (${r.status}): ${r.stderr}`)
  const [med, p99, mean] = r.stdout.trim().split(/\s+/).map(Number)
  return { medianUs: med!, p99Us: p99!, meanUs: mean! }
}

const startServer = async (bin: string, pin: string | null, path: string): Promise<ChildProcess> => {
  const [cmd, args] = command(pin, bin, ["server", path])
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "inherit"] })
  await waitFor(`the echo server at ${path}`, () => existsSync(path), 10_000)
  return child
}

const oneRun = async (
  bin: string,
  pin: string | null,
  dir: string,
  mode: "direct" | "proxy",
  iterations: number,
  warmup: number,
  size: number,
  fds: number
): Promise<RunResult> => {
  const serverPath = join(dir, `server-${mode}`)
  rmSync(serverPath, { force: true })
  const server = await startServer(bin, pin, serverPath)
  let proxy: ChildProcess | undefined
  try {
    let target = serverPath
    if (mode === "proxy") {
      const proxyPath = join(dir, "proxy")
      rmSync(proxyPath, { force: true })
      const [cmd, args] = command(pin, process.execPath, [
        "--import",
        "tsx",
        fileURLToPath(import.meta.url),
        "--proxy",
        proxyPath,
        serverPath
      ])
      proxy = spawn(cmd, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
      const line = await firstLine(proxy, 60_000)
      if (line !== "ready") throw new Error(`proxy said ${line}`)
      target = proxyPath
    }
    // taskset execs node, so the pid is node's own.
    const before = proxy?.pid !== undefined ? cpuTicks(proxy.pid) : 0
    const stats = runClient(bin, pin, target, iterations, warmup, size, fds)
    const after = proxy?.pid !== undefined ? cpuTicks(proxy.pid) : 0
    const proxyCpuUs = (((after - before) / USER_HZ) * 1e6) / (iterations + warmup)
    if (proxy !== undefined) {
      const code = await Promise.race([exited(proxy), new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 10_000))])
      if (code !== 0) throw new Error(`proxy exited with ${String(code)}`)
    }
    return { ...stats, proxyCpuUs }
  } finally {
    if (proxy !== undefined && proxy.exitCode === null) proxy.kill("SIGKILL")
    await Promise.race([exited(server), new Promise((r) => setTimeout(r, 5000))])
    if (server.exitCode === null) server.kill("SIGKILL")
  }
}

const summarize = (runs: readonly RunResult[]): Stats => ({
  medianUs: median(runs.map((r) => r.medianUs)),
  p99Us: median(runs.map((r) => r.p99Us)),
  meanUs: median(runs.map((r) => r.meanUs))
})

export const runReactorBench = async (options: ReactorBenchOptions = {}): Promise<ReactorBenchResult> => {
  const quick = options.quick === true
  const pin = options.pin === false ? null : (options.cpu ?? "0")
  const rounds = options.rounds ?? (quick ? 2 : 5)
  const iterations = options.iterations ?? (quick ? 5_000 : 20_000)
  const warmup = options.warmup ?? (quick ? 1_000 : 3_000)
  const size = options.size ?? 32
  const fdCounts = options.fds ?? [0, 1]
  const bin = buildPingpong()
  const dir = mkdtempSync(join(tmpdir(), "sommelier-reactor-bench-"))
  try {
    const rows: ReactorBenchRow[] = []
    for (const fds of fdCounts) {
      const direct: RunResult[] = []
      const proxy: RunResult[] = []
      for (let round = 0; round < rounds; round++) {
        direct.push(await oneRun(bin, pin, dir, "direct", iterations, warmup, size, fds))
        proxy.push(await oneRun(bin, pin, dir, "proxy", iterations, warmup, size, fds))
      }
      const d = summarize(direct)
      const p = summarize(proxy)
      rows.push({
        fds,
        direct: d,
        proxy: p,
        addedMedianUs: p.medianUs - d.medianUs,
        addedP99Us: p.p99Us - d.p99Us,
        proxyCpuUsPerRoundTrip: median(proxy.map((r) => r.proxyCpuUs))
      })
    }
    return { rows, size, iterations, rounds, pinned: pin, targetAddedMedianUs: TARGET_ADDED_MEDIAN_US }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

const f1 = (x: number): string => x.toFixed(1)

export const formatReactorTable = (r: ReactorBenchResult): string => {
  const lines = [
    `| fds per ping | direct p50 µs | direct p99 µs | proxy p50 µs | proxy p99 µs | added p50 µs | proxy CPU µs/RTT | target (added p50 ≤ ${r.targetAddedMedianUs} µs) |`,
    "|---|---|---|---|---|---|---|---|"
  ]
  for (const row of r.rows)
    lines.push(
      `| ${row.fds} | ${f1(row.direct.medianUs)} | ${f1(row.direct.p99Us)} | ${f1(row.proxy.medianUs)} | ${f1(row.proxy.p99Us)} | ${f1(row.addedMedianUs)} | ${f1(row.proxyCpuUsPerRoundTrip)} | ${row.addedMedianUs <= r.targetAddedMedianUs ? "PASS" : "MISS"} |`
    )
  lines.push(
    "",
    `(${r.size}-byte ping-pong, C client ⇄ C echo server, direct vs through a Reactor + SocketEndpoint forwarding proxy in node; ` +
      `${r.iterations} round trips × ${r.rounds} interleaved rounds, medians across rounds; ${r.pinned !== null ? `all processes pinned to CPU ${r.pinned}` : "unpinned"})`
  )
  return lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Command line

const argValue = (args: readonly string[], name: string): number | undefined => {
  const i = args.indexOf(name)
  return i >= 0 && args[i + 1] !== undefined ? Number(args[i + 1]) : undefined
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href

if (isMain) {
  const args = process.argv.slice(2)
  if (args[0] === "--proxy") {
    proxyMain(args[1]!, args[2]!).then(
      () => process.exit(0),
      (e) => {
        process.stderr.write(`proxy failed: ${String(e)}\n`)
        process.exit(1)
      }
    )
  } else {
    const opts: ReactorBenchOptions = {
      quick: args.includes("--quick"),
      pin: !args.includes("--no-pin"),
      ...(argValue(args, "--rounds") !== undefined ? { rounds: argValue(args, "--rounds")! } : {}),
      ...(argValue(args, "--iterations") !== undefined ? { iterations: argValue(args, "--iterations")! } : {}),
      ...(argValue(args, "--size") !== undefined ? { size: argValue(args, "--size")! } : {})
    }
    runReactorBench(opts).then(
      (r) => console.log(formatReactorTable(r)),
      (e) => {
        console.error(`reactor bench failed: ${(e as Error).message}`)
        process.exit(1)
      }
    )
  }
}
