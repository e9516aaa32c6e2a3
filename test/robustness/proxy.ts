/**
 * The proxy in this process for the robustness tests, with what they need beyond
 * test/helpers/proxy.ts: chosen limits, the reactor (raw clients share it), every log line the
 * proxy wrote, and every exception a reactor handler let escape (a correct proxy has none).
 * Also the heap measure used for "back to baseline" checks.
 *
 * It starts no compositor (test/helpers/weston.ts) and no client (raw.ts, test/helpers/clients.ts).
 */
import { Context, Effect, Layer, Logger, type Scope } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import * as Protocols from "../../src/protocol/registry.js"
import type { ConnectionLimits } from "../../src/proxy/connection.js"
import { serve, type Server } from "../../src/proxy/listener.js"
import * as Reactor from "../../src/transport/reactor.js"

export interface RobustProxy {
  readonly socketPath: string
  readonly runtimeDir: string
  readonly env: NodeJS.ProcessEnv
  readonly server: Server
  readonly reactor: Reactor.ReactorService
  /** Log lines so far, `LEVEL message`. */
  readonly logs: () => ReadonlyArray<string>
  readonly internalErrors: () => ReadonlyArray<string>
}

const SOCKET = "wayland-robust"

/** Environment for a client of the proxy (no WAYLAND_SOCKET, no WAYLAND_DEBUG from ours). */
export const clientEnv = (runtimeDir: string, socketName: string): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, XDG_RUNTIME_DIR: runtimeDir, WAYLAND_DISPLAY: socketName }
  delete env.WAYLAND_SOCKET
  delete env.WAYLAND_DEBUG
  return env
}

export const startProxy = (hostPath: string, limits: Partial<ConnectionLimits> = {}): Effect.Effect<RobustProxy, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(join(tmpdir(), "sommelier-robust-"))),
      (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
    )
    const errors: string[] = []
    const lines: string[] = []
    const onError = (fd: number, error: unknown): void => {
      errors.push(`reactor handler for fd ${fd} threw: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`)
    }
    const context = yield* Layer.build(Layer.mergeAll(Reactor.layerWith({ onError }), Protocols.layer))
    const logger = Logger.make(({ logLevel, message }) => {
      const text = Array.isArray(message) ? message.map(String).join(" ") : String(message)
      lines.push(`${logLevel.label} ${text}`)
      if (process.env.ROBUST_LOG === "1") process.stdout.write(`proxy log: ${logLevel.label} ${text}\n`)
    })
    const socketPath = join(dir, SOCKET)
    const server = yield* serve({ socketPath, hostPath, limits }).pipe(Effect.provide(context), Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
    return {
      socketPath,
      runtimeDir: dir,
      env: clientEnv(dir, SOCKET),
      server,
      reactor: Context.get(context, Reactor.Reactor),
      logs: () => lines,
      internalErrors: () => errors
    } satisfies RobustProxy
  })

let gcFn: (() => void) | null = null

/** Heap in use after a full GC (V8's gc exposed at run time, no node flag needed). */
export const heapAfterGc = (): number => {
  if (gcFn === null) {
    setFlagsFromString("--expose-gc")
    gcFn = runInNewContext("gc") as () => void
  }
  gcFn()
  gcFn()
  return process.memoryUsage().heapUsed
}

/** Polls `cond` every 10 ms until it holds; fails with `what` after `timeoutMs`. */
export const until = (what: string, cond: () => boolean, timeoutMs = 5000): Effect.Effect<void, Error> =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeoutMs
    while (!cond()) {
      if (Date.now() > deadline) return yield* Effect.fail(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`))
      yield* Effect.sleep("10 millis")
    }
  })
