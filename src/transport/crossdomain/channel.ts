/**
 * One cross-domain channel: the guest half of one host-compositor connection over virtio-gpu
 * (spec `cross-domain.md` §2). One opened `VirtGpuDevice` per guest client, one context
 * (capset 5, 2 rings, ring 1 in the poll mask), two one-page GUEST rings, one INIT, and exactly
 * one POLL outstanding on ring 1 at any time.
 *
 * Host → guest: each signalled ring-1 fence means the host left exactly one message in the
 * channel ring. `pump` reads it: RECEIVE (Wayland bytes + identifiers turned into fds: blobs are
 * created and exported as dma-bufs, write pipes become local pipes whose read end this channel
 * forwards with WRITE), READ (data for a read pipe: written to the client's fd), or an empty
 * RECEIVE (the compositor hung up); then it re-arms POLL.
 *
 * Re-arming: POLL is a no-op command whose ring-1 fence is what the host answers, so a SEND or
 * WRITE can carry it — one submission on ring 1 holding the command then POLL, instead of two
 * (each a VMM notification). When it goes out is the owner's choice (`ChannelOptions.rearm`):
 * - "settle" (what a proxied connection uses): the owner calls `settle(readPending)` once it has
 *   handled what `pump` delivered. `readPending` reads requests that are already waiting (a
 *   non-blocking read of the client), so they carry the POLL; if none did, it goes out alone
 *   right then. Events never wait on the client, and no timer or loop hop is involved.
 * - "deferred" (the default, for owners that do not settle): the POLL waits for the next SEND
 *   or WRITE, but goes out alone no later than the end of the next event-loop turn (two
 *   `setImmediate` hops: a request that arrived meanwhile is read first). The hops cost
 *   ~3 µs of CPU per round trip, which is why connections settle instead.
 * - "now": inside `pump`, one POLL per fence (tests that count submissions).
 *
 * Guest → host: `send` splits bytes into SENDs of ≤ 3744 bytes with ≤ 28 identifiers each (fds
 * ride on the first piece), translating each fd: a virtio-gpu blob (PRIME import succeeds) or a
 * read pipe adopted by `adoptReadPipe`, matched by inode. Anything else cannot cross: callers
 * check with `precheck` first, so the client can be told which message was refused.
 *
 * Synchronous and allocation-light, like the socket endpoint: the data path calls it from the
 * reactor. It does not know Wayland messages (hooks.ts does) and does not own the device (the
 * device's scope closes it); it owns the rings, the pipes and every fd it created.
 */
import { Data } from "effect"
import { fstatSync } from "node:fs"
import { Errno } from "../../ffi/errno.js"
import { F_DUPFD_CLOEXEC, F_GETFL, F_SETFL, O_CLOEXEC, O_NONBLOCK, sys } from "../../ffi/libc.js"
import {
  BLOB_FLAG_USE_MAPPABLE,
  BLOB_FLAG_USE_SHAREABLE,
  BLOB_MEM_GUEST,
  BLOB_MEM_HOST3D,
  EVENT_FENCE_SIGNALED,
  VirtGpuError,
  type Blob,
  type Mapping,
  type VirtGpuDevice
} from "../../virtgpu/device.js"
import { EPOLLIN, EPOLLOUT, EPOLLRDHUP, type Watch } from "../reactor.js"
import { memfdCreate } from "../memfd.js"
import * as P from "./protocol.js"

export class CrossDomainError extends Data.TaggedError("CrossDomainError")<{
  readonly reason: "NoWaylandChannel" | "Malformed" | "UnknownIdentifier" | "CannotCross" | "Device" | "Closed"
  readonly message: string
}> {}

/** What the channel needs of the reactor (pipes are serviced from it). */
export interface Watcher {
  watch(fd: number, events: number, onReady: (events: number) => void): Watch
}

