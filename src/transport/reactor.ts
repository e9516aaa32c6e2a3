/**
 * The reactor: one level-triggered epoll set per process, watched by Node's own libuv loop
 * through one uv_poll handle on the epoll fd (no thread, no timer, no polling: idle CPU is 0).
 * When the epoll fd is readable, the uv callback drains `epoll_wait(epfd, events, 64, 0)` and
 * calls each watch's `onReady(events)` synchronously.
 *
 * Exceptions: an exception escaping `onReady` closes that watch (a throwing handler on a
 * level-triggered fd would otherwise spin) and is passed to `onError(fd, error)` (default:
 * stderr). Nothing is swallowed: koffi would drop an exception leaving the callback.
 *
 * Loop liveness: the uv handle keeps Node's loop alive exactly while at least one watch is
 * registered (uv_ref/uv_unref on the 0↔1 transitions), like any libuv handle with work; an
 * idle reactor with no watch never holds the process, and after the scope closes nothing is left.
 *
 * Ordering rule for users: close a watch before closing its fd (epoll forgets a closed fd only
 * when no duplicate of it exists, and fd numbers are reused at once).
 *
 * Promise jobs and nextTicks queued by a handler run right after the uv callback returns
 * (observed on Node 20, not documented: the callback is not inside a Node callback scope), so a
 * handler may resume an Effect fiber (`Effect.async`'s resume) directly.
 *
 * Not here: reading or writing sockets (`socket.ts`), the proxy's per-connection logic.
 */
import { Context, Effect, Layer, Scope } from "effect"
import { SyscallError, syscallError, check, Errno } from "../ffi/errno.js"
import {
  sys,
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLL_EVENT_SIZE,
  EPOLL_EVENT_DATA_OFFSET
} from "../ffi/libc.js"
import { PollHandle } from "../ffi/uv.js"

export const EPOLLIN = 0x001
export const EPOLLOUT = 0x004
export const EPOLLERR = 0x008
export const EPOLLHUP = 0x010
export const EPOLLRDHUP = 0x2000

export interface Watch {
  readonly fd: number
  /** EPOLL_CTL_MOD; a no-op when unchanged or closed. 0 keeps the fd registered but silent. */
  setEvents(events: number): void
  /** Removes the fd from epoll; does NOT close the fd. Idempotent. */
  close(): void
}

export interface ReactorService {
  /** Registers `fd` (EPOLL_CTL_ADD). Throws `SyscallError` (EEXIST if `fd` is already watched). */
  watch(fd: number, events: number, onReady: (events: number) => void): Watch
  readonly watches: number
}

export class Reactor extends Context.Tag("sommelier/Reactor")<Reactor, ReactorService>() {}

export interface ReactorOptions {
  /** Called after an exception escaped a watch's `onReady`; the watch is already closed. */
  readonly onError?: (fd: number, error: unknown) => void
}

const MAX_EVENTS = 64
/** Batches of 64 drained per uv wake-up before yielding back to Node (fairness). */
const MAX_ROUNDS = 16

const describe = (error: unknown): string =>
  error instanceof Error ? (error.stack ?? error.message) : String(error)

const defaultOnError = (fd: number, error: unknown): void => {
  process.stderr.write(`sommelier: reactor: handler for fd ${fd} threw; watch closed: ${describe(error)}\n`)
}

interface Entry {
  readonly id: number
  readonly fd: number
  events: number
  readonly onReady: (events: number) => void
  closed: boolean
}

class ReactorImpl implements ReactorService {
  readonly #epfd: number
  readonly #onError: (fd: number, error: unknown) => void
  readonly #poll: PollHandle
  // Off-heap memory (never moved by the GC); the kernel writes packed epoll_events here.
  readonly #events = new ArrayBuffer(MAX_EVENTS * EPOLL_EVENT_SIZE)
  readonly #eventWords = new Uint32Array(this.#events)
  readonly #ctl = new Uint32Array(new ArrayBuffer(16))
  readonly #byId = new Map<number, Entry>()
  readonly #byFd = new Map<number, Entry>()
  #nextId = 1
  #closed = false
  #stray = 0

  constructor(epfd: number, onError: (fd: number, error: unknown) => void) {
    this.#epfd = epfd
    this.#onError = onError
    this.#poll = new PollHandle(epfd, (status) => this.#onPoll(status), (error) => this.#report(-1, error))
    this.#poll.unref()
  }

  get watches(): number {
    return this.#byId.size
  }

