/**
 * The embedded default host compositor: a weston (headless backend, pixman renderer) started in
 * a private runtime directory, for `sommelier demo` when no compositor is running and for the
 * test suite. Scoped: the process is stopped and the directory removed when the scope closes.
 *
 * It only starts and stops weston; it does not talk Wayland.
 */
import { Data, Duration, Effect, Schedule, type Scope } from "effect"
import { spawn, type ChildProcess } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

export class HostError extends Data.TaggedError("HostError")<{ readonly message: string }> {}

export interface WestonOptions {
  /** headless (default) or x11 (needs DISPLAY, gives a real wl_seat). */
  readonly backend?: "headless" | "x11"
  readonly width?: number
  readonly height?: number
  /** Load weston's debug extension (needed by weston-screenshooter). */
  readonly debug?: boolean
  /** Extra environment (e.g. DISPLAY for the x11 backend). */
  readonly env?: NodeJS.ProcessEnv
  /** Shell module (default desktop-shell.so; kiosk-shell.so maps toplevels fullscreen). */
  readonly shell?: string
}

export interface Weston {
  /** Private runtime dir (mode 0700) holding the socket. */
  readonly runtimeDir: string
  readonly socketName: string
  /** Absolute path of weston's socket. */
  readonly socketPath: string
  readonly pid: number
  readonly logFile: string
  /** Environment for clients that should talk to weston directly. */
  readonly env: NodeJS.ProcessEnv
  readonly process: ChildProcess
}

/** Starts weston and waits until its socket accepts connections. */
export const startWeston = (options: WestonOptions = {}): Effect.Effect<Weston, HostError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.gen(function* () {
      const runtimeDir = mkdtempSync(join(tmpdir(), "sommelier-host-"))
      const socketName = "wayland-host"
      const logFile = join(runtimeDir, "weston.log")
      const backend = options.backend ?? "headless"
      const args = [
        `--backend=${backend}-backend.so`,
        "--use-pixman",
        `--socket=${socketName}`,
        `--width=${options.width ?? 640}`,
        `--height=${options.height ?? 480}`,
        "--idle-time=0",
        `--log=${logFile}`,
        ...(options.shell !== undefined ? [`--shell=${options.shell}`] : []),
        ...(options.debug === true ? ["--debug"] : [])
      ]
      const env: NodeJS.ProcessEnv = { ...process.env, ...options.env, XDG_RUNTIME_DIR: runtimeDir }
      delete env.WAYLAND_DISPLAY
      delete env.WAYLAND_SOCKET
      const child = spawn("weston", args, { env, stdio: ["ignore", "ignore", "pipe"] })
      let stderr = ""
      child.stderr?.on("data", (d: Buffer) => {
        stderr += d.toString()
      })
      const spawnError = yield* Effect.async<Error | null>((resume) => {
        child.once("spawn", () => resume(Effect.succeed(null)))
        child.once("error", (e) => resume(Effect.succeed(e)))
      })
      if (spawnError !== null) {
        rmSync(runtimeDir, { recursive: true, force: true })
        return yield* new HostError({ message: `cannot start weston: ${spawnError.message} (install it with scripts/setup.sh)` })
      }
      const socketPath = join(runtimeDir, socketName)
      const ready = yield* Effect.sync(() => existsSync(socketPath) || child.exitCode !== null).pipe(
        Effect.repeat({ schedule: Schedule.spaced(Duration.millis(20)), until: (b) => b }),
        Effect.timeout(Duration.seconds(15)),
        Effect.option
      )
      if (ready._tag === "None" || child.exitCode !== null) {
        child.kill("SIGKILL")
        const log = existsSync(logFile) ? readFileSync(logFile, "utf8").slice(-2000) : ""
        rmSync(runtimeDir, { recursive: true, force: true })
        return yield* new HostError({ message: `weston did not start (${args.join(" ")}): ${stderr.slice(-1000)} ${log}` })
      }
      return {
        runtimeDir,
        socketName,
        socketPath,
        pid: child.pid ?? -1,
        logFile,
        env: { ...env, WAYLAND_DISPLAY: socketName },
        process: child
      } satisfies Weston
    }),
    (w) =>
      Effect.async<void>((resume) => {
        const done = (): void => {
          rmSync(w.runtimeDir, { recursive: true, force: true })
          resume(Effect.void)
        }
        if (w.process.exitCode !== null || w.process.signalCode !== null) return done()
        const t = setTimeout(() => w.process.kill("SIGKILL"), 3000)
        w.process.once("exit", () => {
          clearTimeout(t)
          done()
        })
        w.process.kill("SIGTERM")
      })
  )
