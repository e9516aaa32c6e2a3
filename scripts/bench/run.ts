/**
 * `npm run bench`: what the proxy costs, measured against a direct connection and against
 * waypipe, with a real compositor (its own headless weston) and a native libwayland client
 * (scripts/bench/client.c, built on first use).
 *
 * Targets: direct (client → weston), local (client → `sommelier serve --mode local` → weston),
 * cross-domain (client → `serve --mode cross-domain --virtgpu emulated:PATH` →
 * `sommelier emulate-host` → weston, when that exists), waypipe (client → waypipe server →
 * waypipe client → weston, no compression, when installed). Rounds interleave the targets and
 * every figure is a median across rounds; by default everything runs on CPU 0 (`--no-pin`).
 *
 * Then: the proxy's memory (RSS, PSS) with 0, 20 and 100 idle clients, its idle CPU, its CPU per
 * forwarded message at 1, 10 and 100 busy clients, the data-path rows over captured traffic
 * (codec.ts) and the reactor ping-pong (reactor.ts, when present). `--profile` also records a
 * CPU profile of the local proxy per mode and prints its hot spots.
 *
 * Writes bench-results/latest.json and latest.md; `--update-readme` puts the tables into the
 * README between the bench markers. docs/BENCHMARKS.md explains every row.
 *
 * It measures; it asserts nothing (targets print PASS/MISS) and exits 0 unless it cannot run.
 */
import { Effect } from "effect"
import { spawn, spawnSync, type ChildProcess } from "node:child_process"
import { createHash } from "node:crypto"
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync
} from "node:fs"
import { cpus, release, tmpdir } from "node:os"
import { dirname, join, relative } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { startWeston, type Weston } from "../../src/host/weston.js"
import { formatCodecTable, runCodecBench, type CodecBenchRow } from "./codec.js"
import { cpuDelta, cpuSnapshot, loadAverage, machineCpu, memory, processTree, treeJiffies, type Memory } from "./proc.js"
import { formatProfile, summarizeProfile, type ProfileSummary } from "./profile.js"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const XDG_SHELL_XML = "/usr/share/wayland-protocols/stable/xdg-shell/xdg-shell.xml"

// ---------------------------------------------------------------------------------------------
// Options

interface Settings {
  readonly quick: boolean
  readonly pin: boolean
  /** The CPU everything is pinned to (`--cpu N`, default 0). */
  readonly cpu: string
  readonly rounds: number
  readonly only: ReadonlySet<TargetName> | null
  readonly profile: boolean
  /** `--profile MODE,…`: only these modes (default all). */
  readonly profileModes: readonly string[] | null
  readonly build: boolean
  readonly updateReadme: boolean
  readonly skip: ReadonlySet<string>
  readonly out: string
}

type TargetName = "direct" | "local" | "cross-domain" | "waypipe"
const allTargets: readonly TargetName[] = ["direct", "local", "cross-domain", "waypipe"]

const usage = `usage: npm run bench -- [--quick] [--no-pin] [--cpu N] [--rounds N] [--only direct,local,cross-domain,waypipe]
                         [--skip modes,memory,scaling,hops,codec,reactor] [--profile [MODE,…]] [--no-build]
                         [--update-readme] [--out DIR]`

const parseArgs = (argv: readonly string[]): Settings => {
  let quick = false
  let pin = true
  let cpu = "0"
  let rounds: number | null = null
  let only: Set<TargetName> | null = null
  let profile = false
  let profileModes: string[] | null = null
  let build = true
  let updateReadme = false
  const skip = new Set<string>()
  let out = join(root, "bench-results")
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    const value = (): string => {
      const v = argv[++i]
      if (v === undefined) throw new Error(`${a} needs a value\n${usage}`)
      return v
    }
    if (a === "--quick") quick = true
    else if (a === "--no-pin") pin = false
    else if (a === "--cpu") cpu = String(Number(value()))
    else if (a === "--rounds") rounds = Number(value())
    else if (a === "--only") only = new Set(value().split(",") as TargetName[])
    else if (a === "--skip") for (const s of value().split(",")) skip.add(s)
    else if (a === "--profile") {
      profile = true
      if (argv[i + 1] !== undefined && !argv[i + 1]!.startsWith("--")) profileModes = value().split(",")
    }
    else if (a === "--no-build") build = false
    else if (a === "--update-readme") updateReadme = true
    else if (a === "--out") out = value()
    else if (a === "--help" || a === "-h") {
      console.log(usage)
      process.exit(0)
    } else throw new Error(`unknown option ${a}\n${usage}`)
  }
  if (only !== null) only.add("direct")
  return { quick, pin, cpu, rounds: rounds ?? (quick ? 2 : 5), only, profile, profileModes, build, updateReadme, skip, out }
}

/** Sizes of every measurement; quick keeps the whole run under a minute. */
const sizes = (quick: boolean) => ({
  roundtrip: quick ? { n: 500, warm: 50 } : { n: 2000, warm: 200 },
  burst: quick ? 5000 : 10000,
  sync: quick ? { n: 5000, window: 1000 } : { n: 10000, window: 1000 },
  shm: { w: 1024, h: 768, fullFrames: quick ? 150 : 600, partialFrames: quick ? 600 : 3000, maxSeconds: quick ? 0.5 : 1.5 },
  connect: quick ? { n: 20, warm: 3 } : { n: 50, warm: 5 },
  // settleMs: V8's memory reducer runs its GCs some 8–15 s after activity ends (measured: one
  // 120 ms burst 10–14 s after 20 cross-domain clients connected, then nothing); readings and
  // the idle-CPU window wait it out, so they show what stays, not the clean-up.
  memory: quick ? { few: 10, many: 40, settleMs: 300, samples: 3 } : { few: 20, many: 100, settleMs: 16000, samples: 5 },
  idleSeconds: quick ? 2 : 5,
  scaling: { clients: [1, 10, 100], syncs: quick ? 6000 : 30000, window: 100, rounds: quick ? 1 : 3 },
  codecMs: quick ? 300 : 1500
})

// ---------------------------------------------------------------------------------------------
// Processes

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** Long-lived processes we started; stopped at exit whatever happens. */
const started = new Set<ChildProcess>()

let pinCpu = "0"
const pinned = (pin: boolean, cmd: string, args: readonly string[]): [string, string[]] =>
  pin ? ["taskset", ["-c", pinCpu, cmd, ...args]] : [cmd, [...args]]

/** Starts a long-lived process in its own process group, output to `log`. */
const startDaemon = (settings: Settings, cmd: string, args: readonly string[], env: NodeJS.ProcessEnv, log: string): ChildProcess => {
  const fd = openSync(log, "a")
  const [c, a] = pinned(settings.pin, cmd, args)
  const child = spawn(c, a, { env, stdio: ["ignore", fd, fd], detached: true })
  closeSync(fd)
  started.add(child)
  child.once("exit", () => started.delete(child))
  return child
}