export interface ChannelOptions {
  /** The reactor (called as a method: `reactor.watch` needs its `this`). */
  readonly reactor: Watcher
  /** Something went wrong with one pipe or one host message the channel could skip. */
  readonly onWarning?: (message: string) => void
  /** Bytes kept for a read-pipe reader that does not read before the pipe is dropped. Default 64 MiB. */
  readonly maxPipeBacklog?: number
  /** When POLL is re-armed after a fence (see the module comment). Default "deferred". */
  readonly rearm?: "settle" | "deferred" | "now"
  /**
   * The device's VMM side hung up (emulated devices: `VirtGpuDevice.hangupFd`): nothing will
   * ever arrive again. Called once, from the reactor; without it the hang-up is not watched.
   */
  readonly onDeviceLost?: (message: string) => void
}

/** What `classify` found an fd to be. */
export type FdKind =
  | { readonly _tag: "Blob"; readonly resId: number; readonly size: number }
  | { readonly _tag: "ReadPipe"; readonly key: string }

interface ReadPipe {
  /** Our duplicate of the fd the client passed (the write end of its pipe), non-blocking. */
  readonly fd: number
  readonly queue: Uint8Array[]
  queued: number
  hangUp: boolean
  watch: Watch | null
}

interface WritePipe {
  /** Read end of the pipe whose write end the client got. */
  readonly fd: number
  readonly watch: Watch
}

const FENCE_POLL = P.encodePoll()
const NO_IDENTIFIERS: readonly P.Identifier[] = []
/** Runs `f` at the end of the next event-loop turn: after the I/O that turn finds. */
const nextTurn = (f: () => void): void => void setImmediate(() => void setImmediate(f))
/** WRITE chunks per readiness wake-up of one pipe before the reactor serves others. */
const MAX_CHUNKS_PER_WAKE = 16

const inodeKey = (fd: number): string | null => {
  try {
    const st = fstatSync(fd)
    return `${st.dev}:${st.ino}`
  } catch {
    return null
  }
}

const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))

export class CrossDomainChannel {
  readonly caps: P.Capabilities
  readonly #device: VirtGpuDevice
  readonly #options: ChannelOptions
  readonly #query: Blob
  readonly #channel: Blob
  readonly #queryMap: Mapping
  readonly #channelMap: Mapping
  /** Room for the largest SEND or WRITE plus a POLL riding with it. */
  readonly #sendBuf = new Uint8Array(P.RING_SIZE + P.POLL_SIZE)
  readonly #pipeBuf = new Uint8Array(P.RING_SIZE + P.POLL_SIZE)
  #pollArmed = false
  /** Identifier slots the last SEND in `#sendBuf` filled. */
  #sendIdsUsed = P.MAX_IDENTIFIERS
  /** A fence was consumed and its POLL not yet re-armed (deferred re-arm). */
  #rearmDue = false
  #rearmScheduled = false
  readonly #rearmMode: "settle" | "deferred" | "now"
  #hostEof = false
  #closed = false
  #readPipeCounter = P.PIPE_READ_START
  /** Adopted read-pipe fds waiting for their SEND, by inode. */
  readonly #pendingReadPipes = new Map<string, number>()
  readonly #readPipes = new Map<number, ReadPipe>()
  readonly #writePipes = new Map<number, WritePipe>()
  /** `precheck` results for fds that are about to be sent (cleared after every `send`). */
  readonly #checked = new Map<number, FdKind>()
  /** Counters for tests and diagnostics. */
  readonly counters = { polls: 0, fences: 0, receives: 0, reads: 0, sends: 0, writes: 0 }

  private constructor(device: VirtGpuDevice, options: ChannelOptions, caps: P.Capabilities, query: Blob, queryMap: Mapping, channel: Blob, channelMap: Mapping) {
    this.#device = device
    this.#options = options
    this.caps = caps
    this.#query = query
    this.#queryMap = queryMap
    this.#channel = channel
    this.#channelMap = channelMap
    this.#rearmMode = options.rearm ?? "deferred"
  }

