/**
 * The listening socket and the per-client lifecycle: accept a guest client, open its own host
 * connection, wire both sockets to the reactor. A failure in one client is logged and contained
 * and the listener goes on. Clients are set up in plain code from the accept callback when the
 * connector allows it and no spans are wanted; otherwise each runs in a scoped fiber of a
 * `FiberSet` with a connection span.
 *
 * It knows paths, locks and lifetimes; it does not parse messages (connection.ts does) and does
 * not know how the CLI found its options.
 */
import { Data, Deferred, Effect, Exit, FiberSet, Runtime, Scope, Tracer } from "effect"
import { Protocols } from "../protocol/registry.js"
import { EPOLLIN, EPOLLOUT, Reactor, type ReactorService, type Watch } from "../transport/reactor.js"
import { acceptUnix, connectUnixSync, listenUnix, lockFile, SocketEndpoint } from "../transport/socket.js"
import { SyscallError } from "../ffi/errno.js"
import { closeFd } from "../transport/socket.js"
import { Connection, type ConnectionHooks, type ConnectionOptions, type ConnectionLimits, type Endpoint, defaultDeniedGlobals, defaultLimits, type ConnectionStats, emptyStats, setFdCloser } from "./connection.js"
import type { ConnectionEndReason } from "./errors.js"
import { encodeMessage } from "../wire/index.js"
import type { MessageDesc } from "../protocol/types.js"
import type { MessageHook } from "./connection.js"
import { closeSync, existsSync, lstatSync, openSync, unlinkSync } from "node:fs"
import { ServeError } from "./paths.js"
import { SO_SNDBUF, SOL_SOCKET, sys } from "../ffi/libc.js"

setFdCloser(closeFd)

export interface ServeOptions {
  /** Absolute path of the socket guest clients connect to. */
  readonly socketPath: string
  /** Absolute path of the host compositor's socket. */
  readonly hostPath: string
  readonly limits?: Partial<ConnectionLimits>
  /** `--trace`: WAYLAND_DEBUG-format lines. */
  readonly trace?: ((line: string) => void) | null
  /** Interfaces hidden from clients; default `defaultDeniedGlobals`. */
  readonly deniedGlobals?: ReadonlySet<string>
  /**
   * Emit Effect spans: one per client connection (its set-up and teardown then run in a fiber)
   * and one per forwarded batch (one Effect step per batch). Off, clients are handled in plain
   * code when the connector allows it (`HostConnector.connectSync`).
   */
  readonly batchSpans?: boolean
  /**
   * An already listening socket to serve instead of binding `socketPath` (systemd socket
   * activation). The server owns it from here and closes it, but never unlinks `socketPath`:
   * the socket file belongs to whoever created it. The lock file is still taken.
   */
  readonly listenFd?: number
  /** Hand-written message handlers from several sources (e.g. `--tag`), merged by `mergeHooks`. */
  readonly hooks?: ReadonlyArray<ConnectionHooks>
  /**
   * How each client's host side is opened; default `localConnector(hostPath)` (a Unix socket to
   * the compositor). With another connector `hostPath` is only a label for logs and `Server`.
   */
  readonly connector?: HostConnector
}

/** One client's host side, as a connector opened it. */
export interface HostSide {
  /** Where the client's requests go and its events come from; the reactor watches `fd` for EPOLLIN. */
  readonly endpoint: Endpoint
  /** Hooks this transport needs for this client; they run before the server-wide `hooks`. */
  readonly hooks?: ConnectionHooks | null
  /** The connection's shadow table allocates host ids itself (the hooks create host objects). */
  readonly mappedIds?: boolean
  /** Called once the client's connection exists (e.g. so the endpoint can end it on a failure). */
  readonly attach?: (conn: Connection) => void
}

/** A client's host side could not be opened: `message` is told to the client, `log` (default: the same) logged. */
export class HostConnectError extends Data.TaggedError("HostConnectError")<{ readonly message: string; readonly log?: string }> {}

/** A host side opened without Effect (`HostConnector.connectSync`), with what closes it. */
export interface OpenedHostSide {
  readonly side: HostSide
  /** Closes what `connectSync` opened; idempotent. */
  readonly release: () => void
}

