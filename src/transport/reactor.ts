/**
 * The reactor: fd readiness through Node's own libuv loop, one uv_poll handle per watched fd
 * (libuv's epoll, no thread, no timer, no polling: idle CPU is 0). libuv calls back per ready
 * fd and the reactor calls that watch's `onReady(events)` synchronously, with epoll-style bits
 * (EPOLLIN, EPOLLOUT, EPOLLRDHUP; EPOLLERR|EPOLLHUP plus the watched bits when the fd reports
 * an error). All handles share one koffi callback (src/ffi/uv.ts `PollGroup`).
 *
 * Why not one epoll set of our own watched through one uv handle (the first design): every
 * wake-up then cost a second `epoll_wait` through koffi on top of libuv's, two per proxied
 * round trip; per-fd handles let libuv's wait be the only one.
 *
 * Exceptions: an exception escaping `onReady` closes that watch (a throwing handler on a
 * level-triggered fd would otherwise spin) and is passed to `onError(fd, error)` (default:
 * stderr). Nothing is swallowed: koffi would drop an exception leaving the callback.
 *
 * Loop liveness: a watch keeps Node's loop alive while it waits for events (libuv's rule for
 * an active handle); a watch with no events (`setEvents(0)`) does not, and after the scope
 * closes nothing is left.
 *
 * Ordering rule for users: close a watch before closing its fd (fd numbers are reused at
 * once). A watch whose fd was closed first is recognised as stale (by the file's identity) when
 * its fd number is watched again, and dropped.
 *
 * Promise jobs and nextTicks queued by a handler run right after the uv callback returns
 * (observed on Node 20, not documented: the callback is not inside a Node callback scope), so a
 * handler may resume an Effect fiber (`Effect.async`'s resume) directly.
 *
 * Not here: reading or writing sockets (`socket.ts`), the proxy's per-connection logic.
 */
import { Context, Effect, Layer, Scope } from "effect"
import { SyscallError, syscallError, Errno } from "../ffi/errno.js"
import { sys, STAT_SIZE } from "../ffi/libc.js"
import { PollGroup, UvError, UV_DISCONNECT, UV_READABLE, UV_WRITABLE, type GroupPoll } from "../ffi/uv.js"

export const EPOLLIN = 0x001
export const EPOLLOUT = 0x004
export const EPOLLERR = 0x008
export const EPOLLHUP = 0x010
export const EPOLLRDHUP = 0x2000

export interface Watch {
  readonly fd: number
  /** Changes the events watched; a no-op when unchanged or closed. 0 keeps the watch but silent. */
  setEvents(events: number): void
  /** Stops watching; does NOT close the fd. Idempotent. */
  close(): void
}

export interface ReactorService {
  /** Watches `fd`. Throws `SyscallError` (EEXIST if `fd` is already watched, EBADF if it is not open). */
  watch(fd: number, events: number, onReady: (events: number) => void): Watch
  readonly watches: number
}

export class Reactor extends Context.Tag("sommelier/Reactor")<Reactor, ReactorService>() {}

export interface ReactorOptions {
  /** Called after an exception escaped a watch's `onReady`; the watch is already closed. */
  readonly onError?: (fd: number, error: unknown) => void
}

const describe = (error: unknown): string =>
  error instanceof Error ? (error.stack ?? error.message) : String(error)

const defaultOnError = (fd: number, error: unknown): void => {
  process.stderr.write(`sommelier: reactor: handler for fd ${fd} threw; watch closed: ${describe(error)}\n`)
}

const toUv = (events: number): number =>
  (events & EPOLLIN ? UV_READABLE : 0) | (events & EPOLLOUT ? UV_WRITABLE : 0) | (events & EPOLLRDHUP ? UV_DISCONNECT : 0)

interface Entry {
  readonly fd: number
  /** The file behind `fd` when it was watched (st_dev, st_ino): tells a stale watch from a live one. */
  readonly dev: bigint
  readonly ino: bigint
  events: number
  readonly onReady: (events: number) => void
  closed: boolean
  poll: GroupPoll | null
}

class ReactorImpl implements ReactorService {
  readonly #onError: (fd: number, error: unknown) => void
  readonly #group: PollGroup
  readonly #byFd = new Map<number, Entry>()
  readonly #stat = new BigUint64Array(STAT_SIZE / 8)
  #closed = false

