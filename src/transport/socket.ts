/**
 * Non-blocking AF_UNIX stream sockets with fd passing (SCM_RIGHTS), plus the listen / connect /
 * accept / lock-file helpers a Wayland server needs.
 *
 * `SocketEndpoint` owns one socket fd and every fd it holds: received fds until they are shifted
 * off `inFds`, and fds given to `write` until they are sent. It uses preallocated msghdr, iovec
 * and control buffers (raw memory, no koffi structs) and makes no Effect step per call: it is the
 * data path. It knows nothing of Wayland framing and nothing of the reactor; the caller watches
 * `fd` and calls `fill()` on EPOLLIN and `flush()` on EPOLLOUT.
 *
 * Layouts (LP64 Linux): msghdr {name@0, namelen@8, iov@16, iovlen@24, control@32,
 * controllen@40, flags@48}; iovec {base@0, len@8}; cmsghdr {len@0 (size_t), level@8, type@12,
 * data@16}; CMSG_SPACE(n) = 16 + align8(n).
 */
import { Data, Effect, Scope } from "effect"
import { Errno, SyscallError, syscallError } from "../ffi/errno.js"
import {
  sys,
  addressOf,
  AF_UNIX,
  SOCK_STREAM,
  SOCK_NONBLOCK,
  SOCK_CLOEXEC,
  MSG_CMSG_CLOEXEC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  MSG_CTRUNC,
  SOL_SOCKET,
  SCM_RIGHTS,
  O_CREAT,
  O_CLOEXEC,
  O_RDWR,
  LOCK_EX,
  LOCK_NB
} from "../ffi/libc.js"

export class TransportError extends Data.TaggedError("TransportError")<{
  readonly reason: "Closed" | "Truncated" | "Overflow" | "Syscall"
  readonly message: string
}> {}

/** libwayland's limit per sendmsg (MAX_FDS_OUT); receivers size their control buffer for it. */
export const MAX_FDS_PER_SENDMSG = 28

/** Close an fd we own; errors are ignored (used on drop and teardown paths). */
export const closeFd = (fd: number): void => {
  sys.close(fd)
}

/** Received fds in arrival order. */
export class FdQueue {
  #buf = new Int32Array(16)
  #head = 0
  #length = 0

