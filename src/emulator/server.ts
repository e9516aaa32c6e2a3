/**
 * The `sommelier emulate-host` server: a non-blocking SOCK_SEQPACKET listener; each accepted
 * connection is one guest device file of the emulated virtio-gpu (`gpu.ts`). Requests are decoded
 * and answered synchronously in the reactor callback (protocol in `protocol.ts`), except WAIT,
 * whose reply waits until the object is idle, and EXECBUFFER, which is one-way (a refused one
 * fails the file: logged, a notice to the guest, later submissions dropped). Everything is event-driven on the project's
 * Reactor: many guest files and their compositor connections at once, no polling, no threads.
 *
 * Not here: device semantics (`gpu.ts`), cross-domain host behaviour (`crossdomain.ts`).
 */
import { Effect, type Scope } from "effect"
import { Errno, SyscallError } from "../ffi/errno.js"
import { sys, MSG_CMSG_CLOEXEC, MSG_DONTWAIT, MSG_NOSIGNAL } from "../ffi/libc.js"
import { EPOLLIN, Reactor, type Watch } from "../transport/reactor.js"
import { acceptUnix } from "../transport/socket.js"
import { Gpu, type GpuFile } from "./gpu.js"
import { listenSeqpacket, MsgIo } from "./msg.js"
import { EVENT_ERROR_MARK, EXECBUFFER_FIXED, HEADER_SIZE, MAX_REPLY, MAX_REQUEST, NOTICE_SIZE, Op, PROTOCOL_VERSION } from "./protocol.js"

export interface EmulatorOptions {
  /** Where guests connect (`--virtgpu emulated:PATH`). */
  readonly listenPath: string
  /** Host channels by cross-domain channel type; Wayland (1) → the host compositor's socket. */
  readonly channels: ReadonlyMap<number, string>
  /** Host-side log (errors never reach the guest). Default: stderr. */
  readonly log?: (line: string) => void
}

export interface Emulator {
  readonly listenPath: string
  readonly gpu: Gpu
  /** Guest device files currently open. */
  readonly connections: () => number
}

export const DRIVER = { name: "virtio_gpu", major: 0, minor: 1, patchlevel: 0, date: "0", desc: "virtio GPU (emulated by sommelier emulate-host)" }

const defaultLog = (line: string): void => {
  process.stderr.write(`sommelier emulate-host: ${line}\n`)
}

interface Conn {
  readonly fd: number
  readonly file: GpuFile
  watch: Watch | null
  closed: boolean
  /** EXECBUFFERs received (the guest counts the same way, so a notice can name one). */
  submissions: number
  /** An EXECBUFFER was refused: later ones are dropped (they may depend on it). */
  failed: boolean
  /** DEBUG_FAIL_SUBMISSION: refuse the next EXECBUFFER with this -errno (0: no). */
  failNext: number
}

const errorMark = new BigUint64Array([EVENT_ERROR_MARK])
/** Never written to: handlers only read and close what they get. */
const noFds: number[] = []
const noBos: readonly number[] = []

const utf8 = new TextEncoder()