/**
 * How a client's host side is reached: a Unix socket to the compositor (local mode,
 * `localConnector`) or a cross-domain channel over virtio-gpu (src/transport/crossdomain/).
 * `connect` runs once per client; what it opens is released with the client's scope.
 */
export interface HostConnector {
  /** Where clients are forwarded, for logs, e.g. the compositor's socket path. */
  readonly description: string
  readonly connect: (client: { readonly id: number; readonly limits: ConnectionLimits }) => Effect.Effect<HostSide, HostConnectError, Scope.Scope>
  /**
   * The same without Effect, when opening is plain synchronous work (local mode: socket +
   * connect). With it, and no spans to emit, a client is set up and torn down in plain code
   * from the accept callback: no fiber, scope or span per client (they cost milliseconds of
   * CPU per connection, measured).
   */
  readonly connectSync?: (client: { readonly id: number; readonly limits: ConnectionLimits }) => OpenedHostSide | HostConnectError
}

const hostUnreachable = (hostPath: string, e: SyscallError): HostConnectError =>
  e.code === "EMFILE" || e.code === "ENFILE"
    ? new HostConnectError({
        message: `the proxy is out of file descriptors (${e.code}); try again later`,
        log: `the proxy is out of file descriptors (${e.code}); connected clients are not affected`
      })
    : new HostConnectError({ message: `cannot reach the host compositor at ${hostPath}: ${e.code}`, log: `host compositor unreachable (${e.message})` })

/** Local mode: one connection to the compositor's socket per client; fds pass straight through. */
export const localConnector = (hostPath: string): HostConnector => {
  const connectSync = ({ limits }: { readonly limits: ConnectionLimits }): OpenedHostSide | HostConnectError => {
    const fd = connectUnixSync(hostPath)
    if (fd instanceof SyscallError) return hostUnreachable(hostPath, fd)
    // A small send buffer bounds the requests the compositor has not read yet, so its answers
    // always fit the socket toward us even while we are busy: libwayland-server cuts a client
    // whose events it cannot flush. A client pipelining thousands of requests waits in our
    // queue instead (and is paused at hostBackpressure).
    sys.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, HOST_SNDBUF, 4)
    const endpoint = new SocketEndpoint(fd, { maxPendingBytes: limits.maxHostBacklog })
    return { side: { endpoint }, release: () => endpoint.close() }
  }
  return { description: hostPath, connectSync, connect: scopedConnect(connectSync) }
}

/** `HostConnector.connect` from its plain `connectSync`: what it opened is released with the scope. */
export const scopedConnect =
  (connectSync: NonNullable<HostConnector["connectSync"]>): HostConnector["connect"] =>
  (client) =>
    Effect.acquireRelease(
      Effect.suspend(() => {
        const r = connectSync(client)
        return r instanceof HostConnectError ? Effect.fail(r) : Effect.succeed(r)
      }),
      (r) => Effect.sync(r.release)
    ).pipe(Effect.map((r) => r.side))

/**
 * One `ConnectionHooks` from several. Where two sources hook the same message they run in
 * order: the next one runs only when the previous one forwarded the message unchanged.
 * null when nothing is hooked (the connection's zero-cost default path).
 */
export const mergeHooks = (sources: ReadonlyArray<ConnectionHooks>): ConnectionHooks | null => {
  const merge = (maps: ReadonlyArray<ConnectionHooks["requests"]>): ConnectionHooks["requests"] => {
    const out = new Map<MessageDesc, MessageHook>()
    for (const m of maps) {
      for (const [desc, hook] of m) {
        const prev = out.get(desc)
        const chained: MessageHook = (msg) => {
          const r = prev!(msg)
          return r._tag === "Forward" ? hook(msg) : r
        }
        out.set(desc, prev === undefined ? hook : chained)
      }
    }
    return out
  }
  const requests = merge(sources.map((h) => h.requests))
  const events = merge(sources.map((h) => h.events))
  return requests.size === 0 && events.size === 0 ? null : { requests, events }
}

/** What a running server exposes to its owner (CLI, demo, tests). */
export interface Server {
  readonly socketPath: string
  readonly hostPath: string
  /** Clients connected now. */
  readonly activeClients: () => number
  /** Clients accepted since start. */
  readonly totalClients: () => number
  /** Sum over ended and live connections. */
  readonly stats: () => ConnectionStats
  /** Live connections, for tests and diagnostics. */
  readonly connections: () => ReadonlyArray<Connection>
}

