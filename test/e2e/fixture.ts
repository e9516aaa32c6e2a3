/**
 * Shared shape of an end-to-end test: host compositor, then the proxy (one transport), then an
 * fd snapshot; the body runs in its own scope (so its clients are killed and its sockets closed
 * when it ends), then the process must be back to the snapshot's fds with no client left.
 * The snapshot is taken after the fixtures started, so their own fds (weston's pipes, the
 * reactor, the listening socket and its lock) are allowed for. Finally the proxy must have
 * reported no internal error (an exception escaping its data path).
 */
import { Effect, type Scope } from "effect"
import type { HostError } from "../../src/host/weston.js"
import { expectNoFdLeak, fdSnapshot, type ProxyFixture, type TransportFixture } from "../helpers/proxy.js"
import type { Host } from "../helpers/weston.js"

export interface Ctx {
  readonly host: Host
  readonly proxy: ProxyFixture
}

export const withProxy = <A, E>(
  transport: TransportFixture,
  host: Effect.Effect<Host, HostError, Scope.Scope>,
  body: (ctx: Ctx) => Effect.Effect<A, E, Scope.Scope>
): Effect.Effect<A, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const h = yield* host
    const proxy = yield* transport.start(h.socketPath)
    const before = fdSnapshot()
    const result = yield* Effect.scoped(body({ host: h, proxy }))
    yield* expectNoFdLeak(before, proxy.server)
    const internal = proxy.internalErrors()
    if (internal.length > 0) return yield* Effect.fail(new Error(`the proxy reported ${internal.length} internal error(s):\n${internal.join("\n")}`))
    return result
  })
