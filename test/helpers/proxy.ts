/**
 * The proxy under test, parameterized by transport: every end-to-end test body is written once
 * and run for each entry of `transports` (the way wayland-rs runs one body over its backends).
 *
 * "local" runs `serve` in this process (Reactor and Protocols layers built in the test's scope)
 * on a socket in a private 0700 runtime directory; clients get `env` (XDG_RUNTIME_DIR and
 * WAYLAND_DISPLAY pointing at it). A "cross-domain" entry is to be added beside it.
 *
 * Also the fd-leak check shared by the integration tests. It does not start compositors
 * (weston.ts) or clients (clients.ts).
 */
import { it } from "@effect/vitest"
import { Duration, Effect, Layer, type Scope } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Protocols from "../../src/protocol/registry.js"
import { serve, type Server } from "../../src/proxy/listener.js"
import * as Reactor from "../../src/transport/reactor.js"
import { describeFd, openFds } from "./fds.js"
import { crossDomain } from "../crossdomain/transport.js"

export interface ProxyFixture {
  /** Absolute path of the socket guest clients connect to. */
  readonly socketPath: string
  /** Environment for clients of the proxy: XDG_RUNTIME_DIR + WAYLAND_DISPLAY, no WAYLAND_SOCKET. */
  readonly env: NodeJS.ProcessEnv
  readonly server: Server
  /**
   * Internal errors the proxy reported so far (here: exceptions that escaped a reactor handler,
   * which the reactor contains by closing that watch). A correct proxy reports none.
   */
  readonly internalErrors: () => ReadonlyArray<string>
}

export interface TransportFixture {
  readonly name: string
  /** Starts a proxy in front of the compositor at `hostSocketPath`; stopped when the scope closes. */
  readonly start: (hostSocketPath: string) => Effect.Effect<ProxyFixture, unknown, Scope.Scope>
  /** Features this transport cannot carry yet, each with the reason (see `scopedLiveNeeding`). */
  readonly lacks?: ReadonlyMap<TransportFeature, string>
}

/** What a test needs of the transport beyond plain Wayland messages. */
export type TransportFeature = "shm"

/**
 * `it.scopedLive` for a test that needs `features`; on a transport that lacks one, the test is
 * registered as skipped with the reason in its name, so the report shows it rather than hiding it.
 */
export const scopedLiveNeeding = (transport: TransportFixture, ...features: TransportFeature[]): typeof it.scopedLive => {
  const why = features.map((f) => transport.lacks?.get(f)).find((r) => r !== undefined)
  if (why === undefined) return it.scopedLive
  const skipped = (name: string, self: Parameters<typeof it.scopedLive>[1], timeout?: Parameters<typeof it.scopedLive>[2]) =>
    it.scopedLive.skip(`${name} [skipped on ${transport.name}: ${why}]`, self, timeout)
  return Object.assign(skipped, it.scopedLive)
}

const SOCKET_NAME = "wayland-proxy"

/** A private runtime directory (mkdtemp makes it 0700), removed when the scope closes. */
const privateRuntimeDir = (prefix: string): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), prefix))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  )

export const clientEnv = (runtimeDir: string, socketName: string): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, XDG_RUNTIME_DIR: runtimeDir, WAYLAND_DISPLAY: socketName }
  delete env.WAYLAND_SOCKET
  delete env.WAYLAND_DEBUG
  return env
}

export const local: TransportFixture = {
  name: "local",
  start: (hostSocketPath) =>
    Effect.gen(function* () {
      const dir = yield* privateRuntimeDir("sommelier-proxy-")
      const socketPath = join(dir, SOCKET_NAME)
      // Layer.build ties the reactor's lifetime to the test's scope (Effect.provide would release
      // it as soon as `serve` returned).
      const errors: string[] = []
      const onError = (fd: number, error: unknown): void => {
        errors.push(`reactor handler for fd ${fd} threw: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`)
      }
      const context = yield* Layer.build(Layer.mergeAll(Reactor.layerWith({ onError }), Protocols.layer))
      const server = yield* serve({ socketPath, hostPath: hostSocketPath }).pipe(Effect.provide(context))
      return { socketPath, env: clientEnv(dir, SOCKET_NAME), server, internalErrors: () => errors }
    })
}

// Guest clients → serve --mode cross-domain → emulated virtio-gpu (a child process) → compositor.
export const transports: ReadonlyArray<TransportFixture> = [local, crossDomain]

// -------------------------------------------------------------------------------------------------
// fd leaks

export interface FdSnapshot {
  readonly fds: ReadonlyMap<number, string>
}

/** The test process's open fds, with what each points at (for the failure message). */
export const fdSnapshot = (): FdSnapshot => {
  const m = new Map<number, string>()
  for (const fd of openFds()) m.set(fd, describeFd(fd) ?? "?")
  return { fds: m }
}

const diff = (before: FdSnapshot, after: FdSnapshot): { leaked: string[]; closed: string[] } => ({
  leaked: [...after.fds].filter(([fd, what]) => before.fds.get(fd) !== what).map(([fd, what]) => `${fd} -> ${what}`),
  closed: [...before.fds].filter(([fd, what]) => after.fds.get(fd) !== what).map(([fd, what]) => `${fd} -> ${what}`)
})

/**
 * Fails unless the process's open fds return to `before` once the proxy has no client left.
 * Connections end asynchronously (on the next readiness wake-up), so both conditions are polled
 * for up to `timeout`; what is still open after that is reported fd by fd.
 */
export const expectNoFdLeak = (before: FdSnapshot, server: Server, timeout: Duration.DurationInput = "3 seconds"): Effect.Effect<void, Error> =>
  Effect.gen(function* () {
    const deadline = Date.now() + Duration.toMillis(timeout)
    for (;;) {
      const now = fdSnapshot()
      const d = diff(before, now)
      const active = server.activeClients()
      if (d.leaked.length === 0 && active === 0) return
      if (Date.now() > deadline) {
        return yield* Effect.fail(
          new Error(`fd leak check: ${active} client(s) still connected; leaked fds: [${d.leaked.join(", ")}]; fds closed since the snapshot: [${d.closed.join(", ")}]`)
        )
      }
      yield* Effect.sleep("25 millis")
    }
  })
