/**
 * Host compositor fixtures for the end-to-end tests, built on src/host/weston.ts.
 *
 * - `headlessHost`: weston's headless backend. Fast and needs no X server, but it creates no
 *   wl_seat (no keyboard, no pointer), so anything that needs input focus cannot run on it.
 * - `x11Host`: weston's x11 backend inside a private Xvfb. It has a real wl_seat (keyboard and
 *   pointer driven by the X server), which wl-copy/wl-paste (a selection needs a keyboard-focus
 *   serial) and foot (typed text) need; xdotool injects input through the Xvfb display.
 *
 * Both use the pixman renderer, a private 0700 runtime directory, and a weston.ini (through
 * XDG_CONFIG_HOME) that turns off the desktop shell's startup fade and window animations, so a
 * screenshot shows exact client pixels as soon as they are committed. `screenshot` runs
 * weston-screenshooter directly on the host socket (it needs `debug: true`).
 *
 * Everything is scoped: processes are stopped and directories removed when the scope closes.
 */
import { Duration, Effect, type Scope } from "effect"
import { spawn } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { HostError, startWeston, type Weston, type WestonOptions } from "../../src/host/weston.js"
import { runClientOk } from "./clients.js"
import { decodePng, type Image } from "./png.js"

export interface Host extends Weston {
  /** X display of the private Xvfb (x11 backend only). */
  readonly xDisplay?: string
}

const WESTON_INI = `[core]
idle-time=0
[shell]
startup-animation=none
animation=none
close-animation=none
focus-animation=none
[keyboard]
keymap_layout=us
`

/** A private XDG_CONFIG_HOME holding weston.ini; removed when the scope closes. */
const westonConfig = (): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const dir = mkdtempSync(join(tmpdir(), "sommelier-westoncfg-"))
      writeFileSync(join(dir, "weston.ini"), WESTON_INI)
      return dir
    }),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  )

export interface HostOptions {
  readonly width?: number
  readonly height?: number
  /** Load weston's debug protocol (weston-screenshooter needs it). */
  readonly debug?: boolean
}

const westonOptions = (o: HostOptions, configHome: string, extra: Partial<WestonOptions> = {}): WestonOptions => ({
  width: o.width ?? 640,
  height: o.height ?? 480,
  ...(o.debug === true ? { debug: true } : {}),
  ...extra,
  env: { ...extra.env, XDG_CONFIG_HOME: configHome }
})

/** weston, headless backend (no wl_seat). */
export const headlessHost = (o: HostOptions = {}): Effect.Effect<Host, HostError, Scope.Scope> =>
  Effect.gen(function* () {
    const config = yield* westonConfig()
    return yield* startWeston(westonOptions(o, config))
  })

/**
 * A private Xvfb on a display number the X server picks itself (`-displayfd`), so parallel test
 * workers never race for one. Returns the display string (":N").
 */
export const xvfb = (): Effect.Effect<string, HostError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<{ display: string; proc: ReturnType<typeof spawn> }, HostError>((resume) => {
      const proc = spawn("Xvfb", ["-displayfd", "3", "-screen", "0", "1024x768x24", "-nolisten", "tcp"], {
        stdio: ["ignore", "ignore", "pipe", "pipe"]
      })
      let out = ""
      let err = ""
      let done = false
      const finish = (r: Effect.Effect<{ display: string; proc: ReturnType<typeof spawn> }, HostError>): void => {
        if (done) return
        done = true
        clearTimeout(timer)
        resume(r)
      }
      const timer = setTimeout(() => {
        proc.kill("SIGKILL")
        finish(Effect.fail(new HostError({ message: `Xvfb did not report a display within 10 s: ${err.slice(-1000)}` })))
      }, 10_000)
      proc.stderr!.on("data", (d: Buffer) => {
        err += d.toString()
      })
      const fd3 = proc.stdio[3] as NodeJS.ReadableStream
      fd3.on("data", (d: Buffer) => {
        out += d.toString()
        const m = /^(\d+)\n/.exec(out)
        if (m !== null) finish(Effect.succeed({ display: `:${m[1]}`, proc }))
      })
      proc.once("error", (e) => finish(Effect.fail(new HostError({ message: `cannot start Xvfb: ${e.message}` }))))
      proc.once("exit", (code) => finish(Effect.fail(new HostError({ message: `Xvfb exited with ${code}: ${err.slice(-1000)}` }))))
    }),
    ({ proc }) =>
      Effect.async<void>((resume) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resume(Effect.void)
        const t = setTimeout(() => proc.kill("SIGKILL"), 3000)
        proc.once("close", () => {
          clearTimeout(t)
          resume(Effect.void)
        })
        proc.kill("SIGTERM")
      })
  ).pipe(Effect.map(({ display }) => display))

/** weston, x11 backend, in a private Xvfb: has a wl_seat with keyboard and pointer. */
export const x11Host = (o: HostOptions = {}): Effect.Effect<Host, HostError, Scope.Scope> =>
  Effect.gen(function* () {
    const display = yield* xvfb()
    const config = yield* westonConfig()
    const weston = yield* startWeston(westonOptions(o, config, { backend: "x11", env: { DISPLAY: display } }))
    return { ...weston, xDisplay: display, env: { ...weston.env, DISPLAY: display } }
  })

/**
 * A screenshot of the host's output, taken by weston-screenshooter talking to weston directly
 * (needs `debug: true`). It writes `wayland-screenshot-*.png` into its cwd: a fresh temp dir.
 */
export const screenshot = (host: Host): Effect.Effect<Image, HostError> =>
  Effect.gen(function* () {
    const cwd = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(join(tmpdir(), "sommelier-shot-"))),
      (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
    )
    yield* runClientOk("weston-screenshooter", [], { env: host.env, cwd, timeout: Duration.seconds(10) }).pipe(
      Effect.mapError((e) => new HostError({ message: `weston-screenshooter: ${e.message}` }))
    )
    const files = readdirSync(cwd).filter((f) => f.endsWith(".png"))
    const file = files[0]
    if (file === undefined) return yield* new HostError({ message: `weston-screenshooter wrote no png (files: ${files.join(", ")})` })
    return decodePng(readFileSync(join(cwd, file)))
  }).pipe(Effect.scoped)
