/**
 * One sendmsg / one recvmsg with SCM_RIGHTS over preallocated raw buffers, plus the Unix
 * SOCK_SEQPACKET helpers the emulator protocol runs on. Shared by the emulator process and the
 * guest-side emulated backend (src/virtgpu/emulated.ts).
 *
 * Unlike `SocketEndpoint` (a stream with queues), `MsgIo` does exactly one system call per
 * `send`/`recv`: the cross-domain host must deliver one `recvmsg` result per ring-1 fence, and the
 * emulator protocol is one datagram per request/reply.
 *
 * Layouts (LP64 Linux): msghdr {name@0, namelen@8, iov@16, iovlen@24, control@32,
 * controllen@40, flags@48}; iovec {base@0, len@8}; cmsghdr {len@0, level@8, type@12, data@16}.
 *
 * Not here: the request encoding (`protocol.ts`).
 */
import { Errno, syscallError, SyscallError } from "../ffi/errno.js"
import { connectUnixSync, sockaddrUn } from "../transport/socket.js"
import {
  addressOf,
  sys,
  AF_UNIX,
  MSG_CTRUNC,
  SCM_RIGHTS,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOL_SOCKET
} from "../ffi/libc.js"

export const SOCK_SEQPACKET = 5
export const SO_RCVTIMEO = 20
export const SO_SNDTIMEO = 21
export const MSG_TRUNC = 0x20

/** Most fds one message carries (libwayland's and cross-domain's limit). */
export const MAX_FDS = 28
const CONTROL_SIZE = 16 + MAX_FDS * 4
const TWO32 = 4294967296

export class MsgIo {
  /** Received bytes are `inBuf[0, n)` after `recv` returned n. */
  readonly inBuf: Uint8Array
  readonly inView: DataView
  /** Fds of the last `recv` (the caller owns them). */
  readonly fds: number[] = []
  /** The last `recv` lost bytes (MSG_TRUNC) or fds (MSG_CTRUNC). */
  truncated = false
  /** Bytes to send are written here; `send(fd, length, fds)` sends `outBuf[0, length)`. */
  outBuf: Uint8Array
  outView: DataView
  #outAddr: number
  readonly #inAddr: number
  readonly #hdr = new ArrayBuffer(256)
  readonly #w = new Uint32Array(this.#hdr)
  readonly #i = new Int32Array(this.#hdr)
  readonly #base: number

  constructor(inCapacity: number, outCapacity = 4096) {
    this.inBuf = new Uint8Array(new ArrayBuffer(inCapacity))
    this.inView = new DataView(this.inBuf.buffer)
    this.#inAddr = addressOf(this.inBuf)
    this.outBuf = new Uint8Array(new ArrayBuffer(outCapacity))
    this.outView = new DataView(this.outBuf.buffer)
    this.#outAddr = addressOf(this.outBuf)
    this.#base = addressOf(this.#w)
    // msghdr @0 (name NULL), iovec @64, control @128.
    this.#ptr(4, this.#base + 64)
    this.#w[6] = 1
    this.#ptr(8, this.#base + 128)
  }