const addStats = (into: ConnectionStats, s: ConnectionStats): void => {
  into.requests += s.requests
  into.events += s.events
  into.requestBytes += s.requestBytes
  into.eventBytes += s.eventBytes
  into.requestFds += s.requestFds
  into.eventFds += s.eventFds
  into.batches += s.batches
  into.copiedBytes += s.copiedBytes
  into.copyCommits += s.copyCommits
}

/**
 * Serve `socketPath` until the scope closes. On close: stop accepting, end every client (each
 * gets a `wl_display.error` saying the proxy is shutting down), remove the socket and the lock.
 */
export const serve = (options: ServeOptions): Effect.Effect<Server, ServeError, Scope.Scope | Reactor | Protocols> =>
  Effect.gen(function* () {
    const reactor = yield* Reactor
    const registry = yield* Protocols
    const limits: ConnectionLimits = { ...defaultLimits, ...options.limits }
    const trace = options.trace ?? null
    const displayError = registry.get("wl_display")?.events[0]
    if (displayError === undefined) return yield* new ServeError({ reason: "Socket", message: "protocol tables lack wl_display" })

    // libwayland's rule: hold `NAME.lock` with flock; a held lock means a live server.
    yield* lockFile(`${options.socketPath}.lock`).pipe(
      Effect.mapError((e) =>
        e.code === "EAGAIN"
          ? new ServeError({ reason: "InUse", message: `${options.socketPath} is in use by another Wayland server (its lock file is held)` })
          : new ServeError({ reason: "Socket", message: `cannot lock ${options.socketPath}.lock: ${e.message}` })
      )
    )
    // Holding the lock, a socket file left behind is stale: replace it (not an activated one).
    if (options.listenFd === undefined && (existsSync(options.socketPath) || isDanglingLink(options.socketPath))) {
      yield* Effect.try({
        try: () => unlinkSync(options.socketPath),
        catch: (e) => new ServeError({ reason: "Socket", message: `cannot remove stale ${options.socketPath}: ${String(e)}` })
      })
      yield* Effect.logInfo(`replaced stale socket ${options.socketPath}`)
    }
    const listenFd =
      options.listenFd !== undefined
        ? yield* Effect.acquireRelease(Effect.succeed(options.listenFd), (fd) => Effect.sync(() => closeFd(fd)))
        : yield* listenUnix(options.socketPath).pipe(
            Effect.mapError((e) => new ServeError({ reason: "Socket", message: `cannot listen on ${options.socketPath}: ${e.message}` }))
          )
    const hooks = mergeHooks(options.hooks ?? [])
    const connector = options.connector ?? localConnector(options.hostPath)

    const live = new Set<Connection>()
    const ended = emptyStats()
    let total = 0
    let nextId = 1

    const fibers = yield* FiberSet.make<void, never>()
    const run = yield* FiberSet.runtime(fibers)<never>()
    const parentSpan = yield* Effect.serviceOption(Tracer.ParentSpan)
    // Batch spans run synchronously on the caller's runtime so they reach its tracer (an OTLP
    // exporter, say); the default runtime's tracer would drop them.
    const runSync = Runtime.runSync(yield* Effect.runtime<never>())

    /**
     * Wires one client to its host side: the Connection and both reactor watches. `onEnded`
     * runs once, after the connection ended (sockets closed, watches gone, stats counted).
     */
    const wire = (
      client: SocketEndpoint,
      side: HostSide,
      id: number,
      onBatch: ConnectionOptions["onBatch"],
      onEnded: (reason: ConnectionEndReason, stats: ConnectionStats) => void
    ): Connection => {
      const host = side.endpoint
      const clientHooks = side.hooks == null ? hooks : mergeHooks([side.hooks, ...(options.hooks ?? [])])
      const watches: Watch[] = []
      const conn: Connection = new Connection(client, host, {
        hooks: clientHooks,
        mappedIds: side.mappedIds === true,
        id,
        registry,
        deniedGlobals: options.deniedGlobals ?? defaultDeniedGlobals,
        limits,
        trace,
        onBatch,
        onEnd: (reason) => {
          // Stop watching before the fds are closed: a closed fd number is soon reused.
          for (const w of watches) w.close()
          watches.length = 0
          live.delete(conn)
          addStats(ended, conn.stats)
          onEnded(reason, conn.stats)
        }
      })
      side.attach?.(conn)
      live.add(conn)

      let clientEvents = EPOLLIN
      let hostEvents = EPOLLIN
      const setClient = (e: number): void => {
        if (e !== clientEvents && !conn.isEnded) {
          clientEvents = e
          clientWatch.setEvents(e)
        }
      }
      const setHost = (e: number): void => {
        if (e !== hostEvents && !conn.isEnded) {
          hostEvents = e
          hostWatch.setEvents(e)
        }
      }
      // After every batch: wait for writability where bytes are queued, and stop reading the
      // client while the compositor is backlogged (the compositor is always read).
      const sync = (): void => {
        if (conn.isEnded) return
        const paused = conn.hostBacklogged
        conn.clientPaused = paused
        setClient((paused ? 0 : EPOLLIN) | (client.pendingBytes > 0 ? EPOLLOUT : 0))
        setHost(EPOLLIN | (host.pendingBytes > 0 ? EPOLLOUT : 0))
      }
      const onReady = (writable: () => void, readable: () => void) => (ev: number): void => {
        if (ev & EPOLLOUT) writable()
        if (conn.isEnded) return
        if (ev & ~EPOLLOUT) readable()
        sync()
      }
      let clientWatch: Watch
      let hostWatch: Watch
      try {
        clientWatch = reactor.watch(client.fd, clientEvents, onReady(() => conn.onClientWritable(), () => conn.onClientReadable()))
        watches.push(clientWatch)
        hostWatch = reactor.watch(host.fd, hostEvents, onReady(() => conn.onHostWritable(), () => conn.onHostReadable()))
        watches.push(hostWatch)
      } catch (e) {
        conn.end({ _tag: "IoError", message: `cannot watch the connection's sockets: ${e instanceof Error ? e.message : String(e)}` })
      }
      return conn
    }

    /** Refuse fast: the client reads why (a wl_display.error) instead of hanging; logged, then held until it hangs up. */
    const refusal = (client: SocketEndpoint, id: number, e: HostConnectError): Effect.Effect<void> =>
      Effect.suspend(() => {
        refuse(client, displayError, `sommelier: ${e.message}`)
        return Effect.logWarning(`client ${id} refused: ${e.log ?? e.message}`).pipe(Effect.zipRight(lingerUntilHangup(reactor, client, 1000)))
      })

    /** The client's set-up and teardown in a scoped fiber with a span: used when spans are wanted or the connector needs Effect. */
    const handleClient = (fd: number, id: number): Effect.Effect<void, never, Scope.Scope> =>
      Effect.gen(function* () {
        const client = yield* Effect.acquireRelease(
          Effect.sync(() => new SocketEndpoint(fd, { maxPendingBytes: limits.maxClientBacklog })),
          (ep) => Effect.sync(() => ep.close())
        )
        const side = yield* Effect.either(connector.connect({ id, limits }))
        if (side._tag === "Left") return yield* refusal(client, id, side.left)
        const done = yield* Deferred.make<ConnectionEndReason>()
        const span = yield* Effect.currentSpan.pipe(Effect.option)
        const onBatch =
          options.batchSpans === true
            ? (info: { direction: string; messages: number; bytes: number; fds: number }) =>
                runSync(
                  Effect.void.pipe(
                    Effect.withSpan("sommelier.batch", {
                      attributes: { "sommelier.client": id, direction: info.direction, messages: info.messages, bytes: info.bytes, fds: info.fds },
                      ...(span._tag === "Some" ? { parent: span.value } : {})
                    })
                  )
                )
            : null
        const conn = wire(client, side.right, id, onBatch, (reason) => Deferred.unsafeDone(done, Exit.succeed(reason)))
        yield* Effect.addFinalizer(() => Effect.sync(() => conn.end({ _tag: "Shutdown" })))
        const reason = yield* Deferred.await(done)
        yield* logEnd(id, reason, conn.stats)
      }).pipe(
        Effect.withSpan("sommelier.connection", {
          attributes: { "sommelier.client": id },
          ...(parentSpan._tag === "Some" ? { parent: parentSpan.value } : {})
        }),
        Effect.annotateLogs({ client: id }),
        Effect.catchAllDefect((d) => Effect.logError(`client ${id} failed`, d))
      )

    /**
     * The same in plain code, from the accept callback (no fiber, scope or span per client):
     * the default when the connector can open the host side synchronously and no tracer wants
     * spans. Only refusals and log lines go through Effect.
     */
    const handleClientPlain = (fd: number, id: number, connectSync: NonNullable<HostConnector["connectSync"]>): void => {
      const client = new SocketEndpoint(fd, { maxPendingBytes: limits.maxClientBacklog })
      let opened: OpenedHostSide | HostConnectError
      try {
        opened = connectSync({ id, limits })
      } catch (e) {
        opened = new HostConnectError({ message: "internal error while opening the host side", log: e instanceof Error ? (e.stack ?? e.message) : String(e) })
      }
      if (opened instanceof HostConnectError) {
        run(refusal(client, id, opened).pipe(Effect.ensuring(Effect.sync(() => client.close())), Effect.annotateLogs({ client: id })), { immediate: true })
        return
      }
      const release = opened.release
      wire(client, opened.side, id, null, (reason, stats) => {
        release()
        runSync(logEnd(id, reason, stats).pipe(Effect.annotateLogs({ client: id })))
      })
    }
    const plainSetup = connector.connectSync !== undefined && options.batchSpans !== true ? connector.connectSync : null
    // Scope close: end the clients set up in plain code (fibers end theirs in their finalizers).
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        for (const c of [...live]) c.end({ _tag: "Shutdown" })
      })
    )

    // Out of fds, accept() fails with EMFILE and leaves the client queued, and the level-triggered
    // listen fd wakes us again at once: a busy loop, and the client hangs. One fd kept in reserve
    // lets us accept it, tell it why and close it; meanwhile (and whenever there is no reserve)
    // accepting pauses, so nothing spins.
    let reserve = openReserve()
    let resume: ReturnType<typeof setTimeout> | null = null
    let stopped = false
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        stopped = true
        if (resume !== null) clearTimeout(resume)
        if (reserve >= 0) closeSync(reserve)
        reserve = -1
      })
    )
    const pauseAccepting = (ms: number): void => {
      listenWatch.setEvents(0)
      resume ??= setTimeout(() => {
        resume = null
        if (!stopped) listenWatch.setEvents(EPOLLIN)
      }, ms)
    }
    const acceptAll = (): void => {
      for (;;) {
        let fd: number
        try {
          fd = acceptUnix(listenFd)
        } catch (e) {
          const code = (e as { code?: string }).code ?? String(e)
          if ((code === "EMFILE" || code === "ENFILE") && reserve >= 0) {
            closeSync(reserve)
            reserve = -1
            let refused = -2
            try {
              refused = acceptUnix(listenFd)
            } catch {
              // Still none free (another thread took it): pause below.
            }
            if (refused >= 0) {
              total++
              // The client reads its error before we close (closing first would reset it);
              // until then there is no reserve, so accepting waits.
              listenWatch.setEvents(0)
              const ep = new SocketEndpoint(refused)
              refuse(ep, displayError, `sommelier: the proxy is out of file descriptors (${code}); try again later`)
              run(
                Effect.logWarning(`client refused: the proxy is out of file descriptors (${code}); connected clients are not affected`).pipe(
                  Effect.zipRight(lingerUntilHangup(reactor, ep, 250)),
                  Effect.ensuring(
                    Effect.sync(() => {
                      ep.close()
                      if (stopped) return
                      reserve = openReserve()
                      if (resume === null) listenWatch.setEvents(EPOLLIN)
                    })
                  )
                )
              )
              return
            }
            reserve = openReserve()
            if (refused === -1) return // the client gave up meanwhile
          }
          run(Effect.logError(`accept failed (${code}): new clients wait until descriptors are free`))
          pauseAccepting(100)
          return
        }
        if (fd < 0) return
        const id = nextId++
        total++
        // immediate: the client's setup (host connection, watches) runs synchronously here, up to
        // the fiber's first wait. Forked the usual way it would wait for the scheduler, and
        // microtasks queued inside a libuv callback only run at Node's next tick: milliseconds.
        if (plainSetup !== null) handleClientPlain(fd, id, plainSetup)
        else run(Effect.scoped(handleClient(fd, id)), { immediate: true })
      }
    }
    const listenWatch = yield* Effect.acquireRelease(
      Effect.sync(() => reactor.watch(listenFd, EPOLLIN, acceptAll)),
      (w) => Effect.sync(() => w.close())
    )

    return {
      socketPath: options.socketPath,
      hostPath: options.hostPath,
      activeClients: () => live.size,
      totalClients: () => total,
      stats: () => {
        const s = emptyStats()
        addStats(s, ended)
        for (const c of live) addStats(s, c.stats)
        return s
      },
      connections: () => [...live]
    } satisfies Server
  })

