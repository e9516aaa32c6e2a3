/**
 * The emulated backend of `VirtGpu`: each `open` connects to a `sommelier emulate-host` process
 * (Unix SOCK_SEQPACKET, protocol in src/emulator/protocol.ts) that stands in for the guest kernel
 * and the VMM. Every operation is one request and one reply on a blocking socket, so it blocks
 * like the ioctl it models (bounded by a receive timeout) — except EXECBUFFER: the checks the
 * guest kernel makes in the ioctl (flags, ring index, BO handles, size) are made here, and the
 * submission itself is one-way, like a virtqueue the VMM drains on its own (a Wayland round trip
 * is two of them). A submission the emulator still refuses fails this device for good: every
 * later call throws a VirtGpuError naming it, starting with the next `readEvents` (the emulator
 * wakes the event fd for it) or the next request, whichever comes first. Blob memory is a memfd the emulator
 * passes over SCM_RIGHTS and both processes map: ring and blob contents really cross a process
 * boundary. Fence events arrive on an eventfd from the emulator (its counter = events queued).
 *
 * Mapping note: a HOST3D blob made from a compositor's write-sealed or read-only memfd (e.g. a
 * keymap) cannot be mapped shared+writable; `map` then falls back to a private writable mapping
 * (reads see the host's bytes; writes stay local instead of crashing the process).
 *
 * Extra, for tests and diagnostics: `debugRead` (the host's view of a resource), `debugState` and
 * `debugFailNextSubmission` (fault injection for the asynchronous failure path).
 */
import { Effect, Layer } from "effect"
import { Errno } from "../ffi/errno.js"
import { sys, viewOf, MAP_PRIVATE, MAP_SHARED, MSG_CMSG_CLOEXEC, MSG_DONTWAIT, MSG_NOSIGNAL, PROT_READ, PROT_WRITE } from "../ffi/libc.js"
import { DRM_CLOEXEC, DRM_RDWR } from "../ffi/drm.js"
import { connectSeqpacket, MsgIo, setReceiveTimeout, setSendTimeout } from "../emulator/msg.js"
import { EVENT_ERROR_MARK, EXECBUFFER_FIXED, HEADER_SIZE, MAX_REPLY, MAX_REQUEST, Op, opName, PROTOCOL_VERSION } from "../emulator/protocol.js"
import {
  CONTEXT_PARAM_CAPSET_ID,
  CONTEXT_PARAM_NUM_RINGS,
  CONTEXT_PARAM_POLL_RINGS_MASK,
  EVENT_FENCE_SIGNALED,
  EXECBUF_RING_IDX,
  VirtGpu,
  VirtGpuError,
  WAIT_NOWAIT,
  type Blob,
  type CreateBlobArgs,
  type DriverVersion,
  type ExecbufferArgs,
  type Mapping,
  type ResourceInfo,
  type VirtGpuDevice,
  type VirtGpuService
} from "./device.js"
import { closedError, unsupportedCapset, virtGpuError } from "./errors.js"

/** How long a request may wait for its reply (WAIT itself gives up after 15 s on the emulator). */
const REPLY_TIMEOUT_MS = 20_000
/** How long a one-way submission may wait for room in the emulator's receive queue. */
const SEND_TIMEOUT_MS = 20_000

const utf8 = new TextDecoder()

let io: MsgIo | null = null
/** The request/reply buffers (128 KiB for the largest reply): one per process, not one per guest client. */
const sharedIo = (): MsgIo => (io ??= new MsgIo(MAX_REPLY, 4096))
const ONE_FENCE: readonly number[] = Object.freeze([EVENT_FENCE_SIGNALED])

interface Reply {
  readonly view: DataView
  readonly bytes: Uint8Array
  readonly length: number
  readonly fds: number[]
}