  #ptr(word: number, value: number): void {
    this.#w[word] = value % TWO32
    this.#w[word + 1] = Math.floor(value / TWO32)
  }

  /** Grow `outBuf` (contents kept) to hold at least `size` bytes. */
  ensureOut(size: number): void {
    if (size <= this.outBuf.length) return
    let n = this.outBuf.length
    while (n < size) n *= 2
    const next = new Uint8Array(new ArrayBuffer(n))
    next.set(this.outBuf)
    this.outBuf = next
    this.outView = new DataView(next.buffer)
    this.#outAddr = addressOf(next)
  }

  /** One sendmsg of outBuf[0, length) with `fds` (not closed: SCM_RIGHTS duplicates them). Bytes sent or -errno. */
  send(fd: number, length: number, fds: readonly number[], flags: number): number {
    if (fds.length > MAX_FDS) return -Errno.EINVAL
    const w = this.#w
    this.#ptr(16, this.#outAddr)
    this.#ptr(18, length)
    if (fds.length > 0) {
      w[32] = 16 + 4 * fds.length
      w[33] = 0
      w[34] = SOL_SOCKET
      w[35] = SCM_RIGHTS
      for (let k = 0; k < fds.length; k++) this.#i[36 + k] = fds[k]!
      w[10] = (16 + 4 * fds.length + 7) & ~7
    } else {
      w[10] = 0
    }
    w[11] = 0
    for (;;) {
      const n = sys.sendmsgAt(fd, this.#base, flags)
      if (n !== -Errno.EINTR) return n
    }
  }

  /**
   * One recvmsg of at most `max` bytes (default: the whole buffer). Bytes read (0 = EOF when no
   * fds came) or -errno; the fds are in `fds`, owned by the caller from now on.
   */
  recv(fd: number, flags: number, max = this.inBuf.length): number {
    const w = this.#w
    this.fds.length = 0
    this.truncated = false
    this.#ptr(16, this.#inAddr)
    this.#ptr(18, Math.min(max, this.inBuf.length))
    let n: number
    for (;;) {
      w[10] = CONTROL_SIZE
      w[11] = 0
      w[12] = 0
      n = sys.recvmsgAt(fd, this.#base, flags)
      if (n !== -Errno.EINTR) break
    }
    if (n < 0) return n
    const controlLen = w[10]!
    for (let pos = 0; pos + 16 <= controlLen; ) {
      const word = (128 + pos) >>> 2
      const len = w[word]!
      if (len < 16 || pos + len > controlLen) break
      if (w[word + 2] === SOL_SOCKET && w[word + 3] === SCM_RIGHTS) {
        for (let k = 0; k < (len - 16) >>> 2; k++) this.fds.push(this.#i[word + 4 + k]!)
      }
      pos += (len + 7) & ~7
    }
    if ((w[12]! & (MSG_CTRUNC | MSG_TRUNC)) !== 0) this.truncated = true
    return n
  }

  closeFds(): void {
    for (const fd of this.fds) sys.close(fd)
    this.fds.length = 0
  }
}

// -------------------------------------------------------------------------------------------------
// SOCK_SEQPACKET sockets

const sockaddr = (op: string, path: string): { readonly addr: Uint8Array; readonly len: number } => {
  const sa = sockaddrUn(op, path)
  if (sa instanceof SyscallError) throw sa
  return sa
}

/** A connected SEQPACKET socket. Blocking unless `nonBlocking`. Throws SyscallError. */
export const connectSeqpacket = (path: string, nonBlocking = false): number => {
  const fd = connectUnixSync(path, SOCK_SEQPACKET | (nonBlocking ? SOCK_NONBLOCK : 0))
  if (fd instanceof SyscallError) throw fd
  return fd
}

const setTimeout_ = (fd: number, name: number, ms: number): number => {
  const tv = new BigInt64Array(2)
  tv[0] = BigInt(Math.floor(ms / 1000))
  tv[1] = BigInt((ms % 1000) * 1000)
  return sys.setsockopt(fd, SOL_SOCKET, name, tv, 16)
}

/** SO_RCVTIMEO on a blocking socket: recv fails with EAGAIN after `ms`. */
export const setReceiveTimeout = (fd: number, ms: number): number => setTimeout_(fd, SO_RCVTIMEO, ms)

/** SO_SNDTIMEO on a blocking socket: send fails with EAGAIN after `ms` without room. */
export const setSendTimeout = (fd: number, ms: number): number => setTimeout_(fd, SO_SNDTIMEO, ms)

/**
 * A non-blocking listening SEQPACKET socket at `path` (0700). A stale socket file nobody answers
 * on is replaced; a live one fails with EADDRINUSE. Throws SyscallError.
 */
export const listenSeqpacket = (path: string, backlog = 64): number => {
  const sa = sockaddr("bind", path)
  const fd = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)
  if (fd < 0) throw syscallError("socket", -fd)
  let r = sys.bind(fd, sa.addr, sa.len)
  if (r === -Errno.EADDRINUSE) {
    let live = false
    try {
      sys.close(connectSeqpacket(path, true))
      live = true
    } catch (e) {
      live = !(e instanceof SyscallError && e.errno === Errno.ECONNREFUSED)
    }
    if (!live) {
      sys.unlink(path)
      r = sys.bind(fd, sa.addr, sa.len)
    }
  }
  if (r < 0) {
    sys.close(fd)
    throw syscallError("bind", -r, path)
  }
  for (const [name, step] of [
    ["chmod", () => sys.chmod(path, 0o700)],
    ["listen", () => sys.listen(fd, backlog)]
  ] as const) {
    const s = step()
    if (s < 0) {
      sys.close(fd)
      sys.unlink(path)
      throw syscallError(name, -s, path)
    }
  }
  return fd
}