/**
 * Keeps a refused client's socket open until it hangs up (at most `ms`), discarding what it
 * sends: closing with its requests unread would reset the connection, and a client whose read
 * or write fails (ECONNRESET, EPIPE) never reads the wl_display.error that waits for it.
 */
const lingerUntilHangup = (reactor: ReactorService, client: SocketEndpoint, ms: number): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    let finished = false
    let timer: ReturnType<typeof setTimeout> | null = null
    let watch: Watch | null = null
    const stop = (): void => {
      if (timer !== null) clearTimeout(timer)
      watch?.close()
    }
    const finish = (): void => {
      if (finished) return
      finished = true
      stop()
      resume(Effect.void)
    }
    const drain = (): void => {
      try {
        for (;;) {
          const r = client.fill()
          client.consume(client.inEnd - client.inStart)
          for (let fd = client.inFds.shift(); fd !== undefined; fd = client.inFds.shift()) closeFd(fd)
          if (r === "eof") return finish()
          if (r === "again") return
        }
      } catch {
        finish()
      }
    }
    watch = reactor.watch(client.fd, EPOLLIN, drain)
    timer = setTimeout(finish, ms)
    drain()
    return Effect.sync(stop)
  })

const refuse = (client: SocketEndpoint, errorDesc: MessageDesc, message: string): void => {
  try {
    // wl_display.error(object 1, implementation = 3, message)
    const frame = encodeMessage(1, errorDesc, [1, 3, message], [])
    client.write(frame, 0, frame.length, [])
    client.flush()
  } catch {
    // Best effort: the client is closed right after.
  }
}

