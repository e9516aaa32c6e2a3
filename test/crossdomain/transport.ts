/**
 * The "cross-domain" transport fixture: guest clients → `serve` with the cross-domain connector
 * (in this process) → the emulated virtio-gpu device (`VirtGpu` emulated backend) → the emulator
 * in a child process (test/crossdomain/fixtures/emulate-host.ts: kernel + VMM + rutabaga's
 * cross-domain host) → the compositor. The emulator must be another process: the emulated
 * backend blocks on each request like an ioctl.
 *
 * Imports nothing from test/helpers/proxy.ts (which lists this fixture in `transports`), so either
 * module may be loaded first.
 */
import { Duration, Effect, Layer, type Scope } from "effect"
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import * as Protocols from "../../src/protocol/registry.js"
import { serve, type Server } from "../../src/proxy/listener.js"
import * as Reactor from "../../src/transport/reactor.js"
import { crossDomainConnector } from "../../src/transport/crossdomain/connector.js"
import { emulatedLayer } from "../../src/virtgpu/emulated.js"
import type { TransportFixture } from "../helpers/proxy.js"

const here = dirname(fileURLToPath(import.meta.url))
const repoRoot = resolve(here, "../..")
const SOCKET_NAME = "wayland-proxy"

export interface CrossDomainProxy {
  readonly socketPath: string
  readonly env: NodeJS.ProcessEnv
  readonly server: Server
  readonly internalErrors: () => ReadonlyArray<string>
  /** What the emulator process printed on stderr so far. */
  readonly emulatorLog: () => string
}

const privateDir = (prefix: string): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), prefix))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  )

/** Starts the emulator child on `listenPath`; resolves once it prints "ready". Killed with the scope (SIGTERM), or earlier with `kill`. */
export const startEmulatorProcess = (
  listenPath: string,
  waylandSocket: string
): Effect.Effect<{ readonly log: () => string; readonly kill: (signal: NodeJS.Signals) => void }, Error, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<{ child: ReturnType<typeof spawn>; log: () => string }, Error>((resume) => {
      const child = spawn(process.execPath, ["--import", "tsx", join(here, "fixtures", "emulate-host.ts"), listenPath, waylandSocket], {
        cwd: repoRoot,
        stdio: ["ignore", "pipe", "pipe"]
      })
      let err = ""
      let out = ""
      let done = false
      // Generous: the child loads the emulator through tsx, which is slow on a loaded 2-core machine.
      const timer = setTimeout(() => finish(new Error(`emulator did not start within 45 s; stderr: ${err}`)), 45_000)
      const finish = (e: Error | null): void => {
        if (done) return
        done = true
        clearTimeout(timer)
        if (e === null) resume(Effect.succeed({ child, log: () => err }))
        else {
          child.kill("SIGKILL")
          resume(Effect.fail(e))
        }
      }
      child.stderr!.on("data", (d: Buffer) => (err += d.toString()))
      child.stdout!.on("data", (d: Buffer) => {
        out += d.toString()
        if (out.includes("ready\n")) finish(null)
      })
      child.once("exit", (code, signal) => finish(new Error(`emulator exited (${code ?? signal}) before it was ready; stderr: ${err}`)))
    }),
    ({ child }) =>
      Effect.async<void>((resume) => {
        if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
        child.once("exit", () => resume(Effect.void))
        child.kill("SIGTERM")
      }).pipe(Effect.timeout(Duration.seconds(5)), Effect.ignore)
  ).pipe(Effect.map(({ child, log }) => ({ log, kill: (signal: NodeJS.Signals) => void child.kill(signal) })))

/** The whole cross-domain stack in front of the compositor at `hostSocketPath`. */
export const startCrossDomainProxy = (hostSocketPath: string): Effect.Effect<CrossDomainProxy, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const dir = yield* privateDir("sommelier-xd-")
    const emuPath = join(dir, "virtgpu-emu")
    const emulator = yield* startEmulatorProcess(emuPath, hostSocketPath)
    const errors: string[] = []
    const onError = (fd: number, error: unknown): void => {
      errors.push(`reactor handler for fd ${fd} threw: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`)
    }
    const context = yield* Layer.build(Layer.mergeAll(Reactor.layerWith({ onError }), Protocols.layer, emulatedLayer(emuPath)))
    const connector = yield* crossDomainConnector({ description: `cross-domain via emulated:${emuPath}` }).pipe(Effect.provide(context))
    const socketPath = join(dir, SOCKET_NAME)
    const server = yield* serve({ socketPath, hostPath: connector.description, connector }).pipe(Effect.provide(context))
    const env: NodeJS.ProcessEnv = { ...process.env, XDG_RUNTIME_DIR: dir, WAYLAND_DISPLAY: SOCKET_NAME }
    delete env.WAYLAND_SOCKET
    delete env.WAYLAND_DEBUG
    return { socketPath, env, server, internalErrors: () => errors, emulatorLog: emulator.log }
  })

/** The entry `test/helpers/proxy.ts` lists in `transports`. */
export const crossDomain: TransportFixture = {
  name: "cross-domain",
  start: (hostSocketPath) => startCrossDomainProxy(hostSocketPath)
}
