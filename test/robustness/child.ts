/**
 * The proxy as a separate process, for what only a process shows: its exit status, its fd table
 * (/proc/PID/fd), its fd limit, its CPU time, signals. Runs the built CLI (bin/sommelier, what
 * `scripts/setup.sh` builds) when dist/ is newer than every source file, else the sources through
 * tsx, so the tests always run the code in the tree.
 *
 * Also a weston started by hand on a fixed socket path, so that it can be killed and started
 * again where the proxy expects it (startWeston picks a fresh directory each time).
 */
import { Effect, type Scope } from "effect"
import { spawn, type ChildProcess } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { spawnClient, type Client } from "../helpers/clients.js"

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..")

const newestSource = (dir: string): number => {
  let newest = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) newest = Math.max(newest, newestSource(p))
    else if (e.name.endsWith(".ts")) newest = Math.max(newest, statSync(p).mtimeMs)
  }
  return newest
}

let argvCache: string[] | null = null

/** node arguments that run `sommelier` (append the subcommand and its options). */
export const sommelierArgv = (): string[] => {
  if (argvCache !== null) return argvCache
  const built = join(repoRoot, "dist", "cli", "main.js")
  // SOMMELIER_CLI=dist|tsx overrides the choice.
  const choice = process.env.SOMMELIER_CLI
  const fresh = choice === "dist" || (choice !== "tsx" && existsSync(built) && statSync(built).mtimeMs > newestSource(join(repoRoot, "src")))
  argvCache = fresh ? [join(repoRoot, "bin", "sommelier")] : ["--import", "tsx", join(repoRoot, "src", "cli", "main.ts")]
  return argvCache
}

/** Runs `sommelier ARGS` (killed when the scope closes). */
export const spawnSommelier = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv): Effect.Effect<Client, Error, Scope.Scope> =>
  spawnClient(process.execPath, [...sommelierArgv(), ...args], { env, cwd: repoRoot })

/** Open fds of a process. */
export const fdsOf = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length

/**
 * The RLIMIT_NOFILE that leaves a process exactly `free` new fds: new fds take the lowest free
 * numbers below the limit, so count the gaps.
 */
export const limitLeaving = (pid: number, free: number): number => {
  const open = new Set(readdirSync(`/proc/${pid}/fd`).map(Number))
  let gaps = 0
  for (let n = 0; ; n++) {
    if (open.has(n)) continue
    if (gaps === free) return n
    gaps++
  }
}

/** CPU seconds (user + system) a process has used. */
export const cpuSecondsOf = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  // utime and stime are fields 14 and 15 of stat; here indexes 11 and 12 after "pid (comm) ".
  return (Number(fields[11]) + Number(fields[12])) / 100
}

export interface FixedWeston {
  readonly socketPath: string
  readonly runtimeDir: string
  readonly env: NodeJS.ProcessEnv
  /** Starts weston on the fixed path (again); resolves once it accepts connections. */
  readonly start: Effect.Effect<void, Error>
  /** Stops it with a signal: SIGTERM (exits cleanly) or SIGKILL (a crash: socket and lock stay behind). */
  readonly stop: (signal: NodeJS.Signals) => Effect.Effect<void>
}

/** weston (headless) on `runtimeDir/wayland-fixed`, started and stopped by hand; stopped when the scope closes. */
export const fixedWeston = (runtimeDir: string): Effect.Effect<FixedWeston, never, Scope.Scope> =>
  Effect.gen(function* () {
    mkdirSync(runtimeDir, { recursive: true, mode: 0o700 })
    const socketName = "wayland-fixed"
    const socketPath = join(runtimeDir, socketName)
    const env: NodeJS.ProcessEnv = { ...process.env, XDG_RUNTIME_DIR: runtimeDir, WAYLAND_DISPLAY: socketName }
    delete env.WAYLAND_SOCKET
    let proc: ChildProcess | null = null
    const stop = (signal: NodeJS.Signals): Effect.Effect<void> =>
      Effect.async<void>((resume) => {
        const p = proc
        proc = null
        if (p === null || p.exitCode !== null || p.signalCode !== null) return resume(Effect.void)
        const t = setTimeout(() => p.kill("SIGKILL"), 3000)
        p.once("exit", () => {
          clearTimeout(t)
          resume(Effect.void)
        })
        p.kill(signal)
      })
    const start = Effect.gen(function* () {
      const westonEnv = { ...env }
      delete westonEnv.WAYLAND_DISPLAY
      const p = spawn("weston", ["--backend=headless-backend.so", "--use-pixman", `--socket=${socketName}`, "--idle-time=0", `--log=${join(runtimeDir, "weston.log")}`], {
        env: westonEnv,
        stdio: "ignore"
      })
      proc = p
      // Ready when the socket accepts a connection (a stale socket file from a crash does not).
      const deadline = Date.now() + 15_000
      for (;;) {
        if (p.exitCode !== null) return yield* Effect.fail(new Error(`weston exited with ${p.exitCode}: ${readFileSync(join(runtimeDir, "weston.log"), "utf8").slice(-1000)}`))
        if (yield* accepts(socketPath)) return
        if (Date.now() > deadline) return yield* Effect.fail(new Error("weston did not start within 15 s"))
        yield* Effect.sleep("20 millis")
      }
    })
    yield* Effect.addFinalizer(() => stop("SIGTERM"))
    return { socketPath, runtimeDir, env, start, stop }
  })

/** True when something accepts a connection at `path`. */
export const accepts = (path: string): Effect.Effect<boolean> =>
  Effect.async<boolean>((resume) => {
    // node:net keeps this independent of the code under test.
    import("node:net").then(({ createConnection }) => {
      const s = createConnection({ path })
      s.once("connect", () => {
        s.destroy()
        resume(Effect.succeed(true))
      })
      s.once("error", () => resume(Effect.succeed(false)))
    })
  })