  watch(fd: number, events: number, onReady: (events: number) => void): Watch {
    if (this.#closed) throw syscallError("epoll_ctl", Errno.EBADF, "reactor is closed")
    // epoll data carries a watch id, not the fd: an event already fetched for a watch closed
    // earlier in the same batch must not reach a new watch that reuses the fd number.
    let id = this.#nextId
    while (this.#byId.has(id)) id = (id + 1) >>> 0 || 1
    this.#nextId = (id + 1) >>> 0 || 1
    check("epoll_ctl", this.#ctlOp(EPOLL_CTL_ADD, fd, events, id), `add fd ${fd}`)
    const entry: Entry = { id, fd, events, onReady, closed: false }
    // A registration for a closed-and-reused fd number was dropped by the kernel with the fd.
    const stale = this.#byFd.get(fd)
    if (stale !== undefined) this.#forget(stale)
    this.#byId.set(id, entry)
    this.#byFd.set(fd, entry)
    if (this.#byId.size === 1) this.#poll.ref()
    return {
      fd,
      setEvents: (next: number) => {
        if (entry.closed || next === entry.events) return
        check("epoll_ctl", this.#ctlOp(EPOLL_CTL_MOD, fd, next, id), `modify fd ${fd}`)
        entry.events = next
      },
      close: () => this.#remove(entry)
    }
  }

  #ctlOp(op: number, fd: number, events: number, id: number): number {
    const w = this.#ctl
    if (EPOLL_EVENT_DATA_OFFSET === 4) {
      w[0] = events
      w[1] = id
      w[2] = 0
    } else {
      w[0] = events
      w[2] = id
      w[3] = 0
    }
    return sys.epoll_ctl(this.#epfd, op, fd, w)
  }

  #forget(entry: Entry): void {
    entry.closed = true
    this.#byId.delete(entry.id)
    if (this.#byFd.get(entry.fd) === entry) this.#byFd.delete(entry.fd)
    if (this.#byId.size === 0 && !this.#closed) this.#poll.unref()
  }

  #remove(entry: Entry): void {
    if (entry.closed) return
    const current = this.#byFd.get(entry.fd) === entry
    this.#forget(entry)
    // Only DEL our own registration; ENOENT/EBADF mean the fd was closed first (kernel dropped it).
    if (current && !this.#closed) sys.epoll_ctl(this.#epfd, EPOLL_CTL_DEL, entry.fd, this.#ctl)
  }

  #report(fd: number, error: unknown): void {
    try {
      this.#onError(fd, error)
    } catch (again) {
      defaultOnError(fd, again)
    }
  }

  #onPoll(status: number): void {
    if (this.#closed) return
    if (status < 0) {
      this.#report(this.#epfd, new Error(`uv_poll on the epoll fd failed with libuv status ${status}`))
      return
    }
    const words = this.#eventWords
    const stride = EPOLL_EVENT_SIZE >>> 2
    const dataWord = EPOLL_EVENT_DATA_OFFSET >>> 2
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const n = sys.epoll_wait(this.#epfd, words, MAX_EVENTS, 0)
      if (n < 0) {
        if (n === -Errno.EINTR) continue
        this.#report(this.#epfd, syscallError("epoll_wait", -n))
        return
      }
      for (let i = 0; i < n; i++) {
        const entry = this.#byId.get(words[i * stride + dataWord]!)
        if (entry === undefined || entry.closed) {
          // Normal when a watch was closed earlier in this batch. Endless when an fd was closed
          // before its watch while a duplicate keeps the file open: epoll then reports a
          // registration nobody can remove, and the process spins. Say so once.
          if (++this.#stray === 100_000)
            this.#report(-1, new Error("reactor: 100000 events for closed watches; an fd was probably closed before its watch while a duplicate of it is still open"))
          continue
        }
        try {
          entry.onReady(words[i * stride]!)
        } catch (error) {
          this.#remove(entry)
          this.#report(entry.fd, error)
        }
        if (this.#closed) return
      }
      if (n < MAX_EVENTS) return
    }
  }

  /** Finalizer: stop and close the uv handle (its memory and callback are released by libuv's close callback), then the epoll fd. */
  shutdown(): void {
    if (this.#closed) return
    this.#closed = true
    for (const entry of this.#byId.values()) entry.closed = true
    this.#byId.clear()
    this.#byFd.clear()
    this.#poll.close()
    sys.close(this.#epfd)
  }
}

/** A reactor whose lifetime is the scope. */
export const makeWith = (options: ReactorOptions = {}): Effect.Effect<ReactorService, SyscallError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      const epfd = sys.epoll_create1(EPOLL_CLOEXEC)
      if (epfd < 0) return Effect.fail(syscallError("epoll_create1", -epfd))
      return Effect.try({
        try: () => new ReactorImpl(epfd, options.onError ?? defaultOnError),
        catch: (error) => {
          sys.close(epfd)
          return error instanceof SyscallError
            ? error
            : syscallError("uv_poll_init", Errno.EINVAL, describe(error))
        }
      })
    }),
    (reactor) => Effect.sync(() => reactor.shutdown())
  )

export const make: Effect.Effect<ReactorService, SyscallError, Scope.Scope> = makeWith()

export const layer: Layer.Layer<Reactor, SyscallError> = Layer.scoped(Reactor, make)

export const layerWith = (options: ReactorOptions): Layer.Layer<Reactor, SyscallError> =>
  Layer.scoped(Reactor, makeWith(options))
