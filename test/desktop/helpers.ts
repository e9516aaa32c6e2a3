/**
 * Helpers for the desktop-integration tests: the built CLI (`bin/sommelier`, built once per run
 * under a lock), a process handle that can pass extra fds (socket activation hands the listening
 * socket over as fd 3), AF_UNIX datagram sockets through the project's ffi layer (node cannot
 * make them) to play systemd's notify socket, and a private runtime directory.
 *
 * It knows nothing of what the tests assert.
 */
import { Duration, Effect, type Scope } from "effect"
import { execFile, spawn, type ChildProcess } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { Errno } from "../../src/ffi/errno.js"
import { AF_UNIX, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, sys } from "../../src/ffi/libc.js"
import { notifyAddress } from "../../src/proxy/activation.js"
import { checkFds, openFds } from "../helpers/fds.js"

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..")
export const binPath = join(repoRoot, "bin/sommelier")

let built = false

/** Newest mtime under `dir` (recursive), in ms. */
const newest = (dir: string): number => {
  let max = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    max = Math.max(max, e.isDirectory() ? newest(p) : statSync(p).mtimeMs)
  }
  return max
}

/**
 * Builds dist/ (`tsc -p tsconfig.build.json`, then the bundle) unless it is newer than every file in src/ (as
 * after scripts/setup.sh), serialized with flock(1) because several test files may build at
 * once. Type errors elsewhere in the tree do not stop the emit; only a missing
 * dist/cli/main.js fails.
 */
export const ensureBuilt = (): Effect.Effect<void, Error> =>
  Effect.gen(function* () {
    if (built) return
    const cache = join(repoRoot, "node_modules/.cache")
    const main = join(repoRoot, "dist/cli/main.js")
    // tsc rewrites the output of every changed source, so fresh output is newer than any source.
    const fresh = existsSync(main) && newest(join(repoRoot, "dist")) >= newest(join(repoRoot, "src"))
    if (!fresh) {
      mkdirSync(cache, { recursive: true })
      // Asynchronously: a build blocking the worker's event loop starves vitest's own RPC.
      const r = yield* Effect.promise(
        () =>
          new Promise<Error | null>((done) =>
            execFile(
              "flock",
              // tsc, then the one-file bundle bin/sommelier prefers (scripts/bundle.mjs), as `npm run build`.
              [join(cache, "sommelier-desktop-build.lock"), "sh", "-c", "node_modules/.bin/tsc -p tsconfig.build.json; node scripts/bundle.mjs"],
              { cwd: repoRoot },
              (e) => done(e)
            )
          )
      )
      if (r !== null && !existsSync(main)) return yield* Effect.fail(new Error(`cannot build dist/: ${r.message}`))
    }
    built = true
  })

/**
 * Runs `body` in its own scope and fails if the set of fds open in this process differs
 * afterwards (child-process pipes and HTTP sockets close asynchronously: allow 3 s). The
 * snapshot before is taken once the set is steady, so that pipes of a previous test's processes
 * (weston's stderr closes after its exit) do not count against this one.
 */
export const noFdLeak = <A, E, R>(body: Effect.Effect<A, E, R>): Effect.Effect<A, E | Error, Exclude<R, Scope.Scope>> =>
  Effect.gen(function* () {
    let before = openFds()
    for (let i = 0; i < 20; i++) {
      yield* Effect.sleep(Duration.millis(100))
      const now = openFds()
      if (now.join() === before.join()) break
      before = now
    }
    const result = yield* Effect.scoped(body)
    yield* Effect.tryPromise({ try: () => checkFds(before, 3000), catch: (e) => (e instanceof Error ? e : new Error(String(e))) })
    return result
  })

/** A private 0700 runtime directory, removed when the scope closes. */
export const runtimeDir = (): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), "sommelier-desktop-"))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  )

/** Environment without any Wayland, systemd or OTLP variables of the machine running the tests. */
export const cleanEnv = (extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env }
  for (const k of Object.keys(env)) {
    if (/^(WAYLAND_|LISTEN_|NOTIFY_SOCKET$|OTEL_)/.test(k)) delete env[k]
  }
  return { ...env, ...extra }
}

export interface Proc {
  readonly process: ChildProcess
  readonly stdout: () => string
  readonly stderr: () => string
  /** Resolves when `check` holds (checked on output and every 50 ms); fails when the process exits first or on timeout. */
  readonly until: (what: string, check: () => boolean, timeout?: Duration.DurationInput) => Effect.Effect<void, Error>
  /** Waits until the process exited and its pipes closed. */
  readonly exited: (timeout?: Duration.DurationInput) => Effect.Effect<{ code: number | null; signal: NodeJS.Signals | null }, Error>
  readonly signal: (s: NodeJS.Signals) => void
}

/**
 * Spawns `command args`; `fds[i]` (fds open in this process) become the child's fd 3 + i.
 * SIGKILLed when the scope closes if still running.
 */