/** Starts the emulator in the current scope (listener, reactor watches, every context torn down at the end). */
export const startEmulator = (options: EmulatorOptions): Effect.Effect<Emulator, SyscallError, Scope.Scope | Reactor> =>
  Effect.gen(function* () {
    const reactor = yield* Reactor
    const log = options.log ?? defaultLog
    const gpu = new Gpu({ reactor, channels: options.channels, log })
    yield* Effect.addFinalizer(() => Effect.sync(() => gpu.shutdown()))
    const listenFd = yield* Effect.acquireRelease(
      Effect.try({
        try: () => listenSeqpacket(options.listenPath),
        catch: (e) => (e instanceof SyscallError ? e : new SyscallError({ syscall: "listen", errno: Errno.EINVAL, code: "EINVAL", message: String(e) }))
      }),
      (fd) =>
        Effect.sync(() => {
          sys.close(fd)
          sys.unlink(options.listenPath)
        })
    )
    const io = new MsgIo(MAX_REQUEST, 4096)
    const conns = new Set<Conn>()

    const closeConn = (c: Conn): void => {
      if (c.closed) return
      c.closed = true
      c.watch?.close()
      sys.close(c.fd)
      conns.delete(c)
      gpu.closeFile(c.file)
    }
    /**
     * A notice (a reply-shaped datagram no request asked for: status, op, then what `length`
     * covers, already in `outBuf` from offset 8) and the event mark that wakes the guest for it.
     * The errno of a failed send, or 0.
     */
    const notice = (c: Conn, status: number, op: number, length: number): number => {
      io.outView.setInt32(0, status, true)
      io.outView.setUint32(4, op, true)
      const n = io.send(c.fd, length, [], MSG_DONTWAIT | MSG_NOSIGNAL)
      if (n < 0) return -n
      sys.write(c.file.eventFd, errorMark, 8)
      return 0
    }

    /** The emulator is going away: every open file is told (notice + event mark), then closed. */
    const shutDown = (c: Conn): void => {
      if (!c.closed) notice(c, -Errno.ESHUTDOWN, Op.SHUTDOWN, HEADER_SIZE)
      closeConn(c)
    }
    yield* Effect.addFinalizer(() => Effect.sync(() => [...conns].forEach(shutDown)))

    /** Build and send one reply: status, op, then `fill` writes results from offset 8 and returns the end. */
    const reply = (c: Conn, op: number, status: number, fill?: (v: DataView, b: Uint8Array) => number, fds: readonly number[] = []): void => {
      if (c.closed) return
      const v = io.outView
      v.setInt32(0, status, true)
      v.setUint32(4, op, true)
      const end = status === 0 && fill !== undefined ? fill(io.outView, io.outBuf) : HEADER_SIZE
      const n = io.send(c.fd, end, status === 0 ? fds : [], MSG_DONTWAIT | MSG_NOSIGNAL)
      if (n < 0) {
        log(`file ${c.file.id}: reply to op ${op}: errno ${-n}; closing the connection`)
        closeConn(c)
      }
    }

    /** One-way EXECBUFFER refused: the file is failed; the guest hears of it on its next wake-up or request. */
    const failSubmission = (c: Conn, seq: number, flags: number, ringIdx: number, status: number): void => {
      c.failed = true
      log(`file ${c.file.id}: EXECBUFFER #${seq} (flags 0x${flags.toString(16)}, ring ${ringIdx}) refused with errno ${-status}; the file is failed, later submissions are dropped`)
      if (c.closed) return
      const v = io.outView
      v.setUint32(8, seq, true)
      v.setUint32(12, flags, true)
      v.setUint32(16, ringIdx, true)
      const errno = notice(c, status, Op.EXECBUFFER, NOTICE_SIZE)
      if (errno !== 0) {
        log(`file ${c.file.id}: EXECBUFFER notice: errno ${errno}; closing the connection`)
        closeConn(c)
      }
    }

    /** A request refused before its handler ran; EXECBUFFER gets no reply, so it fails the file. */
    const refuse = (c: Conn, op: number, status: number): void => {
      if (op !== Op.EXECBUFFER) return reply(c, op, status)
      const seq = ++c.submissions
      if (!c.failed) failSubmission(c, seq, 0, 0, status)
    }

    const bytesReply = (c: Conn, op: number, bytes: Uint8Array): void => {
      io.ensureOut(HEADER_SIZE + bytes.length)
      reply(c, op, 0, (_v, b) => {
        b.set(bytes, HEADER_SIZE)
        return HEADER_SIZE + bytes.length
      })
    }

    const handle = (c: Conn, n: number, fds: number[]): void => {
      const v = io.inView
      const f = c.file
      if (n < HEADER_SIZE) {
        fds.forEach((fd) => sys.close(fd))
        return reply(c, 0, -Errno.EINVAL)
      }
      const op = v.getUint32(0, true)
      const need = (size: number): boolean => {
        if (n >= size) return true
        refuse(c, op, -Errno.EINVAL)
        return false
      }
      // Only PRIME_FD_TO_HANDLE carries an fd.
      if (op !== Op.PRIME_FD_TO_HANDLE && fds.length > 0) {
        fds.forEach((fd) => sys.close(fd))
        return refuse(c, op, -Errno.EINVAL)
      }
      switch (op) {
        case Op.OPEN:
          if (!need(12)) return
          if (v.getUint32(8, true) !== PROTOCOL_VERSION) return reply(c, op, -Errno.EPROTO)
          return reply(
            c,
            op,
            0,
            (o) => {
              o.setUint32(8, PROTOCOL_VERSION, true)
              return 12
            },
            [f.eventFd]
          )
        case Op.VERSION: {
          const strings = [DRIVER.name, DRIVER.date, DRIVER.desc].map((s) => utf8.encode(s))
          return reply(c, op, 0, (o, b) => {
            o.setInt32(8, DRIVER.major, true)
            o.setInt32(12, DRIVER.minor, true)
            o.setInt32(16, DRIVER.patchlevel, true)
            let off = 32
            strings.forEach((s, i) => {
              o.setUint32(20 + 4 * i, s.length, true)
              b.set(s, off)
              off += s.length
            })
            return off
          })
        }
        case Op.GET_PARAM: {
          if (!need(16)) return
          const param = Number(v.getBigUint64(8, true))
          const value = gpu.getParam(param)
          if (value < 0) return reply(c, op, value)
          return reply(c, op, 0, (o) => {
            o.setInt32(8, value, true)
            return 12
          })
        }
        case Op.GET_CAPS: {
          if (!need(20)) return
          const caps = gpu.getCaps(v.getUint32(8, true), v.getUint32(12, true), v.getUint32(16, true))
          if (typeof caps === "number") return reply(c, op, caps)
          return bytesReply(c, op, caps)
        }
        case Op.CONTEXT_INIT: {
          if (!need(16)) return
          const count = v.getUint32(8, true)
          if (count > 16 || !need(16 + 16 * count)) return reply(c, op, -Errno.EINVAL)
          const params: Array<[number, number]> = []
          for (let i = 0; i < count; i++) {
            const p = v.getBigUint64(16 + 16 * i, true)
            const val = v.getBigUint64(24 + 16 * i, true)
            // Values beyond 2^53 are invalid for every parameter anyway.
            params.push([Number(p), val > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(val)])
          }
          return reply(c, op, gpu.contextInit(f, params))
        }
        case Op.CREATE_BLOB: {
          if (!need(32)) return
          const size = v.getBigUint64(16, true)
          if (size > BigInt(Number.MAX_SAFE_INTEGER)) return reply(c, op, -Errno.EINVAL)
          const r = gpu.createBlob(f, v.getUint32(8, true), v.getUint32(12, true), Number(size), v.getBigUint64(24, true))
          if (typeof r === "number") return reply(c, op, r)
          return reply(c, op, 0, (o) => {
            o.setUint32(8, r.handle, true)
            o.setUint32(12, r.resId, true)
            return 16
          })
        }
        case Op.MAP: {
          if (!need(12)) return
          const r = gpu.mapFd(f, v.getUint32(8, true))
          if (typeof r === "number") return reply(c, op, r)
          return reply(
            c,
            op,
            0,
            (o) => {
              o.setBigUint64(8, BigInt(r.size), true)
              return 16
            },
            [r.fd]
          )
        }
        case Op.EXECBUFFER: {
          if (!need(EXECBUFFER_FIXED)) return
          const flags = v.getUint32(8, true)
          const ringIdx = v.getUint32(12, true)
          const numBo = v.getUint32(16, true)
          const size = v.getUint32(20, true)
          if (!need(EXECBUFFER_FIXED + 4 * numBo + size)) return
          const seq = ++c.submissions
          if (c.failed) return
          let bos = noBos
          if (numBo > 0) {
            const list: number[] = []
            for (let i = 0; i < numBo; i++) list.push(v.getUint32(EXECBUFFER_FIXED + 4 * i, true))
            bos = list
          }
          const start = EXECBUFFER_FIXED + 4 * numBo
          // The host reads the command from the request buffer (no copy); SEND copies what it queues.
          const injected = c.failNext
          c.failNext = 0
          const status = injected !== 0 ? injected : gpu.execbuffer(f, flags, ringIdx, bos, io.inBuf.subarray(start, start + size))
          if (status < 0) failSubmission(c, seq, flags, ringIdx, status)
          return
        }
        case Op.WAIT:
          if (!need(16)) return
          return gpu.wait(f, v.getUint32(8, true), v.getUint32(12, true), (status) => reply(c, op, status))
        case Op.RESOURCE_INFO: {
          if (!need(12)) return
          const r = gpu.resourceInfo(f, v.getUint32(8, true))
          if (typeof r === "number") return reply(c, op, r)
          return reply(c, op, 0, (o) => {
            o.setUint32(8, r.resId, true)
            o.setUint32(12, r.size >>> 0, true)
            o.setUint32(16, r.blobMem, true)
            return 20
          })
        }
        case Op.PRIME_HANDLE_TO_FD: {
          if (!need(16)) return
          const fd = gpu.primeExport(f, v.getUint32(8, true))
          if (fd < 0) return reply(c, op, fd)
          return reply(c, op, 0, () => HEADER_SIZE, [fd])
        }
        case Op.PRIME_FD_TO_HANDLE: {
          if (fds.length !== 1) {
            fds.forEach((fd) => sys.close(fd))
            return reply(c, op, -Errno.EBADF)
          }
          const h = gpu.primeImport(f, fds[0]!)
          if (h < 0) return reply(c, op, h)
          return reply(c, op, 0, (o) => {
            o.setUint32(8, h, true)
            return 12
          })
        }
        case Op.GEM_CLOSE:
          if (!need(12)) return
          return reply(c, op, gpu.gemClose(f, v.getUint32(8, true)))
        case Op.DEBUG_READ: {
          if (!need(20)) return
          const len = Math.min(v.getUint32(16, true), MAX_REPLY - HEADER_SIZE)
          const r = gpu.debugRead(v.getUint32(8, true), v.getUint32(12, true), len)
          if (typeof r === "number") return reply(c, op, r)
          return bytesReply(c, op, r)
        }
        case Op.DEBUG_STATE: {
          const json = utf8.encode(JSON.stringify({ file: f.id, connections: conns.size, ...gpu.debugState() }))
          if (json.length > MAX_REPLY - HEADER_SIZE) return reply(c, op, -Errno.E2BIG)
          return bytesReply(c, op, json)
        }
        case Op.DEBUG_FAIL_SUBMISSION: {
          if (!need(12)) return
          const errno = v.getUint32(8, true)
          if (errno === 0 || errno > 4095) return reply(c, op, -Errno.EINVAL)
          c.failNext = -errno
          return reply(c, op, 0)
        }
        default:
          return reply(c, op, -Errno.ENOTTY)
      }
    }

    /**
     * One datagram per wake-up: the watch is level-triggered, so libuv calls again while more
     * are queued. Reading on until EAGAIN would cost a failed recvmsg on every wake-up, and a
     * guest mostly has one submission in flight (a round trip is one datagram per wake-up).
     */
    const onConn = (c: Conn): void => {
      if (c.closed) return
      const n = io.recv(c.fd, MSG_DONTWAIT | MSG_CMSG_CLOEXEC)
      if (n === -Errno.EAGAIN) return
      if (n <= 0) return closeConn(c) // EOF: the guest closed its device file
      // Only PRIME_FD_TO_HANDLE carries fds: no array per request otherwise.
      const fds = io.fds.length === 0 ? noFds : io.fds.splice(0)
      if (io.truncated) {
        fds.forEach((fd) => sys.close(fd))
        return refuse(c, io.inView.getUint32(0, true), -Errno.EMSGSIZE)
      }
      handle(c, n, fds)
    }

    const listenWatch = reactor.watch(listenFd, EPOLLIN, () => {
      for (;;) {
        let fd: number
        try {
          fd = acceptUnix(listenFd)
        } catch (e) {
          log(`accept: ${e instanceof Error ? e.message : String(e)}`)
          return
        }
        if (fd < 0) return
        const file = gpu.openFile()
        if (typeof file === "number") {
          log(`eventfd: errno ${-file}; refusing a guest`)
          sys.close(fd)
          continue
        }
        const c: Conn = { fd, file, watch: null, closed: false, submissions: 0, failed: false, failNext: 0 }
        conns.add(c)
        c.watch = reactor.watch(fd, EPOLLIN, () => onConn(c))
      }
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => listenWatch.close()))
    return { listenPath: options.listenPath, gpu, connections: () => conns.size } satisfies Emulator
  })