  push(fd: number): void {
    if (this.#length === this.#buf.length) {
      const next = new Int32Array(this.#buf.length * 2)
      for (let i = 0; i < this.#length; i++) next[i] = this.#buf[(this.#head + i) & (this.#buf.length - 1)]!
      this.#buf = next
      this.#head = 0
    }
    this.#buf[(this.#head + this.#length) & (this.#buf.length - 1)] = fd
    this.#length++
  }

  shift(): number | undefined {
    if (this.#length === 0) return undefined
    const fd = this.#buf[this.#head]!
    this.#head = (this.#head + 1) & (this.#buf.length - 1)
    this.#length--
    return fd
  }

  get length(): number {
    return this.#length
  }

  closeAll(): void {
    for (let fd = this.shift(); fd !== undefined; fd = this.shift()) sys.close(fd)
  }
}

export type FillResult = "data" | "again" | "eof"
export type WriteResult = "sent" | "queued" | "overflow"

export interface SocketEndpointOptions {
  /** Initial receive buffer size (default 4 KiB); it doubles when a read fills it, up to 256 KiB, and beyond that only for a message larger than the buffer. */
  readonly inputCapacity?: number
  /** Bound on bytes queued for output; see `write`. Default 4 MiB. */
  readonly maxPendingBytes?: number
}

const CONTROL_SIZE = 16 + MAX_FDS_PER_SENDMSG * 4 // CMSG_SPACE(4·28) = 128
// One header block per direction: msghdr @0, iovec @64, control @128.
const BLOCK = 256
/** Reads grow the input buffer up to this; beyond, a full buffer waits for the caller. */
const MAX_INPUT_CAPACITY = 256 * 1024
const IOV = 64
const CONTROL = 128
const TWO32 = 4294967296

/** A queued fd batch: sent with the byte at stream position `pos`. */
interface FdBatch {
  readonly pos: number
  readonly fds: number[]
}

const closeRange = (fds: readonly number[], from: number, to = fds.length): void => {
  for (let i = from; i < to; i++) sys.close(fds[i]!)
}

export class SocketEndpoint {
  readonly fd: number
  /** Unconsumed received bytes are `inBuf[inStart, inEnd)`. Re-read after `fill()`: it may be replaced when it grows. */
  inBuf: Uint8Array
  inStart = 0
  inEnd = 0
  readonly inFds = new FdQueue()

  readonly #maxPending: number
  // Native-referenced memory: off-heap ArrayBuffers, owned by this object for its whole life.
  readonly #hdr = new ArrayBuffer(2 * BLOCK)
  readonly #words = new Uint32Array(this.#hdr)
  readonly #ints = new Int32Array(this.#hdr)
  // Both msghdrs live in #hdr (off-heap, never moved); the syscalls take their addresses.
  readonly #recvMsgAddr: number
  readonly #sendMsgAddr: number
  #inAddr: number

  // Output queue: bytes out[outStart, outEnd); stream position of out[outStart] is outPos.
  #out: Uint8Array | null = null
  #outAddr = 0
  #outStart = 0
  #outEnd = 0
  #outPos = 0
  readonly #outFds: FdBatch[] = []

  // Address cache for the caller's buffer in the direct write path.
  #lastBuffer: ArrayBufferLike | null = null
  #lastBufferAddr = 0

  #closed = false

  constructor(fd: number, options?: SocketEndpointOptions) {
    this.fd = fd
    this.#maxPending = options?.maxPendingBytes ?? 4 * 1024 * 1024
    // Start small: most connections carry a few KB per wake-up, and a 64 KiB external buffer per
    // socket made V8 collect garbage on every few accepts (≈1 ms per connect in the bench's
    // profile). `fill` doubles the buffer when a read fills it, up to MAX_INPUT_CAPACITY.
    this.inBuf = new Uint8Array(new ArrayBuffer(Math.max(16, options?.inputCapacity ?? 4096)))
    this.#inAddr = addressOf(this.inBuf)
    const base = addressOf(this.#words)
    this.#recvMsgAddr = base
    this.#sendMsgAddr = base + BLOCK
    for (const block of [0, BLOCK]) {
      const w = (block >>> 2) as number
      // msg_iov, msg_iovlen = 1, msg_control; name stays NULL.
      this.#setPtr(w + 4, base + block + IOV)
      this.#words[w + 6] = 1
      this.#setPtr(w + 8, base + block + CONTROL)
    }
  }

  get closed(): boolean {
    return this.#closed
  }

  get pendingBytes(): number {
    return this.#outEnd - this.#outStart
  }

  #setPtr(word: number, value: number): void {
    this.#words[word] = value % TWO32
    this.#words[word + 1] = Math.floor(value / TWO32)
  }

  /**
   * Read until EAGAIN or the buffer is full. "data": new bytes (and maybe fds) arrived;
   * "again": nothing to read; "eof": the peer closed and nothing new was read.
   * Throws SyscallError on socket errors (ECONNRESET…), TransportError "Truncated" when the
   * kernel dropped fds (MSG_CTRUNC; fds that did arrive are in `inFds`), "Closed" after close().
   */
  fill(): FillResult {
    if (this.#closed) throw new TransportError({ reason: "Closed", message: "fill on a closed endpoint" })
    this.#makeRoom()
    const w = this.#words
    let got = false
    for (;;) {
      let space = this.inBuf.length - this.inEnd
      if (space === 0) {
        if (this.inBuf.length >= MAX_INPUT_CAPACITY) return "data"
        this.#grow()
        space = this.inBuf.length - this.inEnd
      }
      this.#setPtr(IOV >>> 2, this.#inAddr + this.inEnd)
      this.#setPtr((IOV >>> 2) + 2, space)
      w[10] = CONTROL_SIZE // msg_controllen
      w[11] = 0
      w[12] = 0 // msg_flags
      const n = sys.recvmsgAt(this.fd, this.#recvMsgAddr, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)
      if (n > 0) {
        this.inEnd += n
        got = true
        const fds = w[10]! > 0 ? this.#takeFds() : 0
        if (w[12]! & MSG_CTRUNC)
          throw new TransportError({
            reason: "Truncated",
            message: `recvmsg: control data truncated (MSG_CTRUNC): the peer sent more than ${MAX_FDS_PER_SENDMSG} fds in one message; some were lost`
          })
        // A short read without fds means the queue is empty; level-triggered epoll reports any later data.
        if (n < space && fds === 0) return "data"
        continue
      }
      if (n === 0) return got ? "data" : "eof"
      if (n === -Errno.EAGAIN) return got ? "data" : "again"
      if (n === -Errno.EINTR) continue
      throw syscallError("recvmsg", -n, `fd ${this.fd}`)
    }
  }

  /** Compact or grow so that recvmsg has somewhere to write. */
  #makeRoom(): void {
    if (this.inStart === this.inEnd) {
      this.inStart = this.inEnd = 0
      return
    }
    const cap = this.inBuf.length
    if (this.inStart > 0 && cap - this.inEnd < cap >>> 2) {
      this.inBuf.copyWithin(0, this.inStart, this.inEnd)
      this.inEnd -= this.inStart
      this.inStart = 0
    } else if (this.inStart === 0 && this.inEnd === cap) {
      // The caller could not consume anything: a message is larger than the buffer.
      this.#grow()
    }
  }

  /** Doubles the input buffer, keeping the unconsumed bytes at the same offsets. */
  #grow(): void {
    const next = new Uint8Array(new ArrayBuffer(this.inBuf.length * 2))
    next.set(this.inBuf.subarray(0, this.inEnd))
    this.inBuf = next
    this.#inAddr = addressOf(next)
  }

  /** Walk the received control messages; SCM_RIGHTS fds go to inFds. Returns the fd count. */
  #takeFds(): number {
    const w = this.#words
    const controlLen = w[10]!
    let count = 0
    for (let pos = 0; pos + 16 <= controlLen; ) {
      const word = (CONTROL + pos) >>> 2
      const len = w[word]!
      if (len < 16 || pos + len > controlLen) break
      if (w[word + 2] === SOL_SOCKET && w[word + 3] === SCM_RIGHTS) {
        const n = (len - 16) >>> 2
        for (let i = 0; i < n; i++) this.inFds.push(this.#ints[word + 4 + i]!)
        count += n
      }
      pos += (len + 7) & ~7
    }
    return count
  }

  consume(n: number): void {
    const next = this.inStart + n
    if (n < 0 || next > this.inEnd) throw new RangeError(`consume(${n}) with ${this.inEnd - this.inStart} bytes buffered`)
    if (next === this.inEnd) this.inStart = this.inEnd = 0
    else this.inStart = next
  }

  /**
   * Send `data[offset, offset + length)` with `fds`, taking ownership of the fds: each is closed
   * once sent, or on close(). At most 28 fds go per sendmsg, attached to the first byte(s): with
   * more than 28, every batch but the last rides on one byte of its own, so all fds arrive no later
   * than the data after them (`length` must be at least the number of batches).
   *
   * "sent": all written. "queued": the rest (a copy) waits for `flush()` on EPOLLOUT.
   * "overflow": pendingBytes + length would exceed maxPendingBytes: nothing is sent or queued and
   * the fds are closed — the stream is intact but this write is lost, so the caller should end
   * the connection. Throws SyscallError (EPIPE, ECONNRESET…) after closing the unsent fds;
   * RangeError for a slice outside `data`; TransportError "Closed" after close().
   */
  write(data: Uint8Array, offset: number, length: number, fds: readonly number[]): WriteResult {
    if (this.#closed) {
      closeRange(fds, 0)
      throw new TransportError({ reason: "Closed", message: "write on a closed endpoint" })
    }
    if (!(offset >= 0 && length >= 0 && offset + length <= data.length)) {
      // Raw addresses go to the kernel: an out-of-range length would send our own memory.
      closeRange(fds, 0)
      throw new RangeError(`write(offset ${offset}, length ${length}) outside a ${data.length}-byte buffer`)
    }
    const batches = Math.ceil(fds.length / MAX_FDS_PER_SENDMSG)
    if (batches > length) {
      closeRange(fds, 0)
      throw new TransportError({
        reason: "Overflow",
        message: `${fds.length} fds need at least ${batches} bytes to travel with, got ${length}`
      })
    }
    if (this.pendingBytes + length > this.#maxPending) {
      closeRange(fds, 0)
      return "overflow"
    }
    if (this.pendingBytes > 0) {
      this.#enqueue(data, offset, length, fds, 0)
      return "queued"
    }
    if (length === 0) return "sent"

    if (data.buffer !== this.#lastBuffer) {
      this.#lastBuffer = data.buffer
      this.#lastBufferAddr = addressOf(data) - data.byteOffset
    }
    const base = this.#lastBufferAddr + data.byteOffset
    const end = offset + length
    let pos = offset
    let fdStart = 0
    while (pos < end) {
      const fdCount = Math.min(MAX_FDS_PER_SENDMSG, fds.length - fdStart)
      const chunkEnd = fdStart + fdCount < fds.length ? pos + 1 : end
      const n = this.#send(base + pos, chunkEnd - pos, fds, fdStart, fdCount)
      if (n === -Errno.EAGAIN) {
        this.#enqueue(data, pos, end - pos, fds, fdStart)
        return "queued"
      }
      if (n === -Errno.EINTR) continue
      if (n < 0) {
        closeRange(fds, fdStart)
        throw syscallError("sendmsg", -n, `fd ${this.fd}`)
      }
      closeRange(fds, fdStart, fdStart + fdCount)
      fdStart += fdCount
      pos += n
      if (pos < chunkEnd) {
        // Partial write: the socket buffer is full. Only the last range can be partial.
        this.#enqueue(data, pos, end - pos, fds, fdStart)
        return "queued"
      }
    }
    return "sent"
  }

  /** sendmsg(MSG_DONTWAIT|MSG_NOSIGNAL) of one range; fds[from, from+count) as SCM_RIGHTS. */
  #send(address: number, length: number, fds: readonly number[], from: number, count: number): number {
    const w = this.#words
    const b = BLOCK >>> 2
    this.#setPtr(b + (IOV >>> 2), address)
    this.#setPtr(b + (IOV >>> 2) + 2, length)
    if (count > 0) {
      const c = b + (CONTROL >>> 2)
      w[c] = 16 + 4 * count // cmsg_len (size_t)
      w[c + 1] = 0
      w[c + 2] = SOL_SOCKET
      w[c + 3] = SCM_RIGHTS
      for (let i = 0; i < count; i++) this.#ints[c + 4 + i] = fds[from + i]!
      w[b + 10] = (16 + 4 * count + 7) & ~7 // CMSG_SPACE
    } else {
      w[b + 10] = 0
    }
    w[b + 11] = 0
    return sys.sendmsgAt(this.fd, this.#sendMsgAddr, MSG_DONTWAIT | MSG_NOSIGNAL)
  }

  /** Queue a copy of data[from, from+length); fds batches from `fdStart` ride on bytes 0, 1, 2… of it. */
  #enqueue(data: Uint8Array, from: number, length: number, fds: readonly number[], fdStart: number): void {
    const startPos = this.#outPos + this.pendingBytes
    for (let i = fdStart, k = 0; i < fds.length; i += MAX_FDS_PER_SENDMSG, k++)
      this.#outFds.push({ pos: startPos + k, fds: fds.slice(i, i + MAX_FDS_PER_SENDMSG) })
    if (length === 0) return
    let out = this.#out
    if (out === null || this.#outEnd + length > out.length) {
      const pending = this.pendingBytes
      if (out !== null && pending + length <= out.length && this.#outStart > 0) {
        out.copyWithin(0, this.#outStart, this.#outEnd)
      } else {
        let size = Math.max(64 * 1024, out?.length ?? 0)
        while (size < pending + length) size *= 2
        const next = new Uint8Array(new ArrayBuffer(size))
        if (out !== null) next.set(out.subarray(this.#outStart, this.#outEnd))
        this.#out = out = next
        this.#outAddr = addressOf(next)
      }
      this.#outStart = 0
      this.#outEnd = pending
    }
    out.set(data.subarray(from, from + length), this.#outEnd)
    this.#outEnd += length
  }

  /** Send what is queued. true when nothing is left (stop watching EPOLLOUT). Throws SyscallError. */
  flush(): boolean {
    if (this.#closed) return this.pendingBytes === 0
    while (this.#outEnd > this.#outStart) {
      const pending = this.#outEnd - this.#outStart
      const head = this.#outFds[0]
      let limit = pending
      let fds: number[] | undefined
      if (head !== undefined && head.pos === this.#outPos) {
        fds = head.fds
        const next = this.#outFds[1]
        if (next !== undefined) limit = next.pos - this.#outPos
      } else if (head !== undefined) {
        limit = head.pos - this.#outPos
      }
      const n = this.#send(this.#outAddr + this.#outStart, limit, fds ?? [], 0, fds?.length ?? 0)
      if (n === -Errno.EAGAIN) return false
      if (n === -Errno.EINTR) continue
      if (n < 0) throw syscallError("sendmsg", -n, `fd ${this.fd}`)
      if (fds !== undefined) {
        closeRange(fds, 0)
        this.#outFds.shift()
      }
      this.#outStart += n
      this.#outPos += n
      if (n < limit) return false
    }
    this.#outStart = this.#outEnd = 0
    return true
  }

  /** Idempotent: closes the socket, every received fd not yet shifted, every fd queued for output. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    sys.close(this.fd)
    this.inFds.closeAll()
    for (const batch of this.#outFds) closeRange(batch.fds, 0)
    this.#outFds.length = 0
    this.#outStart = this.#outEnd = 0
    this.#out = null
    this.#lastBuffer = null
    this.inStart = this.inEnd = 0
  }
}

// -------------------------------------------------------------------------------------------------
// Addresses, connect, listen, accept, lock files

/** sun_path is 108 bytes and must hold the NUL too (libwayland's rule). */
export const SUN_PATH_MAX = 107

/** A sockaddr_un for `path` and its length, or the error naming `syscall` (empty, NUL, too long). */
export const sockaddrUn = (syscall: string, path: string): { readonly addr: Uint8Array; readonly len: number } | SyscallError => {
  const bytes = Buffer.from(path, "utf8")
  if (bytes.length === 0 || bytes.includes(0))
    return syscallError(syscall, Errno.EINVAL, `invalid socket path ${JSON.stringify(path)}`)
  if (bytes.length > SUN_PATH_MAX)
    return syscallError(
      syscall,
      Errno.ENAMETOOLONG,
      `socket path is ${bytes.length} bytes, a Unix socket path holds at most ${SUN_PATH_MAX}: ${path}`
    )
  const addr = new Uint8Array(2 + 108)
  addr[0] = AF_UNIX // sa_family_t, little-endian u16
  addr.set(bytes, 2)
  return { addr, len: 2 + bytes.length + 1 }
}

const newSocket = (): number => sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)

/** A connected pair (non-blocking, close-on-exec). Throws SyscallError. */
export const socketPair = (): [number, number] => {
  const sv = new Int32Array(2)
  const r = sys.socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv)
  if (r < 0) throw syscallError("socketpair", -r)
  return [sv[0]!, sv[1]!]
}

/**
 * Connect to a Unix socket; the fd (non-blocking, close-on-exec) belongs to the caller.
 * A full listen backlog fails with EAGAIN rather than blocking the event loop.
 */
export const connectUnix = (path: string): Effect.Effect<number, SyscallError> =>
  Effect.suspend(() => {
    const r = connectUnixSync(path)
    return r instanceof SyscallError ? Effect.fail(r) : Effect.succeed(r)
  })

/**
 * `connectUnix` without Effect, for the per-client set-up path: the fd, or the error. `type`:
 * the socket type and flags (default a non-blocking stream; close-on-exec always).
 */
export const connectUnixSync = (path: string, type = SOCK_STREAM | SOCK_NONBLOCK): number | SyscallError => {
  const sa = sockaddrUn("connect", path)
  if (sa instanceof SyscallError) return sa
  const fd = sys.socket(AF_UNIX, type | SOCK_CLOEXEC, 0)
  if (fd < 0) return syscallError("socket", -fd)
  for (;;) {
    const r = sys.connect(fd, sa.addr, sa.len)
    if (r === 0) return fd
    if (r === -Errno.EINTR) continue
    sys.close(fd)
    return syscallError("connect", -r, path)
  }
}

/**
 * Bind and listen on `path`; the socket file is made 0700 before listen() (nobody can connect
 * before listen, so there is no window with umask-derived permissions). Scoped: closes the fd
 * and unlinks the path. An existing file at `path` fails with EADDRINUSE.
 */
export const listenUnix = (path: string, backlog = 128): Effect.Effect<number, SyscallError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      const sa = sockaddrUn("bind", path)
      if (sa instanceof SyscallError) return Effect.fail(sa)
      const fd = newSocket()
      if (fd < 0) return Effect.fail(syscallError("socket", -fd))
      const bound = sys.bind(fd, sa.addr, sa.len)
      if (bound < 0) {
        sys.close(fd)
        return Effect.fail(syscallError("bind", -bound, path))
      }
      const steps: Array<[string, () => number]> = [
        ["chmod", () => sys.chmod(path, 0o700)],
        ["listen", () => sys.listen(fd, backlog)]
      ]
      for (const [name, step] of steps) {
        const r = step()
        if (r < 0) {
          sys.close(fd)
          sys.unlink(path)
          return Effect.fail(syscallError(name, -r, path))
        }
      }
      return Effect.succeed(fd)
    }),
    (fd) =>
      Effect.sync(() => {
        sys.close(fd)
        sys.unlink(path)
      })
  )

/**
 * accept4(NONBLOCK|CLOEXEC): the new fd, or -1 when no connection is waiting.
 * Throws SyscallError otherwise; EMFILE/ENFILE (out of fds) carry those codes so the caller can
 * back off instead of spinning on a level-triggered listen fd.
 */
export const acceptUnix = (listenFd: number): number => {
  for (;;) {
    const fd = sys.accept4(listenFd, SOCK_NONBLOCK | SOCK_CLOEXEC)
    if (fd >= 0) return fd
    if (fd === -Errno.EAGAIN) return -1
    // The peer gave up before we accepted: try the next one.
    if (fd === -Errno.EINTR || fd === -Errno.ECONNABORTED) continue
    throw syscallError("accept4", -fd)
  }
}

/**
 * libwayland's lock file: open(O_CREAT|O_CLOEXEC, 0660) + flock(LOCK_EX|LOCK_NB). A lock held
 * elsewhere fails with code "EAGAIN". Scoped: unlinks the file while still holding the lock, then
 * closes (unlinking after unlocking could delete a file another server has just locked).
 */
export const lockFile = (path: string): Effect.Effect<number, SyscallError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      const fd = sys.open(path, O_CREAT | O_CLOEXEC | O_RDWR, 0o660)
      if (fd < 0) return Effect.fail(syscallError("open", -fd, path))
      const r = sys.flock(fd, LOCK_EX | LOCK_NB)
      if (r < 0) {
        sys.close(fd)
        return Effect.fail(syscallError("flock", -r, path))
      }
      return Effect.succeed(fd)
    }),
    (fd) =>
      Effect.sync(() => {
        sys.unlink(path)
        sys.close(fd)
      })
  )