  /**
   * Sets up the channel on a freshly opened device (spec §2 steps 3–8): GET_CAPS (the host must
   * offer a Wayland channel), CONTEXT_INIT, the two rings, INIT, the first POLL. Throws
   * `VirtGpuError` or `CrossDomainError`; what was created is released on failure.
   */
  static open(device: VirtGpuDevice, options: ChannelOptions): CrossDomainChannel {
    const caps = P.decodeCapabilities(device.getCaps(P.CAPSET_CROSS_DOMAIN, P.CAPSET_VERSION, P.CAPS_SIZE))
    if ((caps.supportedChannels & (1 << P.CHANNEL_TYPE_WAYLAND)) === 0) {
      throw new CrossDomainError({
        reason: "NoWaylandChannel",
        message: `${device.name}: the host's cross-domain context offers no Wayland channel (supported_channels 0x${caps.supportedChannels.toString(16)})`
      })
    }
    // Before anything else that could create the context implicitly (EEXIST otherwise).
    device.contextInit(P.CAPSET_CROSS_DOMAIN, P.NUM_RINGS, P.POLL_RINGS_MASK)
    const undo: Array<() => void> = []
    try {
      const ring = (): [Blob, Mapping] => {
        // One page: the host writes only into the first scatter segment of a GUEST blob.
        const blob = device.createBlob({ blobMem: BLOB_MEM_GUEST, blobFlags: BLOB_FLAG_USE_MAPPABLE, size: P.RING_SIZE, blobId: 0n })
        undo.push(() => device.gemClose(blob.handle))
        const map = device.map(blob.handle, P.RING_SIZE)
        undo.push(() => map.unmap())
        return [blob, map]
      }
      const [query, queryMap] = ring()
      const [channel, channelMap] = ring()
      // INIT alone in its buffer: hosts tell INIT variants apart by size.
      device.execbuffer({ command: P.encodeInit({ queryRingId: query.resId, channelRingId: channel.resId, channelType: P.CHANNEL_TYPE_WAYLAND }) })
      const ch = new CrossDomainChannel(device, options, caps, query, queryMap, channel, channelMap)
      ch.#arm()
      ch.#watchHangup()
      return ch
    } catch (e) {
      for (const f of undo.reverse()) {
        try {
          f()
        } catch {
          // Best effort: the device is closed with its scope anyway.
        }
      }
      throw e
    }
  }

  #hangupWatch: Watch | null = null

