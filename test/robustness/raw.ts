/**
 * A raw Wayland client that can pass fds: the transport's `SocketEndpoint` on a socket connected
 * to the proxy, read through the same reactor the in-process proxy uses. Requests are bytes
 * (plus fds, owned by the client once handed over); events are parsed into frames with
 * test/e2e/raw-client.ts's parser, and fds that arrive with them are closed at once.
 *
 * It knows no protocol beyond framing; replay.ts drives it with captured traffic.
 */
import { Effect, type Scope } from "effect"
import { EPOLLIN, EPOLLOUT, type ReactorService } from "../../src/transport/reactor.js"
import { closeFd, connectUnix, SocketEndpoint } from "../../src/transport/socket.js"
import { parseMessages, type RawMessage } from "../e2e/raw-client.js"

export class FdClient {
  readonly messages: RawMessage[] = []
  eof = false
  /** fds that arrived with events (each closed at once). */
  fdsReceived = 0
  private readonly waiters = new Set<() => void>()
  private readonly watch
  private closed = false
  private paused = false

  constructor(
    readonly endpoint: SocketEndpoint,
    reactor: ReactorService
  ) {
    this.watch = reactor.watch(endpoint.fd, EPOLLIN, (ev) => this.onReady(ev))
  }

  private onReady(ev: number): void {
    if (this.closed) return
    let writeFailed = false
    if (ev & EPOLLOUT) {
      try {
        this.endpoint.flush()
      } catch {
        // EPIPE: the proxy cut us; what it sent before is still to be read.
        writeFailed = true
      }
    }
    if (ev & ~EPOLLOUT || writeFailed) {
      try {
        for (;;) {
          const r = this.endpoint.fill()
          this.take()
          if (r === "eof") this.finish()
          if (r !== "data" || !writeFailed) break
        }
      } catch {
        // ECONNRESET and friends: the proxy cut us.
        this.take()
        this.finish()
      }
    }
    this.rearm()
    for (const w of [...this.waiters]) w()
  }

  private rearm(): void {
    if (!this.eof && !this.closed) this.watch.setEvents((this.paused ? 0 : EPOLLIN) | (this.endpoint.pendingBytes > 0 ? EPOLLOUT : 0))
  }

  /** Stop reading (a client that does not read its events); writes still flush. */
  pause(): void {
    this.paused = true
    this.rearm()
  }

  resume(): void {
    this.paused = false
    this.rearm()
  }

  private take(): void {
    const ep = this.endpoint
    const r = parseMessages(Buffer.from(ep.inBuf.buffer, ep.inBuf.byteOffset + ep.inStart, ep.inEnd - ep.inStart))
    for (const m of r.messages) this.messages.push({ ...m, body: Buffer.from(m.body) })
    ep.consume(ep.inEnd - ep.inStart - r.rest.length)
    for (let fd = ep.inFds.shift(); fd !== undefined; fd = ep.inFds.shift()) {
      this.fdsReceived++
      closeFd(fd)
    }
  }

  private finish(): void {
    if (this.eof) return
    this.eof = true
    this.watch.setEvents(0)
  }

  /** Sends bytes with fds (the endpoint owns the fds from here). false once the proxy is gone. */
  send(bytes: Uint8Array, fds: readonly number[] = []): boolean {
    if (this.closed || this.eof) {
      for (const fd of fds) closeFd(fd)
      return false
    }
    try {
      const r = this.endpoint.write(bytes, 0, bytes.length, fds)
      if (r === "queued") this.rearm()
      return r !== "overflow"
    } catch {
      return false
    }
  }

  /** Resolves true once `cond()` holds, false at EOF (when it does not) or after `timeoutMs`. */
  waitFor(cond: () => boolean, timeoutMs = 5000): Effect.Effect<boolean> {
    return Effect.async<boolean>((resume) => {
      if (cond()) return resume(Effect.succeed(true))
      if (this.eof) return resume(Effect.succeed(false))
      const check = (): void => {
        if (cond()) done(true)
        else if (this.eof) done(false)
      }
      const timer = setTimeout(() => done(false), timeoutMs)
      const done = (v: boolean): void => {
        clearTimeout(timer)
        this.waiters.delete(check)
        resume(Effect.succeed(v))
      }
      this.waiters.add(check)
      return Effect.sync(() => {
        clearTimeout(timer)
        this.waiters.delete(check)
      })
    })
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.watch.close()
    this.endpoint.close()
  }
}

/** Connects to `path`; the client is closed when the scope closes. */
export const connectFdClient = (path: string, reactor: ReactorService, maxPendingBytes = 64 * 1024 * 1024): Effect.Effect<FdClient, Error, Scope.Scope> =>
  Effect.acquireRelease(
    connectUnix(path).pipe(
      Effect.mapError((e) => new Error(`cannot connect to ${path}: ${e.message}`)),
      Effect.map((fd) => new FdClient(new SocketEndpoint(fd, { maxPendingBytes }), reactor))
    ),
    (c) => Effect.sync(() => c.close())
  )

/** `wl_display.error` frames among `messages` (object 1, opcode 0). */
export const displayErrors = (messages: ReadonlyArray<RawMessage>): RawMessage[] => messages.filter((m) => m.objectId === 1 && m.opcode === 0)