  constructor(onError: (fd: number, error: unknown) => void) {
    this.#onError = onError
    this.#group = new PollGroup((error) => this.#report(-1, error))
  }

  get watches(): number {
    return this.#byFd.size
  }

  watch(fd: number, events: number, onReady: (events: number) => void): Watch {
    if (this.#closed) throw syscallError("watch", Errno.EBADF, "reactor is closed")
    const st = this.#stat
    const r = sys.fstat(fd, st)
    if (r < 0) throw syscallError("fstat", -r, `watch fd ${fd}`)
    const dev = st[0]!
    const ino = st[1]!
    const existing = this.#byFd.get(fd)
    if (existing !== undefined) {
      if (existing.dev === dev && existing.ino === ino) throw syscallError("watch", Errno.EEXIST, `fd ${fd} is already watched`)
      // Its fd was closed before the watch and the number reused: that watch is dead.
      this.#remove(existing)
    }
    const entry: Entry = { fd, dev, ino, events, onReady, closed: false, poll: null }
    let poll: GroupPoll
    try {
      poll = this.#group.open(fd, (status, uvEvents) => this.#dispatch(entry, status, uvEvents))
    } catch (e) {
      if (e instanceof UvError) throw syscallError("uv_poll_init", -e.status, `watch fd ${fd}: ${e.message}`)
      throw e
    }
    entry.poll = poll
    const started = poll.start(toUv(events))
    if (started !== 0) {
      poll.close()
      throw syscallError("uv_poll_start", -started, `watch fd ${fd}`)
    }
    this.#byFd.set(fd, entry)
    return {
      fd,
      setEvents: (next: number) => {
        if (entry.closed || next === entry.events) return
        const status = poll.start(toUv(next))
        if (status !== 0) throw syscallError("uv_poll_start", -status, `change the events of fd ${fd}`)
        entry.events = next
      },
      close: () => this.#remove(entry)
    }
  }

  #dispatch(entry: Entry, status: number, uvEvents: number): void {
    if (entry.closed || this.#closed) return
    // On POLLERR libuv stops the handle and reports a status instead of events.
    const events =
      status < 0
        ? EPOLLERR | EPOLLHUP | entry.events
        : (uvEvents & UV_READABLE ? EPOLLIN : 0) | (uvEvents & UV_WRITABLE ? EPOLLOUT : 0) | (uvEvents & UV_DISCONNECT ? EPOLLRDHUP : 0)
    try {
      entry.onReady(events)
    } catch (error) {
      this.#remove(entry)
      this.#report(entry.fd, error)
      return
    }
    // Level-triggered like epoll: a watch left open after an error keeps being told.
    if (status < 0 && !entry.closed && !this.#closed) entry.poll?.start(toUv(entry.events))
  }

  #remove(entry: Entry): void {
    if (entry.closed) return
    entry.closed = true
    if (this.#byFd.get(entry.fd) === entry) this.#byFd.delete(entry.fd)
    entry.poll?.close()
  }

  #report(fd: number, error: unknown): void {
    try {
      this.#onError(fd, error)
    } catch (again) {
      defaultOnError(fd, again)
    }
  }

  /** Finalizer: close every handle (libuv frees them in its close callbacks), then the shared callback. */
  shutdown(): void {
    if (this.#closed) return
    this.#closed = true
    for (const entry of [...this.#byFd.values()]) this.#remove(entry)
    this.#group.dispose()
  }
}

/** A reactor whose lifetime is the scope. */
export const makeWith = (options: ReactorOptions = {}): Effect.Effect<ReactorService, SyscallError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => new ReactorImpl(options.onError ?? defaultOnError),
      catch: (error) => (error instanceof SyscallError ? error : syscallError("uv_poll_init", Errno.EINVAL, describe(error)))
    }),
    (reactor) => Effect.sync(() => reactor.shutdown())
  )

export const make: Effect.Effect<ReactorService, SyscallError, Scope.Scope> = makeWith()

export const layer: Layer.Layer<Reactor, SyscallError> = Layer.scoped(Reactor, make)

export const layerWith = (options: ReactorOptions): Layer.Layer<Reactor, SyscallError> =>
  Layer.scoped(Reactor, makeWith(options))