  /** Watches the device's hang-up fd, if it has one and the owner wants to know (best effort). */
  #watchHangup(): void {
    const fd = this.#device.hangupFd
    const lost = this.#options.onDeviceLost
    if (fd === undefined || fd < 0 || lost === undefined) return
    // libuv makes a polled fd non-blocking; the device's requests block on it (like ioctls), so
    // its flags are put back once the watch exists (polling does not need O_NONBLOCK).
    const flags = sys.fcntl(fd, F_GETFL)
    try {
      this.#hangupWatch = this.#options.reactor.watch(fd, EPOLLRDHUP, () => {
        this.#hangupWatch?.close()
        this.#hangupWatch = null
        if (this.#closed) return
        // A host side that stopped in order said why (a notice behind the event fd): prefer that.
        let message = `${this.#device.name}: the device's host side hung up (the emulator is gone)`
        try {
          this.#device.readEvents()
        } catch (e) {
          if (e instanceof VirtGpuError) message = e.message
        }
        lost(message)
      })
    } catch (e) {
      this.#warn(`cannot watch ${this.#device.name} for a hang-up: ${describe(e)}`)
    } finally {
      if (flags >= 0) sys.fcntl(fd, F_SETFL, flags)
    }
  }

  get device(): VirtGpuDevice {
    return this.#device
  }

  /** The fd the reactor watches: readable while fence events are queued. */
  get eventFd(): number {
    return this.#device.eventFd
  }

  get hostEof(): boolean {
    return this.#hostEof
  }

  get closed(): boolean {
    return this.#closed
  }

  /** Open pipes, for tests and diagnostics. */
  get pipes(): { readonly read: number; readonly write: number; readonly pendingRead: number } {
    return { read: this.#readPipes.size, write: this.#writePipes.size, pendingRead: this.#pendingReadPipes.size }
  }

  #arm(): void {
    this.#device.execbuffer({ command: FENCE_POLL, ringIdx: P.CHANNEL_RING })
    this.#armed()
  }

  #armed(): void {
    this.#pollArmed = true
    this.#rearmDue = false
    this.counters.polls++
  }

  /** Re-arm after a fence: now, or by `settle`, or by the next SEND/WRITE or the end of the next loop turn. */
  #rearm(): void {
    if (this.#rearmMode === "now") return this.#arm()
    this.#rearmDue = true
    if (this.#rearmMode === "settle" || this.#rearmScheduled) return
    this.#rearmScheduled = true
    nextTurn(this.#lateRearm)
  }

  readonly #lateRearm = (): void => {
    this.#rearmScheduled = false
    if (!this.#rearmDue || this.#closed || this.#hostEof) return
    try {
      this.#arm()
    } catch (e) {
      // Outside any caller: kept for the next pump or send to throw (no host message can
      // arrive before then anyway: no POLL is outstanding).
      this.#lateError = e
      this.#warn(`re-arming POLL failed: ${describe(e)}`)
    }
  }

  #lateError: unknown = null

  /**
   * ("settle" mode) The owner has handled what `pump` delivered: a POLL still due is re-armed
   * now — after `readPending` (which may submit requests that carry it) when given. Throws
   * `VirtGpuError` when the submission fails. A no-op when nothing is due.
   */
  settle(readPending?: () => void): void {
    if (!this.#rearmDue) return
    if (readPending !== undefined) readPending()
    if (!this.#rearmDue || this.#closed || this.#hostEof) return
    if (this.#lateError !== null) throw this.#lateError
    this.#arm()
  }

  /**
   * Submits `buf[0, size)`; a due POLL rides along (appended, submission on ring 1), so one
   * submission does both. `buf` has room for it after `size`.
   */
  #submit(buf: Uint8Array, size: number): void {
    if (!this.#rearmDue) {
      this.#device.execbuffer({ command: buf.subarray(0, size) })
      return
    }
    buf.set(FENCE_POLL, size)
    this.#device.execbuffer({ command: buf.subarray(0, size + P.POLL_SIZE), ringIdx: P.CHANNEL_RING })
    this.#armed()
  }

  #warn(message: string): void {
    this.#options.onWarning?.(message)
  }

  // -----------------------------------------------------------------------------------------------
  // Host → guest

  /**
   * Consumes signalled fences: for each, handles the one message in the channel ring and re-arms
   * POLL. A RECEIVE is passed to `onReceive` (data is a view into the ring: copy it before
   * returning; the fds are the caller's). Returns "data" when a RECEIVE was delivered, "again"
   * when not, "eof" once the compositor hung up (no more POLLs are armed then).
   * Throws `CrossDomainError` (a host message it cannot use) or `VirtGpuError`.
   */
  pump(onReceive: (data: Uint8Array, fds: readonly number[]) => void): "data" | "again" | "eof" {
    if (this.#closed) throw new CrossDomainError({ reason: "Closed", message: "pump on a closed channel" })
    if (this.#lateError !== null) throw this.#lateError
    if (this.#hostEof) return "eof"
    let got = false
    for (const type of this.#device.readEvents()) {
      if (type !== EVENT_FENCE_SIGNALED) continue
      if (!this.#pollArmed) {
        // Only a POLL fence is in the poll mask; anything else must not make us read the ring twice.
        this.#warn(`fence event with no POLL outstanding (ignored)`)
        continue
      }
      this.#pollArmed = false
      this.counters.fences++
      if (this.#handleRing(onReceive)) got = true
      if (this.#hostEof) return "eof"
      this.#rearm()
    }
    return got ? "data" : "again"
  }

  /** One message from the channel ring. True when a RECEIVE was delivered. */
  #handleRing(onReceive: (data: Uint8Array, fds: readonly number[]) => void): boolean {
    const msg = P.decodeChannelRing(this.#channelMap.view)
    if (P.isMalformed(msg)) throw new CrossDomainError({ reason: "Malformed", message: `channel ring: ${msg.message}` })
    switch (msg._tag) {
      case "Receive": {
        this.counters.receives++
        if (msg.identifiers.length === 0 && msg.data.length === 0) {
          // rutabaga's way of saying the compositor closed its socket (spec §4.9).
          this.#hostEof = true
          return false
        }
        const fds = this.#importIdentifiers(msg.identifiers)
        onReceive(msg.data, fds)
        return true
      }
      case "Read":
        this.counters.reads++
        this.#onRead(msg.identifier, msg.hangUp, msg.data)
        return false
      case "Send":
      case "Write":
      case "Unknown":
        throw new CrossDomainError({
          reason: "Malformed",
          message: `channel ring holds command ${msg._tag === "Unknown" ? msg.cmd : msg._tag === "Send" ? P.CMD_SEND : P.CMD_WRITE}, expected RECEIVE or READ`
        })
    }
  }

  /** RECEIVE identifiers → fds (spec §2 step 10); on failure every fd made so far is closed. */
  #importIdentifiers(ids: readonly P.Identifier[]): number[] {
    const fds: number[] = []
    try {
      for (const ident of ids) fds.push(this.#importOne(ident))
      return fds
    } catch (e) {
      for (const fd of fds) sys.close(fd)
      throw e
    }
  }

  #importOne(ident: P.Identifier): number {
    switch (ident.type) {
      case P.ID_TYPE_VIRTGPU_BLOB: {
        if (ident.size === 0) {
          // No blob of size 0 exists (e.g. /dev/null for a no_keymap keymap; or crosvm 2024-11…2025-09
          // labelling a write pipe as a blob): the client gets an empty file instead.
          this.#warn(`RECEIVE: blob identifier ${ident.id} has size 0; passing an empty file`)
          return memfdCreate("sommelier-empty", 0)
        }
        const dev = this.#device
        const blob = dev.createBlob({
          blobMem: BLOB_MEM_HOST3D,
          blobFlags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
          size: ident.size,
          blobId: BigInt(ident.id)
        })
        try {
          return dev.primeHandleToFd(blob.handle)
        } finally {
          // The dma-buf keeps the resource; our handle would keep it attached forever.
          dev.gemClose(blob.handle)
        }
      }
      case P.ID_TYPE_WRITE_PIPE: {
        const ends = new Int32Array(2)
        const r = sys.pipe2(ends, O_CLOEXEC)
        if (r < 0) throw new CrossDomainError({ reason: "Device", message: `pipe2 for host write pipe ${ident.id}: errno ${-r}` })
        const readEnd = ends[0]!
        const writeEnd = ends[1]!
        // Only our end is non-blocking: the client's write end keeps its own file description.
        sys.fcntl(readEnd, F_SETFL, (sys.fcntl(readEnd, F_GETFL) | O_NONBLOCK) >>> 0)
        const old = this.#writePipes.get(ident.id)
        if (old !== undefined) this.#closeWritePipe(ident.id, old)
        let watch: Watch
        try {
          watch = this.#options.reactor.watch(readEnd, EPOLLIN, () => this.#onWritePipeReadable(ident.id))
        } catch (e) {
          sys.close(readEnd)
          sys.close(writeEnd)
          throw e
        }
        this.#writePipes.set(ident.id, { fd: readEnd, watch })
        return writeEnd
      }
      default:
        throw new CrossDomainError({ reason: "UnknownIdentifier", message: `RECEIVE: identifier ${ident.id} has type ${ident.type}, which a Wayland channel does not use` })
    }
  }

  /** The client wrote into a host write pipe (e.g. `wl_data_source.send`): forward with WRITE. */
  #onWritePipeReadable(id: number): void {
    const pipe = this.#writePipes.get(id)
    if (pipe === undefined || this.#closed) return
    const buf = this.#pipeBuf
    const data = buf.subarray(P.READ_WRITE_HEADER_SIZE)
    try {
      for (let i = 0; i < MAX_CHUNKS_PER_WAKE; i++) {
        const n = sys.read(pipe.fd, data, P.MAX_WRITE_DATA)
        if (n === -Errno.EAGAIN) return
        if (n === -Errno.EINTR) continue
        if (n <= 0) {
          // EOF (or a read error, which ends the stream the same way for the compositor).
          if (n < 0) this.#warn(`write pipe ${id}: read failed with errno ${-n}`)
          this.#submitWrite(id, true, 0)
          this.#closeWritePipe(id, pipe)
          return
        }
        this.#submitWrite(id, false, n)
      }
    } catch (e) {
      this.#warn(`write pipe ${id}: ${describe(e)}`)
      this.#closeWritePipe(id, pipe)
    }
  }

  /** WRITE {id, hang_up, data already at pipeBuf[24, 24 + n)}. */
  #submitWrite(id: number, hangUp: boolean, n: number): void {
    const buf = this.#pipeBuf
    const size = P.writeReadWriteInto(buf, P.CMD_WRITE, id, hangUp, buf, P.READ_WRITE_HEADER_SIZE, n)
    this.#submit(buf, size)
    this.counters.writes++
  }

  #closeWritePipe(id: number, pipe: WritePipe): void {
    pipe.watch.close()
    sys.close(pipe.fd)
    this.#writePipes.delete(id)
  }

  /** READ: data for the read pipe `id`, written to the client's fd; hang_up closes it. */
  #onRead(id: number, hangUp: boolean, data: Uint8Array): void {
    const pipe = this.#readPipes.get(id)
    if (pipe === undefined) return // dropped earlier (reader gone): the host still drains its end
    if (data.length > 0) {
      if (pipe.queued > 0) this.#queueRead(id, pipe, data.slice())
      else {
        const n = this.#writeSome(pipe.fd, data)
        if (n < 0) {
          if (n !== -Errno.EPIPE) this.#warn(`read pipe 0x${id.toString(16)}: write failed with errno ${-n}`)
          this.#closeReadPipe(id, pipe)
          return
        }
        if (n < data.length) this.#queueRead(id, pipe, data.slice(n))
      }
    }
    if (hangUp) {
      pipe.hangUp = true
      if (pipe.queued === 0) this.#closeReadPipe(id, pipe)
    }
  }

  /** write() until done or EAGAIN; bytes written, or -errno. */
  #writeSome(fd: number, data: Uint8Array): number {
    let done = 0
    while (done < data.length) {
      const n = sys.write(fd, data.subarray(done), data.length - done)
      if (n === -Errno.EINTR) continue
      if (n === -Errno.EAGAIN) return done
      if (n < 0) return n
      done += n
    }
    return done
  }

  #queueRead(id: number, pipe: ReadPipe, chunk: Uint8Array): void {
    const max = this.#options.maxPipeBacklog ?? 64 * 1024 * 1024
    if (pipe.queued + chunk.length > max) {
      this.#warn(`read pipe 0x${id.toString(16)}: the reader is more than ${max} bytes behind; dropped`)
      this.#closeReadPipe(id, pipe)
      return
    }
    pipe.queue.push(chunk)
    pipe.queued += chunk.length
    if (pipe.watch === null) pipe.watch = this.#options.reactor.watch(pipe.fd, EPOLLOUT, () => this.#flushRead(id))
  }

  #flushRead(id: number): void {
    const pipe = this.#readPipes.get(id)
    if (pipe === undefined) return
    while (pipe.queue.length > 0) {
      const chunk = pipe.queue[0]!
      const n = this.#writeSome(pipe.fd, chunk)
      if (n < 0) {
        if (n !== -Errno.EPIPE) this.#warn(`read pipe 0x${id.toString(16)}: write failed with errno ${-n}`)
        this.#closeReadPipe(id, pipe)
        return
      }
      pipe.queued -= n
      if (n < chunk.length) {
        pipe.queue[0] = chunk.subarray(n)
        return
      }
      pipe.queue.shift()
    }
    pipe.watch?.close()
    pipe.watch = null
    if (pipe.hangUp) this.#closeReadPipe(id, pipe)
  }

  #closeReadPipe(id: number, pipe: ReadPipe): void {
    pipe.watch?.close()
    pipe.watch = null
    sys.close(pipe.fd)
    pipe.queue.length = 0
    pipe.queued = 0
    this.#readPipes.delete(id)
  }

  // -----------------------------------------------------------------------------------------------
  // Guest → host

  /**
   * A guest reader's fd (the write end of the client's pipe in `wl_data_offer.receive` and the
   * like): keep a non-blocking duplicate to write READ data into; the fd itself still travels in
   * the message and `send` turns it into a READ_PIPE identifier by its inode. Does not take `fd`.
   */
  adoptReadPipe(fd: number): void {
    const key = inodeKey(fd)
    if (key === null) throw new CrossDomainError({ reason: "CannotCross", message: `fd ${fd} cannot be inspected` })
    const dup = sys.fcntl(fd, F_DUPFD_CLOEXEC, 0)
    if (dup < 0) throw new CrossDomainError({ reason: "Device", message: `dup of read-pipe fd failed with errno ${-dup}` })
    sys.fcntl(dup, F_SETFL, (sys.fcntl(dup, F_GETFL) | O_NONBLOCK) >>> 0)
    const old = this.#pendingReadPipes.get(key)
    if (old !== undefined) sys.close(old)
    this.#pendingReadPipes.set(key, dup)
  }

  /**
   * What `fd` would cross as (spec §2 step 12), or null when it cannot cross. A PRIME import that
   * succeeds leaves a GEM handle in this file: it is not closed (closing the last handle would
   * detach the resource from the context before the host used it).
   */
  classify(fd: number): FdKind | null {
    const dev = this.#device
    let handle: number | undefined
    try {
      handle = dev.primeFdToHandle(fd)
    } catch (e) {
      if (!(e instanceof VirtGpuError)) throw e
    }
    if (handle !== undefined) {
      const info = dev.resourceInfo(handle)
      return { _tag: "Blob", resId: info.resId, size: info.size }
    }
    const key = inodeKey(fd)
    if (key !== null && this.#pendingReadPipes.has(key)) return { _tag: "ReadPipe", key }
    return null
  }

  /** `classify` ahead of `send` (in a hook, so a refusal can name the message). True when it can cross. */
  precheck(fd: number): boolean {
    const kind = this.classify(fd)
    if (kind === null) return false
    this.#checked.set(fd, kind)
    return true
  }

  /**
   * Sends `data[offset, offset + length)` with `fds` (owned: every one is closed before this
   * returns or throws). Throws `CrossDomainError` "CannotCross" when an fd is neither a blob nor
   * an adopted read pipe (nothing is sent then), or `VirtGpuError` when the device fails.
   */
  send(data: Uint8Array, offset: number, length: number, fds: readonly number[]): void {
    if (fds.length === 0) {
      // The common case (most requests carry no fd): no identifier lists.
      if (this.#closed) throw new CrossDomainError({ reason: "Closed", message: "send on a closed channel" })
      if (this.#lateError !== null) throw this.#lateError
      for (let pos = offset, end = offset + length; pos < end; ) {
        const n = Math.min(P.MAX_SEND_DATA, end - pos)
        this.#submitSend(NO_IDENTIFIERS, data, pos, n)
        pos += n
      }
      return
    }
    let idents: P.Identifier[]
    try {
      if (this.#closed) throw new CrossDomainError({ reason: "Closed", message: "send on a closed channel" })
      if (this.#lateError !== null) throw this.#lateError
      idents = this.#translate(fds)
    } finally {
      for (const fd of fds) sys.close(fd)
      this.#checked.clear()
    }
    // Groups of ≤ 28 identifiers with ≤ 1 READ_PIPE each (the host creates one pipe per SEND).
    // All but the last group ride on one byte of their own so every fd arrives before the
    // bytes of the message that carries it.
    const groups: P.Identifier[][] = []
    let cur: P.Identifier[] = []
    let curRead = false
    for (const id of idents) {
      const isRead = id.type === P.ID_TYPE_READ_PIPE
      if (cur.length === P.MAX_IDENTIFIERS || (isRead && curRead)) {
        groups.push(cur)
        cur = []
        curRead = false
      }
      cur.push(id)
      if (isRead) curRead = true
    }
    if (cur.length > 0) groups.push(cur)
    if (groups.length > 1 && length < groups.length) {
      throw new CrossDomainError({ reason: "CannotCross", message: `${fds.length} fds need at least ${groups.length} bytes to travel with, got ${length}` })
    }
    const end = offset + length
    let pos = offset
    for (let g = 0; g < groups.length; g++) {
      const n = g < groups.length - 1 ? 1 : Math.min(P.MAX_SEND_DATA, end - pos)
      this.#submitSend(groups[g]!, data, pos, n)
      pos += n
    }
    while (pos < end) {
      const n = Math.min(P.MAX_SEND_DATA, end - pos)
      this.#submitSend([], data, pos, n)
      pos += n
    }
  }

  #translate(fds: readonly number[]): P.Identifier[] {
    const out: P.Identifier[] = []
    for (const fd of fds) {
      const kind = this.#checked.get(fd) ?? this.classify(fd)
      if (kind === null) {
        throw new CrossDomainError({
          reason: "CannotCross",
          message: `fd ${fd} is neither a virtio-gpu blob nor a pipe of this proxy, so it cannot cross to the host`
        })
      }
      if (kind._tag === "Blob") {
        out.push({ id: kind.resId, type: P.ID_TYPE_VIRTGPU_BLOB, size: 0 })
      } else {
        const dup = this.#pendingReadPipes.get(kind.key)
        if (dup === undefined) throw new CrossDomainError({ reason: "CannotCross", message: `read pipe fd ${fd} was already sent` })
        this.#pendingReadPipes.delete(kind.key)
        // The guest picks the id; the host checks it against its own counter.
        this.#readPipeCounter = P.nextReadPipeId(this.#readPipeCounter)
        const id = this.#readPipeCounter
        this.#readPipes.set(id, { fd: dup, queue: [], queued: 0, hangUp: false, watch: null })
        out.push({ id, type: P.ID_TYPE_READ_PIPE, size: 0 })
      }
    }
    return out
  }

  #submitSend(ids: readonly P.Identifier[], data: Uint8Array, off: number, len: number): void {
    // Identifier slots past both this SEND's and the last one's count are still zero.
    const size = P.writeSendInto(this.#sendBuf, P.CMD_SEND, ids, data, off, len, Math.max(ids.length, this.#sendIdsUsed))
    this.#sendIdsUsed = ids.length
    this.#submit(this.#sendBuf, size)
    this.counters.sends++
  }

  // -----------------------------------------------------------------------------------------------
  // Images (host memory for the shm copy path)

  /**
   * GET_IMAGE_REQUIREMENTS (spec §2 step 14): the host's layout for a `width`×`height` image of
   * `drmFormat`, answered on the query ring before its ring-0 fence signals. Throws
   * `CrossDomainError` "Device" when the host wrote nothing (a format its allocator lacks).
   */
  imageRequirements(width: number, height: number, drmFormat: number, flags = 0x11 /* gbm SCANOUT | LINEAR, as sommelier */): P.ImageRequirements {
    if (this.#closed) throw new CrossDomainError({ reason: "Closed", message: "imageRequirements on a closed channel" })
    const ring = this.#queryMap.view
    // On a host error nothing is written but the fence still signals: zero first.
    ring.fill(0, 0, P.IMAGE_REQUIREMENTS_SIZE)
    this.#device.execbuffer({
      command: P.encodeGetImageRequirements({ width, height, drmFormat, flags }),
      ringIdx: P.QUERY_RING,
      boHandles: [this.#query.handle]
    })
    this.#device.wait(this.#query.handle)
    const r = P.decodeImageRequirements(ring)
    if (P.isMalformed(r) || r.size === 0n || r.blobId === 0) {
      throw new CrossDomainError({
        reason: "Device",
        message: `the host cannot allocate a ${width}x${height} image of format 0x${(drmFormat >>> 0).toString(16)} (GET_IMAGE_REQUIREMENTS left no answer)`
      })
    }
    return r
  }

  // -----------------------------------------------------------------------------------------------
  // Teardown

  /** Idempotent: closes every pipe, unmaps and releases the rings. The device stays open (its scope closes it). */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#rearmDue = false
    this.#hangupWatch?.close()
    this.#hangupWatch = null
    for (const [id, p] of this.#writePipes) this.#closeWritePipe(id, p)
    for (const [id, p] of this.#readPipes) this.#closeReadPipe(id, p)
    for (const fd of this.#pendingReadPipes.values()) sys.close(fd)
    this.#pendingReadPipes.clear()
    this.#checked.clear()
    this.#queryMap.unmap()
    this.#channelMap.unmap()
    for (const h of [this.#query.handle, this.#channel.handle]) {
      try {
        this.#device.gemClose(h)
      } catch {
        // The device may already be closed.
      }
    }
  }
}
