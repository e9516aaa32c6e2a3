/**
 * libuv's uv_poll, called through koffi on the loop Node itself runs (symbols resolved from
 * the node process with `dlopen(NULL)`). Lets Node's own loop watch fds with no thread.
 *
 * Ownership rules this module enforces, because native code keeps raw addresses:
 * - each `uv_poll_t`'s memory (size from `uv_handle_size(UV_POLL)`) stays strongly reachable
 *   from a module-level table until libuv's close callback has run;
 * - a `PollGroup`'s shared poll callback is unregistered only once the group is disposed and
 *   every handle's close callback has run, i.e. never from inside itself (koffi forbids that).
 *
 * Exceptions thrown by a handler would be swallowed by koffi, so `PollGroup` catches them and
 * hands them to `onException` (default: stderr). Callers should still catch their own.
 *
 * Not here: epoll-style events and dispatch to watches (`src/transport/reactor.ts`).
 */
import koffi from "koffi"

const self = koffi.load(null)

const UV_POLL = 8
export const UV_READABLE = 1
export const UV_WRITABLE = 2
export const UV_DISCONNECT = 4
/** libuv's status when an fd reports POLLERR (it stops the handle first). */
export const UV_EBADF = -9

const uv = {
  default_loop: self.func("intptr_t uv_default_loop(void)") as unknown as () => number,
  handle_size: self.func("size_t uv_handle_size(int type)") as unknown as (type: number) => number,
  poll_init: self.func("int uv_poll_init(intptr_t loop, void *handle, int fd)") as unknown as (
    loop: number,
    handle: Uint8Array,
    fd: number
  ) => number,
  poll_start: self.func("int uv_poll_start(void *handle, int events, intptr_t cb)") as unknown as (
    handle: Uint8Array,
    events: number,
    cb: bigint
  ) => number,
  poll_stop: self.func("int uv_poll_stop(void *handle)") as unknown as (handle: Uint8Array) => number,
  close: self.func("void uv_close(void *handle, intptr_t cb)") as unknown as (handle: Uint8Array, cb: bigint) => void,
  strerror: self.func("const char *uv_strerror(int err)") as unknown as (err: number) => string,
  napi_get_uv_event_loop: self.func("int napi_get_uv_event_loop(void *env, _Out_ intptr_t *loop)") as unknown as (
    env: unknown,
    out: Array<number | null>
  ) => number
}

/** The loop of the current Node environment (the worker's own loop inside a worker thread). */
const currentLoop = (): number => {
  const out: Array<number | null> = [null]
  const env = (koffi as unknown as { node?: { env?: unknown } }).node?.env
  if (env !== undefined && uv.napi_get_uv_event_loop(env, out) === 0 && typeof out[0] === "number") return out[0]
  return uv.default_loop()
}

// intptr_t handle: a number, so no BigInt is allocated per callback.
const PollCb = koffi.pointer(koffi.proto("void sommelier_uv_poll_cb(intptr_t handle, int status, int events)"))
const CloseCb = koffi.pointer(koffi.proto("void sommelier_uv_close_cb(intptr_t handle)"))

interface Closing {
  readonly memory: Uint8Array
  /** Runs after libuv's close callback (unregisters what the handle's callback needs). */
  readonly done: () => void
}

/** Handles between uv_close and their close callback, keyed by address: keeps memory alive. */
const closing = new Map<number, Closing>()
let closeCallback: bigint | undefined

const onClosed = (address: number): void => {
  try {
    const entry = closing.get(address)
    if (entry === undefined) return
    closing.delete(address)
    entry.done()
  } catch (error) {
    process.stderr.write(`sommelier: uv close callback failed: ${String(error)}\n`)
  }
}

/** uv_close(memory) with our close callback; `done` runs once libuv has let go of the memory. */
const closeHandle = (memory: Uint8Array, address: number, done: () => void): void => {
  closeCallback ??= koffi.register(onClosed, CloseCb)
  closing.set(address, { memory, done })
  uv.close(memory, closeCallback)
}

const defaultOnException = (error: unknown): void => {
  process.stderr.write(`sommelier: uncaught exception in uv_poll callback: ${describe(error)}\n`)
}

const describe = (error: unknown): string =>
  error instanceof Error ? (error.stack ?? error.message) : String(error)

export class UvError extends Error {
  constructor(
    readonly call: string,
    readonly status: number
  ) {
    super(`${call}: ${uv.strerror(status)} (${status})`)
  }
}

/**
 * Many uv_poll_t handles, one per fd, sharing one registered callback that dispatches by the
 * handle's address: libuv's own epoll reports each fd, so a wake-up costs no second
 * `epoll_wait` (the reactor's hot path), and a handle costs no koffi trampoline of its own.
 * The shared callback is unregistered once the group is disposed and every handle's close
 * callback has run.
 */
export class PollGroup {
  readonly #handlers = new Map<number, (status: number, events: number) => void>()
  readonly #onException: (error: unknown) => void
  #callback: bigint | null
  /** Handles opened and not yet through their close callback. */
  #handles = 0
  #disposed = false

  constructor(onException = defaultOnException) {
    this.#onException = onException
    this.#callback = koffi.register((handle: number, status: number, events: number) => {
      const handler = this.#handlers.get(handle)
      if (handler === undefined) return
      try {
        handler(status, events)
      } catch (error) {
        try {
          this.#onException(error)
        } catch (again) {
          defaultOnException(again)
        }
      }
    }, PollCb)
  }

  /** A handle watching `fd`, not started. Throws UvError (UV_EEXIST: libuv already watches this fd number). */
  open(fd: number, onPoll: (status: number, events: number) => void): GroupPoll {
    if (this.#disposed || this.#callback === null) throw new UvError("uv_poll_init", UV_EBADF)
    const memory = new Uint8Array(new ArrayBuffer(uv.handle_size(UV_POLL)))
    const address = Number(koffi.address(memory))
    const init = uv.poll_init(currentLoop(), memory, fd)
    if (init !== 0) throw new UvError("uv_poll_init", init)
    this.#handles++
    this.#handlers.set(address, onPoll)
    return new GroupPoll(memory, this.#callback, () => {
      this.#handlers.delete(address)
      closeHandle(memory, address, () => {
        this.#handles--
        this.#release()
      })
    })
  }

  /** No more handles; the callback goes once the open ones are closed. Idempotent. */
  dispose(): void {
    this.#disposed = true
    this.#release()
  }

  #release(): void {
    if (this.#disposed && this.#handles === 0 && this.#callback !== null) {
      koffi.unregister(this.#callback)
      this.#callback = null
    }
  }
}

/** One fd's handle in a `PollGroup`. */
export class GroupPoll {
  readonly #memory: Uint8Array
  readonly #callback: bigint
  readonly #close: () => void
  #closed = false

  constructor(memory: Uint8Array, callback: bigint, close: () => void) {
    this.#memory = memory
    this.#callback = callback
    this.#close = close
  }

  get closed(): boolean {
    return this.#closed
  }

  /** uv_poll_start with UV_READABLE/UV_WRITABLE bits (0 stops). Returns the libuv status. */
  start(events: number): number {
    if (this.#closed) return UV_EBADF
    return events === 0 ? uv.poll_stop(this.#memory) : uv.poll_start(this.#memory, events, this.#callback)
  }

  /** uv_poll_stop + uv_close; safe inside the callback. The memory lives until the close callback. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    uv.poll_stop(this.#memory)
    this.#close()
  }
}

/** Handles still waiting for their close callback (for tests). */
export const pendingCloses = (): number => closing.size