export class EmulatedDevice implements VirtGpuDevice {
  readonly backend = "emulated" as const
  readonly name: string
  readonly socketPath: string
  readonly eventFd: number
  #fd: number
  /** Every device of this process shares one set of buffers: each call is synchronous, and a reply is read before the next call. */
  readonly #io = sharedIo()
  readonly #count = new BigUint64Array(1)
  /** Set once a one-way EXECBUFFER was refused by the emulator: every later call throws it. */
  #failure: VirtGpuError | null = null
  /** EXECBUFFERs sent (the emulator numbers them the same way in its notice). */
  #submissions = 0
  /** The context's ring count (-1: no context yet; an implicit one has 0). */
  #numRings = -1
  /** GEM handles of this file, for the kernel's BO check on EXECBUFFER. */
  readonly #handles = new Set<number>()

  /** Connects and opens a device file. Throws VirtGpuError. */
  constructor(socketPath: string) {
    this.socketPath = socketPath
    this.name = `emulated:${socketPath}`
    let fd: number
    try {
      fd = connectSeqpacket(socketPath)
    } catch (e) {
      const errno = (e as { errno?: number }).errno ?? Errno.ECONNREFUSED
      throw virtGpuError(
        "open",
        errno,
        `no emulator at ${socketPath}; start one with: sommelier emulate-host --listen ${socketPath}`,
        "NoDevice"
      )
    }
    setReceiveTimeout(fd, REPLY_TIMEOUT_MS)
    setSendTimeout(fd, SEND_TIMEOUT_MS)
    this.#fd = fd
    try {
      const r = this.#call(Op.OPEN, (v) => {
        v.setUint32(8, PROTOCOL_VERSION, true)
        return 12
      })
      if (r.fds.length !== 1) {
        r.fds.forEach((x) => sys.close(x))
        throw new VirtGpuError({ reason: "Protocol", op: "open", errno: Errno.EPROTO, message: `open: ${socketPath} sent no event fd` })
      }
      this.eventFd = r.fds[0]!
    } catch (e) {
      sys.close(fd)
      this.#fd = -1
      throw e
    }
  }

  get hangupFd(): number {
    return this.#fd
  }

  /** Like the kernel, the first GEM handle or submission without CONTEXT_INIT creates a context: one with no rings. */
  #implicitContext(): void {
    if (this.#numRings < 0) this.#numRings = 0
  }

  /** One request/reply. `build` writes the arguments from offset 8 and returns the length. */
  #call(op: number, build?: (v: DataView, b: Uint8Array) => number, fds: readonly number[] = [], detail?: string): Reply {
    const name = opName[op] ?? `op ${op}`
    if (this.#fd < 0) throw closedError(name, this.name)
    if (this.#failure !== null) throw this.#failure
    const io = this.#io
    io.outView.setUint32(0, op, true)
    io.outView.setUint32(4, 0, true)
    const length = build === undefined ? HEADER_SIZE : build(io.outView, io.outBuf)
    const sent = io.send(this.#fd, length, fds, MSG_NOSIGNAL)
    if (sent < 0) throw virtGpuError(name, -sent, `sending to the emulator at ${this.socketPath}`, sent === -Errno.EBADF ? "Ioctl" : "Protocol")
    const n = io.recv(this.#fd, MSG_CMSG_CLOEXEC)
    const got = io.fds.splice(0)
    if (n <= 0 || io.truncated || n < HEADER_SIZE) {
      got.forEach((x) => sys.close(x))
      const why = n === -Errno.EAGAIN ? `no reply within ${REPLY_TIMEOUT_MS} ms` : n === 0 ? "the emulator closed the connection" : n < 0 ? `errno ${-n}` : "malformed reply"
      throw new VirtGpuError({ reason: "Protocol", op: name, errno: n < 0 ? -n : Errno.EPROTO, message: `${name}: emulator ${this.socketPath}: ${why}` })
    }
    const noticed = this.#notice(n)
    if (noticed !== null) {
      // A notice, not our reply (EXECBUFFER gets none): an earlier submission was refused, or the emulator is going away.
      got.forEach((x) => sys.close(x))
      throw noticed
    }
    const status = io.inView.getInt32(0, true)
    if (status < 0) {
      got.forEach((x) => sys.close(x))
      throw virtGpuError(name, -status, detail)
    }
    return { view: io.inView, bytes: io.inBuf, length: n, fds: got }
  }

  /**
   * When `inBuf[0, n)` is a notice (EXECBUFFER_FAILED or SHUTDOWN), it fails the device: the
   * error every call now throws. Otherwise null.
   */
  #notice(n: number): VirtGpuError | null {
    if (n < HEADER_SIZE) return null
    const op = this.#io.inView.getUint32(4, true)
    return op === Op.EXECBUFFER ? this.#fail(n) : op === Op.SHUTDOWN ? this.#shutdown() : null
  }

  /** The EXECBUFFER_FAILED notice in `inBuf[0, n)`. */
  #fail(n: number): VirtGpuError {
    const v = this.#io.inView
    const errno = -v.getInt32(0, true)
    const seq = n >= 20 ? v.getUint32(8, true) : 0
    const ring = n >= 20 && (v.getUint32(12, true) & EXECBUF_RING_IDX) !== 0 ? `, ring ${v.getUint32(16, true)}` : ""
    const base = virtGpuError("VIRTGPU_EXECBUFFER", errno > 0 ? errno : Errno.EIO, `the emulator refused submission #${seq} of ${this.#submissions}${ring} (${this.name}); the device is unusable`)
    this.#failure = new VirtGpuError({ reason: "Protocol", op: base.op, errno: base.errno, message: base.message })
    return this.#failure
  }

  /** The SHUTDOWN notice: the device is gone for good. */
  #shutdown(): VirtGpuError {
    this.#failure = new VirtGpuError({
      reason: "Protocol",
      op: "read events",
      errno: Errno.ESHUTDOWN,
      message: `the emulated device shut down (sommelier emulate-host at ${this.socketPath} stopped); the device is gone`
    })
    return this.#failure
  }

  /** Reads the pending notice (the event counter says one was sent): EXECBUFFER_FAILED or SHUTDOWN. */
  #takeNotice(): VirtGpuError {
    if (this.#failure !== null) return this.#failure
    const io = this.#io
    for (;;) {
      const n = io.recv(this.#fd, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)
      io.closeFds()
      const noticed = this.#notice(n)
      if (noticed !== null) return noticed
      if (n <= 0) {
        // The counter says a notice was sent, yet none is there: fail anyway, naming that.
        this.#failure = new VirtGpuError({ reason: "Protocol", op: "VIRTGPU_EXECBUFFER", errno: Errno.EIO, message: `VIRTGPU_EXECBUFFER: the emulator signalled a refused submission but sent no notice (${this.name})` })
        return this.#failure
      }
    }
  }

  version(): DriverVersion {
    const r = this.#call(Op.VERSION)
    const v = r.view
    let off = 32
    const str = (i: number): string => {
      const len = v.getUint32(20 + 4 * i, true)
      const s = utf8.decode(r.bytes.subarray(off, off + len))
      off += len
      return s
    }
    const name = str(0)
    const date = str(1)
    const desc = str(2)
    return { name, major: v.getInt32(8, true), minor: v.getInt32(12, true), patchlevel: v.getInt32(16, true), date, desc }
  }

  getParam(param: number): number {
    const r = this.#call(
      Op.GET_PARAM,
      (v) => {
        v.setBigUint64(8, BigInt(param), true)
        return 16
      },
      [],
      `param ${param}`
    )
    return r.view.getInt32(8, true) >>> 0
  }

  getCaps(capsetId: number, capsetVersion: number, size: number): Uint8Array {
    try {
      const r = this.#call(Op.GET_CAPS, (v) => {
        v.setUint32(8, capsetId, true)
        v.setUint32(12, capsetVersion, true)
        v.setUint32(16, size, true)
        return 20
      })
      const out = new Uint8Array(size)
      out.set(r.bytes.subarray(HEADER_SIZE, Math.min(r.length, HEADER_SIZE + size)))
      return out
    } catch (e) {
      if (e instanceof VirtGpuError && e.errno === Errno.EINVAL && e.reason === "Ioctl" && size > 0)
        throw unsupportedCapset("VIRTGPU_GET_CAPS", Errno.EINVAL, capsetId, `version ${capsetVersion}`)
      throw e
    }
  }

  contextInit(capsetId: number, numRings: number, pollRingsMask: number): void {
    try {
      this.#call(Op.CONTEXT_INIT, (v) => {
        v.setUint32(8, 3, true)
        v.setUint32(12, 0, true)
        const params: Array<[number, number]> = [
          [CONTEXT_PARAM_CAPSET_ID, capsetId],
          [CONTEXT_PARAM_NUM_RINGS, numRings],
          [CONTEXT_PARAM_POLL_RINGS_MASK, pollRingsMask]
        ]
        params.forEach(([p, value], i) => {
          v.setBigUint64(16 + 16 * i, BigInt(p), true)
          v.setBigUint64(24 + 16 * i, BigInt(value), true)
        })
        return 16 + 16 * params.length
      })
      this.#numRings = numRings
    } catch (e) {
      if (e instanceof VirtGpuError && e.reason === "Ioctl" && e.errno === Errno.EINVAL)
        throw unsupportedCapset("VIRTGPU_CONTEXT_INIT", Errno.EINVAL, capsetId, `or ${numRings} rings / poll mask 0x${pollRingsMask.toString(16)} rejected`)
      if (e instanceof VirtGpuError && e.errno === Errno.EEXIST)
        throw virtGpuError("VIRTGPU_CONTEXT_INIT", Errno.EEXIST, "this device file already has a context")
      throw e
    }
  }

  createBlob(args: CreateBlobArgs): Blob {
    const r = this.#call(
      Op.CREATE_BLOB,
      (v) => {
        v.setUint32(8, args.blobMem, true)
        v.setUint32(12, args.blobFlags, true)
        v.setBigUint64(16, BigInt(args.size), true)
        v.setBigUint64(24, BigInt.asUintN(64, args.blobId), true)
        return 32
      },
      [],
      `mem ${args.blobMem}, size ${args.size}, blob_id ${args.blobId}`
    )
    const handle = r.view.getUint32(8, true)
    this.#handles.add(handle)
    this.#implicitContext()
    return { handle, resId: r.view.getUint32(12, true) }
  }

  map(handle: number, size: number): Mapping {
    const r = this.#call(
      Op.MAP,
      (v) => {
        v.setUint32(8, handle, true)
        return 12
      },
      [],
      `handle ${handle}`
    )
    const objectSize = Number(r.view.getBigUint64(8, true))
    const fd = r.fds[0]
    if (fd === undefined) throw new VirtGpuError({ reason: "Protocol", op: "VIRTGPU_MAP", errno: Errno.EPROTO, message: "VIRTGPU_MAP: no memory fd in the reply" })
    try {
      if (!(size > 0) || size > objectSize) throw virtGpuError("mmap", Errno.EINVAL, `handle ${handle}: ${size} bytes of a ${objectSize}-byte object`)
      let address = sys.mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
      if (address === -Errno.EPERM || address === -Errno.EACCES) address = sys.mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
      if (address < 0) throw virtGpuError("mmap", -address, `handle ${handle}, ${size} bytes`)
      const view = new Uint8Array(viewOf(address, size))
      let mapped = true
      return {
        view,
        unmap: () => {
          if (!mapped) return
          mapped = false
          sys.munmap(address, size)
        }
      }
    } finally {
      sys.close(fd)
    }
  }

  /** One-way: the kernel's checks here, then one datagram; the emulator's verdict comes later (see the module comment). */
  execbuffer(args: ExecbufferArgs): void {
    const op = "VIRTGPU_EXECBUFFER"
    if (this.#fd < 0) throw closedError(op, this.name)
    if (this.#failure !== null) throw this.#failure
    const bos = args.boHandles ?? []
    const cmd = args.command
    const ringIdx = args.ringIdx
    const length = EXECBUFFER_FIXED + 4 * bos.length + cmd.length
    if (length > MAX_REQUEST) throw virtGpuError(op, Errno.E2BIG, `${cmd.length}-byte command exceeds the emulator's ${MAX_REQUEST}-byte request`)
    // virtio_gpu_execbuffer_ioctl: the ring must exist in this file's context.
    if (ringIdx !== undefined && !(ringIdx >= 0 && ringIdx < this.#numRings)) throw virtGpuError(op, Errno.EINVAL, `ring ${ringIdx}`)
    for (let i = 0; i < bos.length; i++) if (!this.#handles.has(bos[i]!)) throw virtGpuError(op, Errno.ENOENT, `handle ${bos[i]}`)
    const io = this.#io
    io.ensureOut(length)
    const v = io.outView
    v.setUint32(0, Op.EXECBUFFER, true)
    v.setUint32(4, 0, true)
    v.setUint32(8, ringIdx !== undefined ? EXECBUF_RING_IDX : 0, true)
    v.setUint32(12, ringIdx ?? 0, true)
    v.setUint32(16, bos.length, true)
    v.setUint32(20, cmd.length, true)
    for (let i = 0; i < bos.length; i++) v.setUint32(EXECBUFFER_FIXED + 4 * i, bos[i]!, true)
    io.outBuf.set(cmd, EXECBUFFER_FIXED + 4 * bos.length)
    const sent = io.send(this.#fd, length, [], MSG_NOSIGNAL)
    if (sent < 0) {
      const why = sent === -Errno.EAGAIN ? `the emulator took no submission for ${SEND_TIMEOUT_MS} ms` : `sending to the emulator at ${this.socketPath}`
      throw virtGpuError(op, -sent, why, sent === -Errno.EBADF ? "Ioctl" : "Protocol")
    }
    this.#submissions++
    this.#implicitContext()
  }

  readEvents(): readonly number[] {
    if (this.#fd < 0) throw closedError("read events", this.name)
    if (this.#failure !== null) throw this.#failure
    for (;;) {
      const n = sys.read(this.eventFd, this.#count, 8)
      if (n === -Errno.EINTR) continue
      if (n === -Errno.EAGAIN) return []
      if (n < 0) throw virtGpuError("read events", -n, this.name)
      const count = this.#count[0]!
      if (count >= EVENT_ERROR_MARK) throw this.#takeNotice()
      // One fence per wake-up is the usual case: no array for it.
      return count === 1n ? ONE_FENCE : new Array<number>(Number(count)).fill(EVENT_FENCE_SIGNALED)
    }
  }

  resourceInfo(handle: number): ResourceInfo {
    const r = this.#call(
      Op.RESOURCE_INFO,
      (v) => {
        v.setUint32(8, handle, true)
        return 12
      },
      [],
      `handle ${handle}`
    )
    return { resId: r.view.getUint32(8, true), size: r.view.getUint32(12, true), blobMem: r.view.getUint32(16, true) }
  }

  primeHandleToFd(handle: number): number {
    const r = this.#call(
      Op.PRIME_HANDLE_TO_FD,
      (v) => {
        v.setUint32(8, handle, true)
        v.setUint32(12, DRM_CLOEXEC | DRM_RDWR, true)
        return 16
      },
      [],
      `handle ${handle}`
    )
    const fd = r.fds[0]
    if (fd === undefined) throw new VirtGpuError({ reason: "Protocol", op: "PRIME_HANDLE_TO_FD", errno: Errno.EPROTO, message: "PRIME_HANDLE_TO_FD: no fd in the reply" })
    return fd
  }

  primeFdToHandle(fd: number): number {
    const r = this.#call(Op.PRIME_FD_TO_HANDLE, undefined, [fd], `fd ${fd}`)
    const handle = r.view.getUint32(8, true)
    this.#handles.add(handle)
    this.#implicitContext()
    return handle
  }

  gemClose(handle: number): void {
    this.#handles.delete(handle)
    this.#call(
      Op.GEM_CLOSE,
      (v) => {
        v.setUint32(8, handle, true)
        return 12
      },
      [],
      `handle ${handle}`
    )
  }

  wait(handle: number, nowait = false): boolean {
    try {
      this.#call(
        Op.WAIT,
        (v) => {
          v.setUint32(8, handle, true)
          v.setUint32(12, nowait ? WAIT_NOWAIT : 0, true)
          return 16
        },
        [],
        `handle ${handle}`
      )
      return true
    } catch (e) {
      if (nowait && e instanceof VirtGpuError && e.errno === Errno.EBUSY) return false
      throw e
    }
  }

  /** The host's view of `length` bytes of resource `resId` at `offset` (emulator only). */
  debugRead(resId: number, offset: number, length: number): Uint8Array {
    const r = this.#call(Op.DEBUG_READ, (v) => {
      v.setUint32(8, resId, true)
      v.setUint32(12, offset, true)
      v.setUint32(16, length, true)
      return 20
    })
    return r.bytes.slice(HEADER_SIZE, r.length)
  }

  /** Fault injection (emulator only): the emulator refuses this file's next EXECBUFFER with `errno`. */
  debugFailNextSubmission(errno: number): void {
    this.#call(Op.DEBUG_FAIL_SUBMISSION, (v) => {
      v.setUint32(8, errno, true)
      return 12
    })
  }

  /** The emulator's state (files, resources, cross-domain contexts) as JSON-decoded data. */
  debugState(): DebugState {
    const r = this.#call(Op.DEBUG_STATE)
    return JSON.parse(utf8.decode(r.bytes.subarray(HEADER_SIZE, r.length))) as DebugState
  }

  /** Idempotent: the emulator destroys the context (worker stopped, compositor connection closed). */
  close(): void {
    if (this.#fd < 0) return
    sys.close(this.#fd)
    sys.close(this.eventFd)
    this.#fd = -1
  }
}

export interface DebugState {
  readonly file: number
  readonly connections: number
  readonly files: ReadonlyArray<{
    readonly id: number
    readonly handles: ReadonlyArray<readonly [number, number]>
    readonly context: {
      readonly capsetId: number
      readonly numRings: number
      readonly pollMask: number
      readonly crossDomain: Record<string, unknown> | null
    } | null
  }>
  readonly resources: ReadonlyArray<{
    readonly resId: number
    readonly blobMem: number
    readonly size: number
    readonly handles: number
    readonly exported: boolean
    readonly hasMemory: boolean
  }>
}

/** Opens one device file on the emulator at `socketPath`. Throws VirtGpuError. */
export const openEmulatedDevice = (socketPath: string): EmulatedDevice => new EmulatedDevice(socketPath)

const attempt = <A>(f: () => A): Effect.Effect<A, VirtGpuError> =>
  Effect.try({
    try: f,
    catch: (e) => (e instanceof VirtGpuError ? e : new VirtGpuError({ reason: "Protocol", op: "open", errno: Errno.EIO, message: String(e) }))
  })

/** The emulated service; checks once, when built, that the emulator answers. */
export const makeEmulated = (socketPath: string): Effect.Effect<VirtGpuService, VirtGpuError> =>
  attempt(() => new EmulatedDevice(socketPath).close()).pipe(
    Effect.as({
      open: Effect.acquireRelease(attempt(() => openEmulatedDevice(socketPath)), (d) => Effect.sync(() => d.close())),
      openSync: () => openEmulatedDevice(socketPath)
    } satisfies VirtGpuService)
  )

export const emulatedLayer = (socketPath: string): Layer.Layer<VirtGpu, VirtGpuError> => Layer.effect(VirtGpu, makeEmulated(socketPath))