export const spawnProc = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly env: NodeJS.ProcessEnv; readonly fds?: ReadonlyArray<number> }
): Effect.Effect<Proc, Error, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<{ proc: Proc; closed: Promise<void> }, Error>((resume) => {
      const child = spawn(command, [...args], { env: options.env, stdio: ["ignore", "pipe", "pipe", ...(options.fds ?? [])] })
      let out = ""
      let err = ""
      let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null
      const waiters = new Set<() => void>()
      const notify = (): void => {
        for (const w of [...waiters]) w()
      }
      child.stdout!.on("data", (d: Buffer) => {
        out += d.toString()
        notify()
      })
      child.stderr!.on("data", (d: Buffer) => {
        err += d.toString()
        notify()
      })
      const closed = new Promise<void>((res) =>
        child.once("close", (code, signal) => {
          exit = { code, signal }
          notify()
          res()
        })
      )
      const describe = (): string => `${command} ${args.join(" ")}: stderr: ${err.slice(-3000)} stdout: ${out.slice(-1000)}`
      const waitUntil = <A>(what: string, ready: () => A | undefined, timeout: Duration.DurationInput): Effect.Effect<A, Error> =>
        Effect.async<A, Error>((done) => {
          const test = (): boolean => {
            const v = ready()
            if (v !== undefined) {
              done(Effect.succeed(v))
              return true
            }
            if (exit !== null) {
              done(Effect.fail(new Error(`waiting for ${what}: process exited (${exit.code ?? exit.signal}): ${describe()}`)))
              return true
            }
            return false
          }
          if (test()) return
          const stop = (): void => {
            waiters.delete(w)
            clearTimeout(timer)
            clearInterval(tick)
          }
          const w = (): void => {
            if (test()) stop()
          }
          const timer = setTimeout(() => {
            stop()
            done(Effect.fail(new Error(`no ${what} within ${Duration.format(timeout)}: ${describe()}`)))
          }, Duration.toMillis(timeout))
          // Also re-check on a timer: the condition may depend on something other than output.
          const tick = setInterval(w, 50)
          waiters.add(w)
          return Effect.sync(stop)
        })
      const proc: Proc = {
        process: child,
        stdout: () => out,
        stderr: () => err,
        until: (what, check, timeout = "90 seconds") => waitUntil(what, () => (check() ? true : undefined), timeout).pipe(Effect.asVoid),
        exited: (timeout = "90 seconds") =>
          Effect.async<{ code: number | null; signal: NodeJS.Signals | null }, Error>((done) => {
            const t = setTimeout(() => done(Effect.fail(new Error(`did not exit within ${Duration.format(timeout)}: ${describe()}`))), Duration.toMillis(timeout))
            void closed.then(() => {
              clearTimeout(t)
              done(Effect.succeed(exit!))
            })
            return Effect.sync(() => clearTimeout(t))
          }),
        signal: (s) => {
          if (exit === null) child.kill(s)
        }
      }
      child.once("spawn", () => resume(Effect.succeed({ proc, closed })))
      child.once("error", (e) => {
        if (child.pid === undefined) resume(Effect.fail(new Error(`cannot start ${command}: ${e.message}`)))
      })
    }),
    ({ proc, closed }) =>
      Effect.promise(() => {
        proc.signal("SIGKILL")
        return closed
      })
  ).pipe(Effect.map(({ proc }) => proc))

/** `bin/sommelier ARGS` as the process itself (exec keeps the pid: LISTEN_PID must match it). */
export const spawnSommelier = (
  args: ReadonlyArray<string>,
  options: { readonly env: NodeJS.ProcessEnv; readonly fds?: ReadonlyArray<number>; readonly listenPid?: boolean }
): Effect.Effect<Proc, Error, Scope.Scope> =>
  options.listenPid === true
    ? spawnProc("sh", ["-c", 'LISTEN_PID=$$ exec "$@"', "sh", binPath, ...args], options)
    : spawnProc(binPath, args, options)

export interface Datagrams {
  readonly fd: number
  /** All datagrams received so far, in order. */
  readonly received: () => ReadonlyArray<string>
  /** Reads what is queued (non-blocking). */
  readonly poll: () => void
  /** Polls until a datagram equal to `text` arrived. */
  readonly waitFor: (text: string, timeout?: Duration.DurationInput) => Effect.Effect<void, Error>
}

/**
 * An AF_UNIX SOCK_DGRAM socket bound to `address` (a path, or '@name' in the abstract namespace),
 * like the service manager's notify socket. Closed (and its path unlinked) when the scope closes.
 */
export const datagramSocket = (address: string): Effect.Effect<Datagrams, Error, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const sa = notifyAddress(address)
      if (sa instanceof Error) throw sa
      const fd = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
      if (fd < 0) throw new Error(`socket: errno ${-fd}`)
      const r = sys.bind(fd, sa.addr, sa.len)
      if (r < 0) {
        sys.close(fd)
        throw new Error(`bind ${address}: errno ${-r}`)
      }
      const got: string[] = []
      const buf = new Uint8Array(4096)
      const poll = (): void => {
        for (;;) {
          const n = sys.read(fd, buf, buf.length)
          if (n === -Errno.EAGAIN) return
          if (n < 0) throw new Error(`read: errno ${-n}`)
          got.push(Buffer.from(buf.subarray(0, n)).toString("utf8"))
        }
      }
      const waitFor = (text: string, timeout: Duration.DurationInput = "90 seconds"): Effect.Effect<void, Error> =>
        Effect.gen(function* () {
          const deadline = Date.now() + Duration.toMillis(timeout)
          for (;;) {
            poll()
            if (got.includes(text)) return
            if (Date.now() > deadline) return yield* Effect.fail(new Error(`no datagram ${JSON.stringify(text)} within ${Duration.format(timeout)}; got ${JSON.stringify(got)}`))
            yield* Effect.sleep(Duration.millis(20))
          }
        })
      return { fd, received: () => got, poll, waitFor } satisfies Datagrams
    }),
    (d) =>
      Effect.sync(() => {
        sys.close(d.fd)
        if (!address.startsWith("@")) rmSync(address, { force: true })
      })
  )