/** SO_SNDBUF toward the compositor; the kernel doubles it (32 KiB in flight). Measured: 30 000 pipelined syncs pass at this size, not at twice it. */
const HOST_SNDBUF = new Int32Array([16 * 1024])

/** A spare fd (see acceptAll), or -1 when even that cannot be had. */
const openReserve = (): number => {
  try {
    return openSync("/dev/null", "r")
  } catch {
    return -1
  }
}

const isDanglingLink = (path: string): boolean => {
  try {
    return lstatSync(path).isSymbolicLink()
  } catch {
    return false
  }
}

/** What a connection carried, for its last log line (the bench reads the copy figures from it). */
const summary = (s: ConnectionStats): string =>
  `${s.requests} requests, ${s.events} events, ${s.requestFds + s.eventFds} fds` +
  (s.copyCommits > 0 ? `; ${s.copiedBytes} bytes copied in ${s.copyCommits} commits` : "")

const logEnd = (id: number, reason: ConnectionEndReason, stats: ConnectionStats): Effect.Effect<void> => {
  const carried = summary(stats)
  switch (reason._tag) {
    case "ClientClosed":
      return Effect.logDebug(`client ${id} disconnected (${carried})`)
    case "HostClosed":
      return Effect.logInfo(`client ${id}: the host compositor closed its connection (${carried})`)
    case "ClientViolation":
      return Effect.logWarning(
        `client ${id} cut: protocol error on ${reason.violation.interface}@${reason.violation.objectId} (code ${reason.violation.code}): ${reason.violation.message}`
      )
    case "HostViolation":
      return Effect.logError(`client ${id} cut: the host compositor broke the protocol: ${reason.message}`)
    case "Limit":
      return Effect.logWarning(`client ${id} cut at limit "${reason.limit}": ${reason.message}`)
    case "IoError":
      return Effect.logWarning(`client ${id} ended: ${reason.message}`)
    case "Shutdown":
      return Effect.logDebug(`client ${id} closed at shutdown (${carried})`)
  }
}