/** SIGTERM to the group (waypipe's `sleep inf` lives there too), SIGKILL after 3 s. */
const stopDaemon = async (child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> => {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return
  const exited = new Promise<void>((r) => child.once("exit", () => r()))
  try {
    process.kill(-child.pid, signal)
  } catch {
    child.kill(signal)
  }
  const t = setTimeout(() => {
    try {
      process.kill(-child.pid!, "SIGKILL")
    } catch {
      // already gone
    }
  }, 3000)
  await exited
  clearTimeout(t)
}

const stopAll = async (): Promise<void> => {
  await Promise.all([...started].map((c) => stopDaemon(c)))
}

const waitFor = async (what: string, ok: () => boolean, child: ChildProcess | null, log: string | null, timeoutMs = 20000): Promise<void> => {
  const t0 = Date.now()
  while (!ok()) {
    if (child !== null && (child.exitCode !== null || child.signalCode !== null)) {
      throw new Error(`${what}: process exited (${child.exitCode ?? child.signalCode}); ${log !== null ? tail(log) : ""}`)
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: timed out; ${log !== null ? tail(log) : ""}`)
    await sleep(20)
  }
}

const tail = (file: string): string => {
  try {
    return readFileSync(file, "utf8").slice(-800).trim()
  } catch {
    return ""
  }
}

// ---------------------------------------------------------------------------------------------
// The native client

/** Builds client.c into node_modules/.cache/sommelier-bench, keyed by a hash of its inputs. */
const buildClient = (): string => {
  const source = readFileSync(join(root, "scripts", "bench", "client.c"))
  const flags = spawnSync("pkg-config", ["--cflags", "--libs", "wayland-client"], { encoding: "utf8" })
  if (flags.status !== 0) throw new Error(`pkg-config wayland-client failed (install libwayland-dev): ${flags.stderr}`)
  const cflags = ["-std=c11", "-O2", "-Wall", "-Werror"]
  const hash = createHash("sha256").update(source).update(readFileSync(XDG_SHELL_XML)).update(cflags.join(" ") + flags.stdout).digest("hex").slice(0, 16)
  const cache = join(root, "node_modules", ".cache", "sommelier-bench")
  const target = join(cache, `bench-client-${hash}`)
  if (existsSync(target)) return target
  mkdirSync(cache, { recursive: true })
  const work = mkdtempSync(join(cache, "build-"))
  try {
    const run = (cmd: string, args: string[]): void => {
      const r = spawnSync(cmd, args, { encoding: "utf8" })
      if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${r.stderr ?? r.error?.message}`)
    }
    run("wayland-scanner", ["client-header", XDG_SHELL_XML, join(work, "xdg-shell-client-protocol.h")])
    run("wayland-scanner", ["private-code", XDG_SHELL_XML, join(work, "xdg-shell-protocol.c")])
    const out = join(work, "bench-client")
    run("cc", [...cflags, `-I${work}`, "-o", out, join(root, "scripts", "bench", "client.c"), join(work, "xdg-shell-protocol.c"), ...flags.stdout.trim().split(/\s+/)])
    renameSync(out, target)
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
  return target
}

/** Builds relay.c (the hops section's native yardstick) into the same cache, keyed by its hash. */
const buildRelay = (): string => {
  const source = readFileSync(join(root, "scripts", "bench", "relay.c"))
  const cflags = ["-std=c11", "-O2", "-Wall", "-Werror"]
  const hash = createHash("sha256").update(source).update(cflags.join(" ")).digest("hex").slice(0, 16)
  const cache = join(root, "node_modules", ".cache", "sommelier-bench")
  const target = join(cache, `bench-relay-${hash}`)
  if (existsSync(target)) return target
  mkdirSync(cache, { recursive: true })
  const tmp = `${target}.${process.pid}`
  const r = spawnSync("cc", [...cflags, "-o", tmp, join(root, "scripts", "bench", "relay.c")], { encoding: "utf8" })
  if (r.status !== 0) throw new Error(`cc relay.c failed: ${r.stderr ?? r.error?.message}`)
  renameSync(tmp, target)
  return target
}

type Json = Record<string, number | string | boolean>

interface Env {
  readonly settings: Settings
  readonly client: string
  readonly runDir: string
}

/** Runs one client invocation to completion and returns its JSON lines. */
const runClient = (env: Env, target: Pick<Target, "env"> & { readonly name: string }, args: readonly (string | number)[], timeoutMs = 120000): Promise<Json[]> =>
  new Promise((resolve, reject) => {
    const [c, a] = pinned(env.settings.pin, env.client, args.map(String))
    const child = spawn(c, a, { env: target.env, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout.on("data", (d: Buffer) => (out += d.toString()))
    child.stderr.on("data", (d: Buffer) => (err += d.toString()))
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs)
    child.once("error", (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.once("close", (code, signal) => {
      clearTimeout(timer)
      if (code !== 0) return reject(new Error(`bench-client ${args.join(" ")} via ${target.name}: exit ${code ?? signal}: ${err.trim().slice(-500)}`))
      resolve(
        out
          .split("\n")
          .filter((l) => l.startsWith("{"))
          .map((l) => JSON.parse(l) as Json)
      )
    })
  })

/** A client that stays connected (idle, busy) and talks to us over stdin/stdout. */
interface Interactive {
  readonly next: (timeoutMs?: number) => Promise<Json>
  readonly send: (line: string) => void
  readonly close: () => Promise<void>
}

const startInteractive = (env: Env, target: Target, args: readonly (string | number)[], extraEnv: NodeJS.ProcessEnv = {}): Interactive => {
  const [c, a] = pinned(env.settings.pin, env.client, args.map(String))
  const child = spawn(c, a, { env: { ...target.env, ...extraEnv }, stdio: ["pipe", "pipe", "pipe"] })
  started.add(child)
  const lines: Json[] = []
  const waiters: Array<() => void> = []
  let buf = ""
  let err = ""
  let exited: string | null = null
  child.stdout!.on("data", (d: Buffer) => {
    buf += d.toString()
    let i: number
    while ((i = buf.indexOf("\n")) >= 0) {
      const l = buf.slice(0, i)
      buf = buf.slice(i + 1)
      if (l.startsWith("{")) lines.push(JSON.parse(l) as Json)
    }
    for (const w of waiters.splice(0)) w()
  })
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()))
  child.once("exit", (code, signal) => {
    started.delete(child)
    exited = `exit ${code ?? signal}`
    for (const w of waiters.splice(0)) w()
  })
  child.stdin!.on("error", () => {})
  return {
    next: async (timeoutMs = 120000) => {
      const t0 = Date.now()
      while (lines.length === 0) {
        if (exited !== null) throw new Error(`bench-client ${args.join(" ")} via ${target.name}: ${exited}: ${err.trim().slice(-500)}`)
        if (Date.now() - t0 > timeoutMs) throw new Error(`bench-client ${args.join(" ")} via ${target.name}: timed out`)
        await new Promise<void>((r) => {
          waiters.push(r)
          setTimeout(r, 200)
        })
      }
      return lines.shift()!
    },
    send: (line) => {
      child.stdin!.write(line + "\n")
    },
    close: async () => {
      if (exited !== null) return
      const gone = new Promise<void>((r) => child.once("exit", () => r()))
      child.stdin!.end()
      const t = setTimeout(() => child.kill("SIGKILL"), 5000)
      await gone
      clearTimeout(t)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Targets

interface Target {
  readonly name: TargetName
  /** Environment for clients of this target (WAYLAND_DISPLAY is an absolute path). */
  readonly env: NodeJS.ProcessEnv
  /** The processes that make up the proxy (empty for direct). */
  readonly pids: () => number[]
  /** Memory right after start, before any client. */
  fresh: Memory | null
  /**
   * The proxy's log, where each client's last line says what it carried (`serve` at debug
   * level); for cross-domain it gives the bytes copied from guest pools into host blobs.
   */
  readonly log?: string
}

const COPY_LINE = /client (\d+) disconnected \(.*; (\d+) bytes copied in (\d+) commits\)/g

/** Copy figures of the last client that ended with any, once its line is in the log (≤ 2 s). */
const lastCopyFigures = async (log: string, after: number): Promise<{ bytes: number; commits: number } | null> => {
  for (let waited = 0; waited <= 2000; waited += 50) {
    let last: RegExpExecArray | null = null
    const text = readFileSync(log, "utf8").slice(after)
    for (let m = COPY_LINE.exec(text); m !== null; m = COPY_LINE.exec(text)) last = m
    COPY_LINE.lastIndex = 0
    if (last !== null) return { bytes: Number(last[2]), commits: Number(last[3]) }
    await sleep(50)
  }
  return null
}

const clientEnv = (runDir: string, display: string): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, XDG_RUNTIME_DIR: runDir, WAYLAND_DISPLAY: display }
  delete env.WAYLAND_SOCKET
  delete env.WAYLAND_DEBUG
  return env
}

const cliMain = join(root, "dist", "cli", "main.js")
const cliBundle = join(root, "dist", "sommelier.mjs")

/**
 * What a proxy process runs: the one-file bundle bin/sommelier runs (what users get) when it is
 * current, else dist/cli/main.js; profiles always use main.js, whose file names say which layer
 * a function belongs to.
 */
const cliEntry = (nodeArgs: readonly string[]): string =>
  !nodeArgs.some((a) => a.startsWith("--cpu-prof")) && existsSync(cliBundle) && statSync(cliBundle).mtimeMs >= newestMtime(join(root, "dist"))
    ? cliBundle
    : cliMain

const newestMtime = (dir: string): number => {
  let newest = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs)
  }
  return newest
}

/** Builds dist/ when it is missing or older than src/. */
const ensureBuilt = (settings: Settings): void => {
  const stale = !existsSync(cliMain) || newestMtime(join(root, "src")) > statSync(cliMain).mtimeMs
  if (!stale) return
  if (!settings.build && existsSync(cliMain)) {
    console.log("note: dist/ is older than src/ (--no-build given; measuring the old build)")
    return
  }
  console.log("building dist/ (npm run build) …")
  const r = spawnSync("npm", ["run", "--silent", "build"], { cwd: root, stdio: "inherit" })
  if (r.status !== 0) {
    if (!existsSync(cliMain)) throw new Error("npm run build failed and there is no dist/ to measure")
    console.log("warning: npm run build failed; measuring the existing dist/")
  }
}

const nodeProxyPids = (child: ChildProcess) => (): number[] => (child.pid === undefined ? [] : processTree(child.pid, new Set(["taskset"])))

const startLocal = async (env: Env, weston: Weston, extraNodeArgs: readonly string[] = [], name = "local"): Promise<{ target: Target; child: ChildProcess }> => {
  const sock = join(env.runDir, `sommelier-${name}`)
  const log = join(env.runDir, `${name}.log`)
  const child = startDaemon(
    env.settings,
    process.execPath,
    [...extraNodeArgs, cliEntry(extraNodeArgs), "serve", sock, "--mode", "local", "--host-display", weston.socketPath],
    { ...process.env, XDG_RUNTIME_DIR: env.runDir },
    log
  )
  await waitFor(`sommelier serve (${name})`, () => existsSync(sock), child, log)
  return { target: { name: "local", env: clientEnv(env.runDir, sock), pids: nodeProxyPids(child), fresh: null }, child }
}

/** The built CLI module's text (no node start-up: that costs seconds on a busy machine). */
const cliSource = (file: string): string => {
  try {
    return readFileSync(join(root, "dist", "cli", file), "utf8")
  } catch {
    return ""
  }
}

/** The emulated cross-domain path, when src/emulator and `emulate-host` exist. */
/** A started proxy target and its node processes, named for their logs and profiles. */
interface Started {
  readonly target: Target
  readonly processes: ReadonlyArray<{ readonly name: string; readonly child: ChildProcess }>
}

const startCrossDomain = async (env: Env, weston: Weston, nodeArgs: (name: string) => readonly string[] = () => [], tag = "cross-domain"): Promise<Started> => {
  if (!existsSync(join(root, "src", "emulator"))) throw new Error("src/emulator does not exist")
  const hostHelp = cliSource("emulate.js")
  if (!hostHelp.includes('"listen"') || !cliSource("commands.js").includes("emulateHostCommand"))
    throw new Error("`sommelier emulate-host` is not a command of this build")
  if (!cliSource("commands.js").includes('Options.text("virtgpu")')) throw new Error("`sommelier serve` has no --virtgpu option")
  const devicePath = join(env.runDir, `virtgpu-${tag}`)
  const hostLog = join(env.runDir, `${tag}-emulate-host.log`)
  const hostArgs = [
    ...nodeArgs("emulate-host"),
    cliEntry(nodeArgs("emulate-host")),
    "emulate-host",
    "--listen",
    devicePath,
    ...(hostHelp.includes('"host-display"') ? ["--host-display", weston.socketPath] : [])
  ]
  const host = startDaemon(env.settings, process.execPath, hostArgs, { ...weston.env, WAYLAND_DISPLAY: weston.socketPath }, hostLog)
  await waitFor("sommelier emulate-host", () => existsSync(devicePath), host, hostLog)
  const sock = join(env.runDir, `sommelier-${tag}`)
  const log = join(env.runDir, `${tag}.log`)
  const child = startDaemon(
    env.settings,
    process.execPath,
    [...nodeArgs("serve"), cliEntry(nodeArgs("serve")), "serve", sock, "--mode", "cross-domain", "--virtgpu", `emulated:${devicePath}`, "--log-level", "debug"],
    { ...process.env, XDG_RUNTIME_DIR: env.runDir },
    log
  )
  await waitFor("sommelier serve --mode cross-domain", () => existsSync(sock), child, log)
  // The guest proxy and the emulated host together are what the cross-domain path costs.
  const pids = (): number[] => [...nodeProxyPids(child)(), ...nodeProxyPids(host)()]
  return {
    target: { name: "cross-domain", env: clientEnv(env.runDir, sock), pids, fresh: null, log },
    processes: [
      { name: "serve", child },
      { name: "emulate-host", child: host }
    ]
  }
}

/** waypipe 0.8 as a local proxy: `client` connects to weston, `server` offers the display. */
const startWaypipe = async (env: Env, weston: Weston): Promise<Target> => {
  const v = spawnSync("waypipe", ["--version"], { encoding: "utf8" })
  if (v.status !== 0) throw new Error("waypipe is not installed")
  const link = join(env.runDir, "waypipe.sock")
  const display = join(env.runDir, "waypipe-display")
  const log = join(env.runDir, "waypipe.log")
  const wpClient = startDaemon(env.settings, "waypipe", ["-n", "-c", "none", "-s", link, "client"], { ...weston.env, WAYLAND_DISPLAY: weston.socketPath }, log)
  await waitFor("waypipe client", () => existsSync(link), wpClient, log)
  const wpServer = startDaemon(
    env.settings,
    "waypipe",
    ["-n", "-c", "none", "-s", link, "--display", display, "server", "--", "sleep", "inf"],
    { ...process.env, XDG_RUNTIME_DIR: env.runDir },
    log
  )
  await waitFor("waypipe server", () => existsSync(display), wpServer, log)
  const exclude = new Set(["sleep", "taskset"])
  const pids = (): number[] => [
    ...(wpClient.pid !== undefined ? processTree(wpClient.pid, exclude) : []),
    ...(wpServer.pid !== undefined ? processTree(wpServer.pid, exclude) : [])
  ]
  return { name: "waypipe", env: clientEnv(env.runDir, display), pids, fresh: null }
}

// ---------------------------------------------------------------------------------------------
// Statistics

const median = (xs: readonly number[]): number => {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

const fmt = (x: number, digits = 3): string => {
  if (!Number.isFinite(x)) return "—"
  const a = Math.abs(x)
  if (a >= 1e6) return `${(x / 1e6).toFixed(2)} M`
  if (a >= 1e4) return `${(x / 1e3).toFixed(0)} k`
  if (a >= 100) return x.toFixed(0)
  return x.toPrecision(digits)
}

// ---------------------------------------------------------------------------------------------
// Phase 1: latency and throughput, rounds interleaving the targets

interface Measure {
  readonly key: string
  readonly label: string
  readonly mode: string
  readonly field: string
  /** Whether a larger value is better (for the reader; ratios are always target/direct). */
  readonly higherIsBetter: boolean
  /** A CPU figure of the proxy itself: no direct value, no ratio. */
  readonly cpu?: boolean
  readonly targetLocal?: Check
  readonly targetCrossDomain?: Check
}

interface Check {
  readonly text: string
  readonly pass: (value: number, ratio: number) => boolean
}

const ratioAtMost = (r: number): Check => ({ text: `≤ ${r}× direct`, pass: (_, ratio) => ratio <= r })
const ratioAtLeast = (r: number): Check => ({ text: `≥ ${r}× direct`, pass: (_, ratio) => ratio >= r })

const measures = (s: ReturnType<typeof sizes>): Measure[] => [
  { key: "roundtrip.median", label: "roundtrip, median (µs)", mode: "roundtrip", field: "median_us", higherIsBetter: false, targetLocal: ratioAtMost(2.8), targetCrossDomain: ratioAtMost(4) },
  { key: "roundtrip.p99", label: "roundtrip, p99 (µs)", mode: "roundtrip", field: "p99_us", higherIsBetter: false },
  { key: "burst", label: `burst of ${s.burst} wl_surface.damage + roundtrip (req/s)`, mode: "burst", field: "req_per_s", higherIsBetter: true, targetLocal: ratioAtLeast(0.5) },
  { key: "sync", label: `${s.sync.n} pipelined wl_display.sync, ${s.sync.window} in flight (req/s)`, mode: "sync", field: "req_per_s", higherIsBetter: true, targetLocal: ratioAtLeast(0.5) },
  { key: "shm.full.fps", label: `shm ${s.shm.w}×${s.shm.h}, full damage (frames/s)`, mode: "shm-full", field: "fps", higherIsBetter: true, targetLocal: ratioAtLeast(0.85) },
  {
    key: "shm.full.mbs",
    label: "shm, full damage (MB/s of frame data)",
    mode: "shm-full",
    field: "mb_per_s",
    higherIsBetter: true,
    targetCrossDomain: { text: "≥ 1500 MB/s", pass: (v) => v >= 1500 }
  },
  { key: "shm.full.unsealed.mbs", label: "shm, full damage, pool not sealed (MB/s of frame data)", mode: "shm-full-unsealed", field: "mb_per_s", higherIsBetter: true },
  { key: "shm.partial.fps", label: `shm, partial damage ${s.shm.w / 4}×${s.shm.h / 4} (frames/s)`, mode: "shm-partial", field: "fps", higherIsBetter: true, targetLocal: ratioAtLeast(0.85) },
  { key: "shm.partial.mbs", label: "shm, partial damage (MB/s of frame data)", mode: "shm-partial", field: "mb_per_s", higherIsBetter: true },
  { key: "shm.full.copied", label: `shm, full damage: bytes copied per commit (frame: ${s.shm.w * s.shm.h * 4})`, mode: "shm-full", field: "copied_bytes_per_commit", higherIsBetter: false, cpu: true },
  { key: "shm.partial.copied", label: `shm, partial damage: bytes copied per commit (damage per frame: ${(s.shm.w / 4) * (s.shm.h / 4) * 4})`, mode: "shm-partial", field: "copied_bytes_per_commit", higherIsBetter: false, cpu: true },
  { key: "connect", label: "connect + registry + roundtrip, median (ms)", mode: "connect", field: "median_ms", higherIsBetter: false, targetLocal: { text: "≤ 1 ms", pass: (v) => v <= 1 } },
  { key: "cpu.roundtrip", label: "proxy CPU per roundtrip (µs)", mode: "roundtrip", field: "proxy_cpu_us", higherIsBetter: false, cpu: true },
  { key: "cpu.burst", label: "proxy CPU per burst request (µs)", mode: "burst", field: "proxy_cpu_us", higherIsBetter: false, cpu: true },
  { key: "cpu.sync", label: "proxy CPU per pipelined sync (µs)", mode: "sync", field: "proxy_cpu_us", higherIsBetter: false, cpu: true },
  { key: "cpu.shm", label: "proxy CPU per full-damage frame (µs)", mode: "shm-full", field: "proxy_cpu_us", higherIsBetter: false, cpu: true },
  { key: "cpu.connect", label: "proxy CPU per connection (µs)", mode: "connect", field: "proxy_cpu_us", higherIsBetter: false, cpu: true }
]

const modeArgs = (s: ReturnType<typeof sizes>): Record<string, (string | number)[]> => ({
  roundtrip: ["roundtrip", s.roundtrip.n, s.roundtrip.warm],
  burst: ["burst", s.burst],
  sync: ["sync", s.sync.n, s.sync.window],
  "shm-full": ["shm", s.shm.w, s.shm.h, s.shm.fullFrames, "full", s.shm.maxSeconds],
  "shm-full-unsealed": ["shm", s.shm.w, s.shm.h, s.shm.fullFrames, "full", s.shm.maxSeconds],
  "shm-partial": ["shm", s.shm.w, s.shm.h, s.shm.partialFrames, "partial", s.shm.maxSeconds],
  connect: ["connect", s.connect.n, s.connect.warm]
})

type Raw = Record<string, Record<string, Json[]>>

/** Environment a mode's client needs beyond the target's. */
const modeEnv: Record<string, NodeJS.ProcessEnv> = { "shm-full-unsealed": { BENCH_UNSEALED: "1" } }

/**
 * One gated client run (BENCH_GATE=1): the proxy's CPU time is read just before and just after
 * the timed part, so connection set-up and teardown stay out of it. Adds `proxy_cpu_us` per
 * operation (roundtrip, request, sync or frame) to the client's result.
 */
const runGated = async (env: Env, t: Target, args: readonly (string | number)[], onWindow?: (fromUs: number, toUs: number) => void, extraEnv: NodeJS.ProcessEnv = {}): Promise<Json> => {
  const logAt = t.log !== undefined && args[0] === "shm" ? statSync(t.log).size : -1
  const res = await runGatedClient(env, t, args, onWindow, extraEnv)
  if (logAt < 0) return res
  // Whole connection, warm-up frames and each buffer's first full copy included.
  const copy = await lastCopyFigures(t.log!, logAt)
  return copy === null ? res : { ...res, copied_bytes_per_commit: copy.bytes / copy.commits }
}

const runGatedClient = async (env: Env, t: Target, args: readonly (string | number)[], onWindow?: (fromUs: number, toUs: number) => void, extraEnv: NodeJS.ProcessEnv = {}): Promise<Json> => {
  const c = startInteractive(env, t, args, { ...extraEnv, BENCH_GATE: "1" })
  try {
    await c.next()
    const pids = t.pids()
    const c0 = cpuSnapshot(pids)
    const from = Number(process.hrtime.bigint() / 1000n)
    c.send("go")
    const res = await c.next()
    const to = Number(process.hrtime.bigint() / 1000n)
    const c1 = cpuSnapshot(pids)
    onWindow?.(from, to)
    const ops = Number(res["frames"] ?? res["n"])
    return pids.length > 0 ? { ...res, proxy_cpu_us: cpuDelta(c0, c1) / 1e3 / ops } : res
  } finally {
    await c.close()
  }
}

/** The connect mode is all set-up: the proxy's CPU over the whole run, per connection. */
const runConnect = async (env: Env, t: Target, args: readonly (string | number)[]): Promise<Json> => {
  // waypipe forks a process per client: take the tree again at the end, counting new ones from 0.
  const c0 = cpuSnapshot(t.pids())
  const out = await runClient(env, t, args)
  const c1 = cpuSnapshot(t.pids())
  const res = out[0]
  if (res === undefined) throw new Error(`bench-client ${args.join(" ")} via ${t.name}: no result`)
  const conns = Number(args[1]) + Number(args[2])
  return t.pids().length > 0 ? { ...res, proxy_cpu_us: cpuDelta(c0, c1) / 1e3 / conns } : res
}

const runModes = async (env: Env, targets: readonly Target[], s: ReturnType<typeof sizes>): Promise<{ raw: Raw; errors: string[] }> => {
  const raw: Raw = {}
  const errors: string[] = []
  const args = modeArgs(s)
  const modes = Object.keys(args)
  for (const t of targets) raw[t.name] = Object.fromEntries(modes.map((m) => [m, [] as Json[]]))
  // A discarded warm-up round first: a proxy serves for hours with its code optimised, while a
  // just-started one runs V8's lower tiers (measured: 2–3× the proxy CPU per operation in the
  // first round). Failures here are still reported.
  process.stdout.write("warm-up ")
  for (const mode of modes) {
    for (const t of targets) {
      try {
        if (mode === "connect") await runConnect(env, t, args[mode]!)
        else await runGated(env, t, args[mode]!, undefined, modeEnv[mode])
      } catch (e) {
        errors.push(`warm-up: ${(e as Error).message}`)
      }
      process.stdout.write(".")
    }
  }
  process.stdout.write("\n")
  for (let r = 0; r < env.settings.rounds; r++) {
    process.stdout.write(`round ${r + 1}/${env.settings.rounds} `)
    for (const [mi, mode] of modes.entries()) {
      // Rotate the order every mode and round so no target always runs first or last.
      for (let k = 0; k < targets.length; k++) {
        const t = targets[(k + r + mi) % targets.length]!
        try {
          const res = mode === "connect" ? await runConnect(env, t, args[mode]!) : await runGated(env, t, args[mode]!, undefined, modeEnv[mode])
          raw[t.name]![mode]!.push(res)
        } catch (e) {
          errors.push((e as Error).message)
        }
        process.stdout.write(".")
      }
    }
    process.stdout.write("\n")
  }
  return { raw, errors }
}

interface Cell {
  readonly value: number
  readonly ratio: number
  readonly rounds: number
}

const summarize = (raw: Raw, targets: readonly Target[], ms: readonly Measure[]): Record<string, Record<string, Cell>> => {
  const out: Record<string, Record<string, Cell>> = {}
  for (const m of ms) {
    out[m.key] = {}
    const direct = median((raw["direct"]?.[m.mode] ?? []).map((j) => Number(j[m.field])))
    for (const t of targets) {
      const xs = (raw[t.name]?.[m.mode] ?? []).map((j) => Number(j[m.field])).filter(Number.isFinite)
      const v = median(xs)
      out[m.key]![t.name] = { value: v, ratio: v / direct, rounds: xs.length }
    }
  }
  return out
}

const verdict = (check: Check | undefined, cell: Cell | undefined): string => {
  if (check === undefined) return ""
  if (cell === undefined || !Number.isFinite(cell.value)) return `${check.text}: —`
  return `${check.text}: **${check.pass(cell.value, cell.ratio) ? "PASS" : "MISS"}**`
}

const modesTable = (cells: Record<string, Record<string, Cell>>, targets: readonly Target[], ms: readonly Measure[], unavailable: Record<string, string>): string => {
  const names = allTargets.filter((n) => targets.some((t) => t.name === n) || n in unavailable)
  const head = ["measure", ...names, "target, local", "target, cross-domain"]
  const lines = [`| ${head.join(" | ")} |`, `|---|${names.map(() => "---:").join("|")}|---|---|`]
  for (const m of ms) {
    const row = [m.label]
    for (const n of names) {
      const c = cells[m.key]?.[n]
      if (c === undefined) row.push(n in unavailable ? "n/a" : "—")
      else if (n === "direct" || m.cpu === true) row.push(fmt(c.value))
      else row.push(`${fmt(c.value)} (${Number.isFinite(c.ratio) ? c.ratio.toFixed(2) : "—"}×)`)
    }
    row.push(verdict(m.targetLocal, cells[m.key]?.["local"]))
    row.push(verdict(m.targetCrossDomain, cells[m.key]?.["cross-domain"]))
    lines.push(`| ${row.join(" | ")} |`)
  }
  return lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Phase 2: memory and idle CPU

interface MemoryRow {
  readonly target: TargetName
  readonly fresh: Memory | null
  readonly idle: Memory
  readonly few: Memory
  readonly many: Memory
  readonly pssPerClientKiB: number
  /** The readings' own spread (GC) divided by the clients added: a per-client figure within ± this is noise. */
  readonly pssPerClientNoiseKiB: number
  /** The quieter of two consecutive idle windows (a one-off GC of V8's memory reducer lands in one). */
  readonly idleCpuPercent: number
  /** Both windows, in order. */
  readonly idleCpuWindows: readonly number[]
  readonly idleSeconds: number
}

/**
 * PSS after `settleMs`, the smallest of `samples` readings 300 ms apart: node frees set-up garbage at
 * its next GC, and the retained size is what per-client memory is about.
 */
const settledMemory = async (t: Target, settleMs: number, samples: number): Promise<Memory & { readonly spreadKiB: number }> => {
  await sleep(settleMs)
  let best: Memory | null = null
  let most = 0
  for (let i = 0; i < samples; i++) {
    if (i > 0) await sleep(300)
    const m = memory(t.pids())
    if (best === null || m.pssKiB < best.pssKiB) best = m
    most = Math.max(most, m.pssKiB)
  }
  // How much the readings moved while nothing happened (GC): the noise of this figure.
  return { ...best!, spreadKiB: most - best!.pssKiB }
}

const runMemory = async (env: Env, t: Target, s: ReturnType<typeof sizes>): Promise<MemoryRow> => {
  const idle = await settledMemory(t, s.memory.settleMs, s.memory.samples)
  const few = startInteractive(env, t, ["idle", s.memory.few])
  let more: Interactive | null = null
  try {
    await few.next()
    const fewMem = await settledMemory(t, s.memory.settleMs, s.memory.samples)
    const windows: number[] = []
    for (let w = 0; w < 2; w++) {
      const c0 = cpuSnapshot(t.pids())
      await sleep(s.idleSeconds * 1000)
      const c1 = cpuSnapshot(t.pids())
      windows.push((cpuDelta(c0, c1) / 1e9 / s.idleSeconds) * 100)
    }
    more = startInteractive(env, t, ["idle", s.memory.many - s.memory.few])
    await more.next()
    const manyMem = await settledMemory(t, s.memory.settleMs, s.memory.samples)
    return {
      target: t.name,
      fresh: t.fresh,
      idle,
      few: fewMem,
      many: manyMem,
      pssPerClientKiB: (manyMem.pssKiB - fewMem.pssKiB) / (s.memory.many - s.memory.few),
      pssPerClientNoiseKiB: (manyMem.spreadKiB + fewMem.spreadKiB) / (s.memory.many - s.memory.few),
      idleCpuPercent: Math.min(...windows),
      idleCpuWindows: windows,
      idleSeconds: s.idleSeconds
    }
  } finally {
    await few.close()
    if (more !== null) await more.close()
  }
}

const mib = (kib: number): string => `${(kib / 1024).toFixed(1)} MiB`

const memoryTable = (rows: readonly MemoryRow[], s: ReturnType<typeof sizes>): string => {
  const lines = [
    `| proxy | RSS / PSS at start | PSS idle, settled | PSS, ${s.memory.few} clients | PSS, ${s.memory.many} clients | PSS per extra client | idle CPU, ${s.memory.few} clients, quieter of two ${s.idleSeconds} s windows | targets (local) |`,
    "|---|---:|---:|---:|---:|---:|---:|---|"
  ]
  for (const r of rows) {
    const checks =
      r.target === "local"
        ? `≤ 300 KiB/client: **${r.pssPerClientKiB <= 300 ? "PASS" : "MISS"}**; idle CPU ~0: **${r.idleCpuPercent < 0.1 ? "PASS" : "MISS"}**`
        : ""
    lines.push(
      `| ${r.target} | ${r.fresh !== null ? `${mib(r.fresh.rssKiB)} / ${mib(r.fresh.pssKiB)}` : "—"} | ${mib(r.idle.pssKiB)} | ${mib(r.few.pssKiB)} | ${mib(r.many.pssKiB)} | ${r.pssPerClientKiB.toFixed(0)} KiB (±${Math.max(1, r.pssPerClientNoiseKiB).toFixed(0)}) | ${r.idleCpuPercent.toFixed(3)} %${Math.max(...r.idleCpuWindows) - r.idleCpuPercent >= 0.1 ? ` (other window ${Math.max(...r.idleCpuWindows).toFixed(3)} %)` : ""} | ${checks} |`
    )
  }
  return lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Phase 3: CPU per forwarded message as the number of busy clients grows

interface ScalingRow {
  readonly target: TargetName
  readonly clients: number
  readonly messagesPerSecond: number
  readonly cpuNsPerMessage: number
  readonly rounds: number
}

const runScaling = async (env: Env, targets: readonly Target[], s: ReturnType<typeof sizes>): Promise<ScalingRow[]> => {
  const samples = new Map<string, Array<{ rate: number; ns: number }>>()
  // Warm-up, not recorded: a proxy that has not seen traffic yet runs its data path unoptimised.
  for (const t of targets) {
    const c = startInteractive(env, t, ["busy", 10, Math.ceil(s.scaling.syncs / 10), s.scaling.window])
    try {
      await c.next()
      c.send("go")
      await c.next()
    } catch (e) {
      console.log(`scaling warm-up ${t.name}: ${(e as Error).message}`)
    } finally {
      await c.close()
    }
  }
  for (let r = 0; r < s.scaling.rounds; r++) {
    for (const n of s.scaling.clients) {
      for (let k = 0; k < targets.length; k++) {
        const t = targets[(k + r) % targets.length]!
        const c = startInteractive(env, t, ["busy", n, Math.ceil(s.scaling.syncs / n), s.scaling.window])
        try {
          await c.next()
          const pids = t.pids()
          const c0 = cpuSnapshot(pids)
          c.send("go")
          const res = await c.next()
          const c1 = cpuSnapshot(pids)
          const msgs = Number(res["messages"])
          const key = `${t.name}/${n}`
          const list = samples.get(key) ?? []
          list.push({ rate: msgs / Number(res["seconds"]), ns: cpuDelta(c0, c1) / msgs })
          samples.set(key, list)
        } catch (e) {
          console.log(`scaling ${t.name} ×${n}: ${(e as Error).message}`)
        } finally {
          await c.close()
        }
        process.stdout.write(".")
      }
    }
  }
  process.stdout.write("\n")
  const rows: ScalingRow[] = []
  for (const t of targets) {
    for (const n of s.scaling.clients) {
      const list = samples.get(`${t.name}/${n}`) ?? []
      rows.push({
        target: t.name,
        clients: n,
        messagesPerSecond: median(list.map((x) => x.rate)),
        cpuNsPerMessage: median(list.map((x) => x.ns)),
        rounds: list.length
      })
    }
  }
  return rows
}

const scalingTable = (rows: readonly ScalingRow[], s: ReturnType<typeof sizes>): string => {
  const lines = [
    `| proxy | busy clients | messages/s through it | proxy CPU per message (ns) | vs 1 client |`,
    "|---|---:|---:|---:|---:|"
  ]
  for (const r of rows) {
    const one = rows.find((x) => x.target === r.target && x.clients === 1)
    lines.push(
      `| ${r.target} | ${r.clients} | ${fmt(r.messagesPerSecond)} | ${fmt(r.cpuNsPerMessage)} | ${one !== undefined ? (r.cpuNsPerMessage / one.cpuNsPerMessage).toFixed(2) + "×" : ""} |`
    )
  }
  lines.push("", `(${s.scaling.syncs} pipelined wl_display.sync split over the clients, ${s.scaling.window} in flight per client; a sync is 3 messages: the request, wl_callback.done and wl_display.delete_id)`)
  return lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Hops: what each process between the client and the compositor costs a round trip

interface HopRow {
  readonly path: string
  readonly hops: number
  readonly medianUs: number
  readonly ratio: number
  readonly rounds: number
  /** shm partial-damage frames/s and its ratio to direct (one-process paths only). */
  readonly partialFps?: number
  readonly partialRatio?: number
}

/**
 * Round trips through chains of processes, all measured here in the same interleaved rounds as
 * direct (the machine's speed drifts between sections): one and two native relays (relay.c: one
 * epoll_wait, recvmsg and sendmsg per wake-up), one and two local-mode proxies in a row, and the
 * cross-domain pair (serve + emulate-host). They bound what a path of one or two processes can
 * cost on this machine.
 */
const runHops = async (env: Env, weston: Weston, s: ReturnType<typeof sizes>): Promise<HopRow[]> => {
  const relay = buildRelay()
  const dir = join(env.runDir, "hops")
  mkdirSync(dir, { recursive: true })
  /** `n` processes in a row in front of weston, each started by `start` listening on `sock`; the first one's socket. */
  const chain = async (n: number, tag: string, start: (sock: string, upstream: string, log: string) => ChildProcess): Promise<string> => {
    let upstream = weston.socketPath
    for (let i = 1; i <= n; i++) {
      const sock = join(dir, `${tag}-${i}`)
      const log = join(dir, `${tag}-${i}.log`)
      const child = start(sock, upstream, log)
      await waitFor(`${tag} ${i}`, () => existsSync(sock), child, log)
      upstream = sock
    }
    return upstream
  }
  const relayChain = (n: number, tag: string) => chain(n, tag, (sock, upstream, log) => startDaemon(env.settings, relay, [sock, upstream], process.env, log))
  const localChain = (n: number, tag: string) =>
    chain(n, tag, (sock, upstream, log) =>
      startDaemon(env.settings, process.execPath, [cliEntry([]), "serve", sock, "--mode", "local", "--host-display", upstream], { ...process.env, XDG_RUNTIME_DIR: dir }, log)
    )
  const crossDomain = async (): Promise<string> => {
    const { target } = await startCrossDomain({ ...env, runDir: dir }, weston, () => [], "hops-xd")
    return target.env["WAYLAND_DISPLAY"]!
  }
  const paths: Array<{ readonly path: string; readonly hops: number; readonly display: string }> = [
    { path: "direct", hops: 0, display: weston.socketPath },
    { path: "native relay (relay.c)", hops: 1, display: await relayChain(1, "relay1") },
    { path: "sommelier local", hops: 1, display: await localChain(1, "local1") },
    { path: "native relay → native relay", hops: 2, display: await relayChain(2, "relay2") },
    { path: "sommelier local → sommelier local", hops: 2, display: await localChain(2, "local2") },
    { path: "sommelier cross-domain: serve → emulate-host", hops: 2, display: await crossDomain() }
  ]
  const args = ["roundtrip", s.roundtrip.n, s.roundtrip.warm]
  const runs = new Map<string, number[]>(paths.map((p) => [p.path, []]))
  // A discarded round first, as in the latency table: node's lower tiers would be measured otherwise.
  for (const p of paths) await runClient(env, { name: p.path, env: clientEnv(env.runDir, p.display) }, args)
  for (let round = 0; round < env.settings.rounds; round++) {
    for (const p of paths) {
      const [j] = await runClient(env, { name: p.path, env: clientEnv(env.runDir, p.display) }, args)
      const v = Number(j?.["median_us"])
      if (Number.isFinite(v)) runs.get(p.path)!.push(v)
    }
    process.stdout.write(".")
  }
  // Partial damage (each frame waits for the buffer's release: one round trip per frame) through
  // the one-process paths: how close the least a process can do gets to direct.
  const partialArgs = modeArgs(s)["shm-partial"]!
  const partial = new Map<string, number[]>()
  const onePaths = paths.filter((p) => p.hops <= 1)
  for (let round = 0; round < env.settings.rounds; round++) {
    for (const p of onePaths) {
      const [j] = await runClient(env, { name: p.path, env: clientEnv(env.runDir, p.display) }, partialArgs)
      const v = Number(j?.["fps"])
      if (Number.isFinite(v)) partial.set(p.path, [...(partial.get(p.path) ?? []), v])
    }
    process.stdout.write(".")
  }
  process.stdout.write("\n")
  const direct = median(runs.get("direct")!)
  const directFps = median(partial.get("direct") ?? [])
  return paths.map((p) => {
    const xs = runs.get(p.path)!
    const v = median(xs)
    const fps = partial.has(p.path) ? median(partial.get(p.path)!) : undefined
    return { path: p.path, hops: p.hops, medianUs: v, ratio: v / direct, rounds: xs.length, ...(fps !== undefined ? { partialFps: fps, partialRatio: fps / directFps } : {}) }
  })
}

const hopsTable = (rows: readonly HopRow[]): string =>
  [
    "Round trips through chains of processes between the client and weston, every row in the same interleaved rounds (every process on one CPU). The native relay is the least such a process can do.",
    "",
    "| path (client → … → weston) | processes between | roundtrip median (µs) | × direct | shm partial damage (frames/s) |",
    "|---|---:|---:|---:|---:|",
    ...rows.map((r) => `| ${r.path} | ${r.hops} | ${fmt(r.medianUs)} | ${r.ratio.toFixed(2)}× | ${r.partialFps !== undefined ? `${fmt(r.partialFps)} (${r.partialRatio!.toFixed(2)}×)` : ""} |`)
  ].join("\n")

// ---------------------------------------------------------------------------------------------
// Reactor ping-pong (scripts/bench/reactor.ts, written separately; optional)

const runReactor = async (settings: Settings): Promise<{ table: string; rows: unknown } | string> => {
  const file = join(root, "scripts", "bench", "reactor.ts")
  if (!existsSync(file)) return "not available yet (scripts/bench/reactor.ts does not exist)"
  let mod: Record<string, unknown>
  try {
    mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>
  } catch (e) {
    return `not available (importing reactor.ts failed: ${(e as Error).message})`
  }
  const run = mod["runReactorBench"]
  const format = mod["formatReactorTable"]
  if (typeof run !== "function") return `not available yet (reactor.ts exports no runReactorBench; exports: ${Object.keys(mod).join(", ")})`
  try {
    // Quick: only the 0-fd row (each row starts its own node proxy, slow on a busy machine).
    const options = { quick: settings.quick, pin: settings.pin, cpu: settings.cpu, ...(settings.quick ? { fds: [0] } : {}) }
    const rows: unknown = await (run as (o: typeof options) => unknown)(options)
    const table = typeof format === "function" ? String((format as (r: unknown) => string)(rows)) : "```\n" + JSON.stringify(rows, null, 2) + "\n```"
    return { table, rows }
  } catch (e) {
    return `failed: ${(e as Error).message}`
  }
}

// ---------------------------------------------------------------------------------------------
// --profile: the local proxy under `node --cpu-prof`, one profile per mode

const runProfiles = async (env: Env, weston: Weston, which: readonly TargetName[]): Promise<Record<string, ProfileSummary>> => {
  const dir = join(env.settings.out, "profiles")
  mkdirSync(dir, { recursive: true })
  // Full sizes and more work than a bench round, so steady-state traffic dominates the profile.
  const args = modeArgs(sizes(false))
  args["burst"] = ["burst", 100000]
  args["sync"] = ["sync", 50000, 1000]
  args["connect"] = ["connect", 200, 0]
  const out: Record<string, ProfileSummary> = {}
  const modes = env.settings.profileModes ?? ["roundtrip", "burst", "sync", "shm-full", "shm-partial", "connect"]
  for (const targetName of which) {
    for (const mode of modes) {
      const tag = `${targetName}-${mode}`
      const prof = (name: string): string => `${tag}-${name}.cpuprofile`
      const nodeArgs = (name: string): string[] => {
        rmSync(join(dir, prof(name)), { force: true })
        return ["--cpu-prof", "--cpu-prof-interval", "250", "--cpu-prof-dir", dir, "--cpu-prof-name", prof(name)]
      }
      let started: Started
      try {
        started =
          targetName === "local"
            ? await startLocal(env, weston, nodeArgs("serve"), `profile-${tag}`).then(({ target, child }) => ({ target, processes: [{ name: "serve", child }] }))
            : await startCrossDomain(env, weston, nodeArgs, `profile-${tag}`)
      } catch (e) {
        console.log(`profile ${tag}: cannot start (${(e as Error).message.split("\n")[0]})`)
        continue
      }
      const windows: Array<[number, number]> = []
      let fromUs = 0
      try {
        // One client first so that start-up and first-connection work fall before the window.
        await runClient(env, started.target, ["roundtrip", 20, 5])
        await sleep(200)
        fromUs = Number(process.hrtime.bigint() / 1000n)
        // Gated runs: only the timed part of each (no connection set-up); connect is all set-up.
        for (let i = 0; i < 3; i++) {
          if (mode === "connect") await runClient(env, started.target, args[mode]!)
          else await runGated(env, started.target, args[mode]!, (a, b) => windows.push([a, b]), modeEnv[mode])
        }
      } catch (e) {
        console.log(`profile ${tag}: ${(e as Error).message.split("\n")[0]}`)
      } finally {
        for (const p of started.processes) await stopDaemon(p.child, "SIGINT")
      }
      for (const p of started.processes) {
        const file = join(dir, prof(p.name))
        if (!existsSync(file)) {
          console.log(`profile ${tag} (${p.name}): no profile written`)
          continue
        }
        const summary = summarizeProfile(file, { top: 20, root, fromUs, ...(mode === "connect" ? {} : { windows }) })
        out[`${tag}-${p.name}`] = summary
        console.log(`\n### profile: ${targetName}, ${mode}, ${p.name} process (${file}, from ${fromUs} µs)\n\n${formatProfile(summary)}`)
      }
    }
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// Machine

const machine = () => {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8")
  return {
    nproc: cpus().length,
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown",
    kernel: release(),
    node: process.version
  }
}

const loadMeter = () => {
  const m0 = machineCpu()
  const o0 = treeJiffies(process.pid)
  const l0 = loadAverage()
  return () => {
    const m1 = machineCpu()
    const o1 = treeJiffies(process.pid)
    const total = m1.total - m0.total
    const n = cpus().length
    const busy = ((m1.busy - m0.busy) / total) * n
    const ours = Math.min(busy, ((o1 - o0) / total) * n)
    return { loadavgStart: l0, loadavgEnd: loadAverage(), machineBusyCpus: busy, benchCpus: ours, otherCpus: busy - ours }
  }
}

// ---------------------------------------------------------------------------------------------
// Main

const readmeSection = (md: string, m: ReturnType<typeof machine>, date: string, command: string, otherCpus: number): string =>
  [
    `\`${command}\` on ${date}: ${m.nproc} vCPU (${m.cpu}), Linux ${m.kernel}, Node ${m.node}; everything on one`,
    "CPU, medians over interleaved rounds; docs/BENCHMARKS.md explains every row.",
    ...(otherCpus > 0.25
      ? [`Other work kept ${otherCpus.toFixed(1)} of ${m.nproc} CPUs busy during this run (last line): compare ratios, not absolute values.`]
      : []),
    "",
    md
  ].join("\n")

const updateReadme = (section: string): void => {
  const file = join(root, "README.md")
  const text = readFileSync(file, "utf8")
  const start = "<!-- bench:start -->"
  const end = "<!-- bench:end -->"
  const i = text.indexOf(start)
  const j = text.indexOf(end)
  if (i < 0 || j < i) throw new Error("README.md has no bench markers")
  writeFileSync(file, text.slice(0, i + start.length) + "\n" + section + "\n" + text.slice(j))
}

const main = async (settings: Settings, weston: Weston): Promise<void> => {
  const t0 = Date.now()
  const mach = machine()
  const date = new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC"
  console.log(`sommelier bench (${settings.quick ? "quick" : "full"}), ${date}`)
  console.log(`machine: ${mach.nproc} vCPU, ${mach.cpu}, Linux ${mach.kernel}, Node ${mach.node}; load average ${loadAverage()}`)
  console.log(`pinned to CPU ${settings.cpu}: ${settings.pin ? "yes" : "no"}; ${settings.rounds} rounds`)

  if (settings.pin) {
    for (const pid of processTree(weston.pid)) spawnSync("taskset", ["-a", "-p", "-c", settings.cpu, String(pid)], { stdio: "ignore" })
  }
  const client = buildClient()
  ensureBuilt(settings)
  console.log(`proxies run ${relative(root, cliEntry([]))}${cliEntry([]) === cliBundle ? " (the bundle bin/sommelier runs)" : ""}`)
  const runDir = mkdtempSync(join(tmpdir(), "sommelier-bench-"))
  try {
    await measure(settings, weston, { settings, client, runDir }, t0, mach, date)
  } finally {
    await stopAll()
    rmSync(runDir, { recursive: true, force: true })
  }
}

const measure = async (
  settings: Settings,
  weston: Weston,
  env: Env,
  t0: number,
  mach: ReturnType<typeof machine>,
  date: string
): Promise<void> => {
  const { runDir } = env
  const s = sizes(settings.quick)
  const meter = loadMeter()
  let tPhase = t0
  const phaseDone = (name: string): void => {
    const now = Date.now()
    console.log(`(${name}: ${((now - tPhase) / 1000).toFixed(1)} s)`)
    tPhase = now
  }
  const want = (n: TargetName): boolean => settings.only === null || settings.only.has(n)

  const targets: Target[] = [{ name: "direct", env: clientEnv(runDir, weston.socketPath), pids: () => [], fresh: null }]
  const unavailable: Record<string, string> = {}
  const tryStart = async (name: TargetName, start: () => Promise<Target>): Promise<void> => {
    if (!want(name)) return
    try {
      const t = await start()
      t.fresh = memory(t.pids())
      await runClient(env, t, ["roundtrip", 20, 5], 30000)
      targets.push(t)
    } catch (e) {
      // One line: the failure and the last line the process wrote (its log has the rest).
      const lines = (e as Error).message.split("\n").map((l) => l.trim()).filter((l) => l !== "" && l !== "^")
      unavailable[name] = [lines[0], ...lines.slice(1).filter((l) => /error|Error|cannot|not /.test(l)).slice(0, 1)].join(" … ")
      console.log(`${name}: not available yet (${unavailable[name]})`)
    }
  }
  await tryStart("local", async () => (await startLocal(env, weston)).target)
  await tryStart("cross-domain", async () => (await startCrossDomain(env, weston)).target)
  await tryStart("waypipe", () => startWaypipe(env, weston))
  console.log(`targets: ${targets.map((t) => t.name).join(", ")}; logs in ${runDir}`)
  phaseDone("setup")

  const ms = measures(s)
  const result: Record<string, unknown> = { date, machine: mach, settings: { ...settings, only: settings.only && [...settings.only], skip: [...settings.skip] }, sizes: s, unavailable }
  // Printed as they finish; the README and latest.md list them in this order.
  const order = ["modes", "memory", "scaling", "hops", "codec", "reactor"]
  const sections: Array<[string, string]> = []

  const proxies = targets.filter((t) => t.name !== "direct")
  // Memory first, on proxies that have seen no traffic but the smoke test: a new session.
  if (!settings.skip.has("memory") && proxies.length > 0) {
    console.log("\n## memory and idle CPU")
    const rows: MemoryRow[] = []
    for (const t of proxies) {
      try {
        rows.push(await runMemory(env, t, s))
      } catch (e) {
        console.log(`memory ${t.name}: ${(e as Error).message}`)
      }
    }
    const table = memoryTable(rows, s)
    console.log("\n" + table)
    sections.push(["memory", table])
    result["memory"] = rows
    phaseDone("memory")
  }

  if (!settings.skip.has("modes")) {
    console.log("\n## latency and throughput")
    const { raw, errors } = await runModes(env, targets, s)
    // The same failure every round is one line with a count.
    const counts = new Map<string, number>()
    for (const e of errors) counts.set(e, (counts.get(e) ?? 0) + 1)
    for (const [e, n] of counts) console.log(`error (${n}×): ${e.replace(/\s*\n\s*/g, " … ")}`)
    const cells = summarize(raw, targets, ms)
    const table = modesTable(cells, targets, ms, unavailable)
    console.log("\n" + table)
    sections.push(["modes", table])
    Object.assign(result, { modes: cells, raw, errors })
    phaseDone("latency and throughput")
  }

  if (!settings.skip.has("scaling") && proxies.length > 0) {
    console.log("\n## proxy CPU per message vs busy clients")
    const rows = await runScaling(env, proxies, s)
    const table = scalingTable(rows, s)
    console.log("\n" + table)
    sections.push(["scaling", table])
    result["scaling"] = rows
    phaseDone("scaling")
  }

  // The proxies are done: stop them so nothing of ours competes with the rows below.
  await stopAll()

  if (!settings.skip.has("hops")) {
    console.log("\n## hops: the cost of each process on the path")
    try {
      const rows = await runHops(env, weston, s)
      const table = hopsTable(rows)
      console.log("\n" + table)
      sections.push(["hops", table])
      result["hops"] = rows
    } catch (e) {
      console.log(`hops: ${(e as Error).message.split("\n")[0]}`)
    } finally {
      await stopAll()
    }
    phaseDone("hops")
  }

  if (!settings.skip.has("codec")) {
    console.log("\n## data path over captured traffic (in process, no syscalls)")
    const rows: CodecBenchRow[] = runCodecBench({ minMs: s.codecMs })
    const table = formatCodecTable(rows)
    console.log("\n" + table)
    sections.push(["codec", table])
    result["codec"] = rows
    phaseDone("codec")
  }

  if (!settings.skip.has("reactor")) {
    console.log("\n## reactor ping-pong")
    const r = await runReactor(settings)
    if (typeof r === "string") {
      console.log(r)
      result["reactor"] = r
    } else {
      console.log("\n" + r.table)
      sections.push(["reactor", r.table])
      result["reactor"] = r.rows
    }
    phaseDone("reactor")
  }

  const profiled = (["local", "cross-domain"] as const).filter((n) => targets.some((t) => t.name === n) && (settings.only === null || settings.only.has(n)))
  if (settings.profile && profiled.length > 0) {
    console.log("\n## profiles")
    result["profiles"] = await runProfiles(env, weston, profiled)
  }

  const load = meter()
  const loadLine = `machine load during the run: ${load.machineBusyCpus.toFixed(2)} of ${mach.nproc} CPUs busy, ${load.benchCpus.toFixed(2)} by the bench, ${load.otherCpus.toFixed(2)} by other processes; load average ${load.loadavgStart} → ${load.loadavgEnd}`
  console.log("\n" + loadLine)
  result["load"] = load
  result["seconds"] = (Date.now() - t0) / 1000

  const command = `npm run bench${settings.quick ? " -- --quick" : ""}`
  const md = [...sections.sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0])).map(([, t]) => t), loadLine].join("\n\n")
  mkdirSync(settings.out, { recursive: true })
  const jsonFile = join(settings.out, "latest.json")
  const mdFile = join(settings.out, "latest.md")
  writeFileSync(jsonFile, JSON.stringify(result, null, 2) + "\n")
  writeFileSync(mdFile, readmeSection(md, mach, date, command, load.otherCpus) + "\n")
  console.log(`\nresults: ${jsonFile} (and ${mdFile}); ${((Date.now() - t0) / 1000).toFixed(0)} s`)
  if (settings.updateReadme) {
    updateReadme(readmeSection(md, mach, date, command, load.otherCpus))
    console.log("README.md updated between the bench markers")
  }
}

const settings = parseArgs(process.argv.slice(2))
pinCpu = settings.cpu
if (settings.pin) spawnSync("taskset", ["-a", "-p", "-c", settings.cpu, String(process.pid)], { stdio: "ignore" })
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    void stopAll().then(() => process.exit(130))
  })
}

const program = Effect.scoped(
  Effect.gen(function* () {
    const weston = yield* startWeston({ width: 1920, height: 1080 })
    yield* Effect.tryPromise({ try: () => main(settings, weston), catch: (e) => e as Error }).pipe(Effect.ensuring(Effect.promise(stopAll)))
  })
)

Effect.runPromise(program).catch((e: unknown) => {
  console.error(`bench failed: ${e instanceof Error ? e.message : String(e)}`)
  process.exitCode = 1
})
