/**
 * The host half of one cross-domain context (capset 5), as rutabaga_gfx implements it (spec §4,
 * following "rutabaga 2026" where versions differ): the context's attached resources and item
 * table, `submitCmd` (INIT, GET_IMAGE_REQUIREMENTS, POLL, SEND, WRITE), fences per ring,
 * `contextCreateBlob`, and the "worker" that answers each ring-1 fence with exactly one message
 * (RECEIVE from the compositor socket or READ from a read pipe) written into the channel ring.
 *
 * The worker is event-driven instead of a thread: while a ring-1 fence is pending (and the worker
 * has not halted) the compositor socket and the read pipes are watched for EPOLLIN; the first
 * source reported ready is handled for the oldest pending fence; with no fence pending, nothing
 * is watched (so a hung-up fd cannot spin a level-triggered epoll).
 *
 * Errors never reach the guest: they are logged (host stderr) and, like rutabaga, abort the rest
 * of the command buffer; a failure inside the worker halts it (no ring-1 fence signals again).
 *
 * Not here: resources, GEM handles, files and fences' events (`gpu.ts`); the socket server.
 */
import { readlinkSync, fstatSync } from "node:fs"
import { Errno, SyscallError, describeErrno } from "../ffi/errno.js"
import {
  sys,
  F_DUPFD_CLOEXEC,
  F_GETFL,
  F_SETFL,
  MSG_CMSG_CLOEXEC,
  MSG_DONTWAIT,
  O_CLOEXEC,
  O_NONBLOCK,
  O_WRONLY,
  SEEK_END,
  SEEK_SET
} from "../ffi/libc.js"
import { EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, type ReactorService, type Watch } from "../transport/reactor.js"
import { connectUnixSync, SocketEndpoint } from "../transport/socket.js"
import { imageRequirements, MAP_ACCESS_RW, type ImageRequirements } from "./formats.js"
import { MsgIo } from "./msg.js"

// Cross-domain protocol (spec §3): the same wire constants the guest side encodes with.
import {
  CHANNEL_RING,
  CHANNEL_TYPE_INTERNAL_SOCKET,
  CMD_GET_IMAGE_REQUIREMENTS,
  CMD_INIT,
  CMD_POLL,
  CMD_READ,
  CMD_RECEIVE,
  CMD_SEND,
  CMD_WRITE,
  dataView,
  ID_TYPE_EVENT,
  ID_TYPE_READ_PIPE,
  ID_TYPE_SOCKET,
  ID_TYPE_VIRTGPU_BLOB,
  ID_TYPE_WRITE_PIPE,
  IMAGE_REQUIREMENTS_SIZE,
  MAX_IDENTIFIERS,
  MAX_SEND_DATA,
  PIPE_READ_START,
  QUERY_RING,
  READ_WRITE_HEADER_SIZE,
  SEND_HEADER_SIZE
} from "../transport/crossdomain/protocol.js"

/** A fence created by the device for this context; `gpu.ts` owns what signalling means. */
export interface Fence {
  readonly id: number
}

export interface AttachedResource {
  readonly resId: number
  /** Host memory (HOST3D blobs); -1 for guest-memory blobs. Owned by the device, not by us. */
  readonly fd: number
  /** The guest pages as the host sees them (GUEST blobs, e.g. the rings); null otherwise. */
  readonly guestView: Uint8Array | null
}

export interface CrossDomainHost {
  readonly reactor: ReactorService
  /** Configured channels: channel type → Unix socket path (Wayland = 1). */
  readonly channels: ReadonlyMap<number, string>
  readonly log: (line: string) => void
}

interface Watched {
  readonly fd: number
  watch: Watch | null
  /** The events `watch` listens for (0: silent or none). */
  events: number
}

interface ReadPipeItem extends Watched {
  readonly kind: "readPipe"
  readonly id: number
  readonly onReady: (events: number) => void
}

type Item =
  | { readonly kind: "requirements"; readonly reqs: ImageRequirements }
  | { readonly kind: "blob"; readonly fd: number }
  | ReadPipeItem
  | WritePipe
  | { readonly kind: "event"; readonly fd: number }
  | { readonly kind: "socket"; readonly fd: number }

interface WritePipe {
  readonly kind: "writePipe"
  id: number
  fd: number
  watch: Watch | null
  readonly queue: Uint8Array[]
  closing: boolean
}

const itemFd = (item: Item): number => (item.kind === "requirements" ? -1 : item.fd)

class CommandError extends Error {}

const u32 = (b: Uint8Array, off: number): number => (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24)) >>> 0

const errnoText = (n: number): string => {
  const d = describeErrno(n)
  return `${d.message} (${d.code})`
}

export class CrossDomainContext<F extends Fence = Fence> {
  readonly id: number
  readonly #host: CrossDomainHost
  readonly #signal: (fence: F) => void
  readonly #resources = new Map<number, AttachedResource>()
  readonly #items = new Map<number, Item>()
  readonly #draining = new Set<WritePipe>()
  /** The read-pipe items (also in `#items`): the sources the worker watches besides the socket. */
  readonly #readPipes = new Set<ReadPipeItem>()
  #descriptorId = 1
  #readPipeId = PIPE_READ_START
  #pathsTaken = false
  #state: { readonly queryRingId: number; readonly channelRingId: number } | null = null
  #channel: (Watched & { readonly endpoint: SocketEndpoint; writeBroken: boolean }) | null = null
  readonly #pending: F[] = []
  #halted = false
  #eof = false
  #destroyed = false
  readonly #io = new MsgIo(MAX_SEND_DATA)

  constructor(id: number, host: CrossDomainHost, signal: (fence: F) => void) {
    this.id = id
    this.#host = host
    this.#signal = signal
  }

  #log(message: string): void {
    this.#host.log(`cross-domain ctx ${this.id}: ${message}`)
  }

  // -----------------------------------------------------------------------------------------------
  // Resources (attach/detach follow the guest's GEM handles in this context's file)

  attach(resource: AttachedResource): void {
    this.#resources.set(resource.resId, resource)
  }

  detach(resId: number): void {
    this.#resources.delete(resId)
  }

  /**
   * context_create_blob: `blobId` names an image-requirements item (kept, fresh memfd of exactly
   * that size) or a received descriptor (removed: its fd becomes the resource's memory).
   * Returns the host fd (owned by the caller from now on) or an error text.
   */
  createBlob(resId: number, blobId: bigint, size: number): { readonly fd: number; readonly mapInfo: number } | string {
    const itemId = Number(BigInt.asUintN(32, blobId))
    const item = this.#items.get(itemId)
    if (item === undefined) return `context_create_blob(res ${resId}): no item ${itemId}`
    if (item.kind === "requirements") {
      if (item.reqs.size !== size) return `context_create_blob(res ${resId}): blob size mismatch (${size} ≠ requirements ${item.reqs.size})`
      const fd = sys.memfd_create(`cross-domain-res-${resId}`, 1 /* MFD_CLOEXEC */ | 2 /* MFD_ALLOW_SEALING */)
      if (fd < 0) return `memfd_create: ${errnoText(-fd)}`
      const r = sys.ftruncate(fd, size)
      if (r < 0) {
        sys.close(fd)
        return `ftruncate: ${errnoText(-r)}`
      }
      return { fd, mapInfo: item.reqs.mapInfo | MAP_ACCESS_RW }
    }
    this.#items.delete(itemId)
    if (item.kind === "blob") return { fd: item.fd, mapInfo: 0x11 }
    this.#closeItem(item)
    return `context_create_blob(res ${resId}): item ${itemId} is a ${item.kind}, not memory`
  }

  // -----------------------------------------------------------------------------------------------
  // Commands

  /** One SUBMIT_3D payload. Any error is logged and aborts the rest of the buffer. */
  submitCmd(commands: Uint8Array): void {
    if (this.#destroyed) return
    let off = 0
    try {
      while (off < commands.length) {
        const rest = commands.subarray(off)
        if (rest.length < 8) throw new CommandError(`${rest.length} trailing bytes, shorter than a header`)
        const cmd = rest[0]!
        const cmdSize = rest[2]! | (rest[3]! << 8)
        // rutabaga would loop forever on cmd_size 0; a header is the least a command takes.
        if (cmdSize < 8) throw new CommandError(`command ${cmd} with cmd_size ${cmdSize}`)
        switch (cmd) {
          case CMD_INIT:
            this.#init(rest, cmdSize)
            break
          case CMD_GET_IMAGE_REQUIREMENTS:
            this.#getImageRequirements(rest)
            break
          case CMD_POLL:
            break
          case CMD_SEND:
            this.#send(rest)
            break
          case CMD_WRITE:
            this.#write(rest)
            break
          default:
            throw new CommandError(`unsupported cross-domain command ${cmd}`)
        }
        if (cmdSize > rest.length) throw new CommandError(`cmd_size ${cmdSize} runs past the buffer (${rest.length} bytes left)`)
        off += cmdSize
      }
    } catch (e) {
      if (!(e instanceof CommandError)) throw e
      this.#log(`submit_cmd: ${e.message}`)
    }
  }

  #need(rest: Uint8Array, size: number, what: string): void {
    if (rest.length < size) throw new CommandError(`${what}: ${rest.length} bytes, needs ${size}`)
  }

  #init(rest: Uint8Array, cmdSize: number): void {
    let queryRingId: number
    let channelRingId: number
    let channelType: number
    // rutabaga 2026 picks the INIT variant by cmd_size.
    if (cmdSize === 16) {
      this.#need(rest, 16, "INIT (legacy)")
      queryRingId = u32(rest, 8)
      channelType = u32(rest, 12)
      channelRingId = queryRingId
    } else if (cmdSize === 20 || cmdSize === 24 || cmdSize === 36) {
      this.#need(rest, cmdSize, "INIT")
      queryRingId = u32(rest, 8)
      channelRingId = u32(rest, 12)
      channelType = u32(rest, 16)
      if (channelType === CHANNEL_TYPE_INTERNAL_SOCKET) throw new CommandError("INIT: internal sockets are not supported by this emulator")
    } else {
      throw new CommandError(`INIT with cmd_size ${cmdSize}: invalid cross domain command`)
    }
    if (!this.#resources.has(queryRingId)) throw new CommandError(`INIT: query ring resource ${queryRingId} is not attached`)
    if (channelType === 0) {
      this.#state = { queryRingId, channelRingId }
      return
    }
    if (!this.#resources.has(channelRingId)) throw new CommandError(`INIT: channel ring resource ${channelRingId} is not attached`)
    // The configured paths are handed out once (rutabaga takes them), so a second INIT fails.
    if (this.#pathsTaken) throw new CommandError("INIT: channel already initialized (paths consumed)")
    this.#pathsTaken = true
    const path = this.#host.channels.get(channelType)
    if (path === undefined) throw new CommandError(`INIT: no host channel of type ${channelType} is configured`)
    const fd = connectUnixSync(path)
    if (fd instanceof SyscallError) throw new CommandError(`INIT: ${fd.message}`)
    this.#channel = { fd, watch: null, events: 0, endpoint: new SocketEndpoint(fd, { inputCapacity: 16 }), writeBroken: false }
    this.#state = { queryRingId, channelRingId }
  }

  /** A read pipe's read end as an item with the next read-pipe id. */
  #addReadPipe(fd: number): number {
    this.#readPipeId = (this.#readPipeId + 1) >>> 0
    const id = Math.max(this.#readPipeId, PIPE_READ_START)
    const item: ReadPipeItem = { kind: "readPipe", id, fd, watch: null, events: 0, onReady: (ev) => this.#onReadPipe(id, ev) }
    this.#items.set(id, item)
    this.#readPipes.add(item)
    return id
  }

  #addItem(item: Exclude<Item, ReadPipeItem>): number {
    this.#descriptorId = (this.#descriptorId + 1) >>> 0
    this.#items.set(this.#descriptorId, item)
    return this.#descriptorId
  }

  #ring(resId: number, what: string): Uint8Array {
    const r = this.#resources.get(resId)
    if (r === undefined || r.guestView === null) throw new CommandError(`${what}: ring resource ${resId} is not attached guest memory`)
    return r.guestView
  }

  #getImageRequirements(rest: Uint8Array): void {
    this.#need(rest, 24, "GET_IMAGE_REQUIREMENTS")
    const width = u32(rest, 8)
    const height = u32(rest, 12)
    const format = u32(rest, 16)
    const reqs = imageRequirements(width, height, format)
    if (reqs === null) throw new CommandError(`GET_IMAGE_REQUIREMENTS: format 0x${format.toString(16)} unknown to the system allocator`)
    if (this.#state === null) throw new CommandError("GET_IMAGE_REQUIREMENTS before INIT")
    const blobId = this.#addItem({ kind: "requirements", reqs })
    const ring = this.#ring(this.#state.queryRingId, "GET_IMAGE_REQUIREMENTS")
    if (ring.length < IMAGE_REQUIREMENTS_SIZE) throw new CommandError("GET_IMAGE_REQUIREMENTS: query ring too small")
    const v = new DataView(ring.buffer, ring.byteOffset, IMAGE_REQUIREMENTS_SIZE)
    for (let k = 0; k < 4; k++) {
      v.setUint32(4 * k, reqs.strides[k]!, true)
      v.setUint32(16 + 4 * k, reqs.offsets[k]!, true)
    }
    v.setBigUint64(32, reqs.modifier, true)
    v.setBigUint64(40, BigInt(reqs.size), true)
    v.setUint32(48, blobId, true)
    v.setUint32(52, reqs.mapInfo, true)
    v.setInt32(56, -1, true)
    v.setInt32(60, -1, true)
  }

  #send(rest: Uint8Array): void {
    this.#need(rest, SEND_HEADER_SIZE, "SEND")
    const num = u32(rest, 8)
    const size = u32(rest, 12)
    if (SEND_HEADER_SIZE + size > rest.length) throw new CommandError(`SEND: opaque_data_size ${size} runs past the buffer`)
    const data = rest.subarray(SEND_HEADER_SIZE, SEND_HEADER_SIZE + size)
    if (num > MAX_IDENTIFIERS) throw new CommandError(`SEND: ${num} identifiers, at most ${MAX_IDENTIFIERS}`)
    const fds: number[] = []
    let readPipeId: number | null = null
    const closeAll = (): void => fds.forEach((fd) => sys.close(fd))
    try {
      for (let i = 0; i < num; i++) {
        const id = u32(rest, 16 + 4 * i)
        const type = u32(rest, 128 + 4 * i)
        if (type === ID_TYPE_VIRTGPU_BLOB) {
          const r = this.#resources.get(id)
          if (r === undefined) throw new CommandError(`SEND: resource ${id} is not attached to this context`)
          if (r.fd < 0) throw new CommandError(`SEND: resource ${id} has no host memory handle (guest memory)`)
          const dup = sys.fcntl(r.fd, F_DUPFD_CLOEXEC, 0)
          if (dup < 0) throw new CommandError(`SEND: dup of resource ${id}: ${errnoText(-dup)}`)
          fds.push(dup)
        } else if (type === ID_TYPE_READ_PIPE) {
          if (readPipeId !== null) throw new CommandError("SEND: expected just one pipe pair")
          const p = new Int32Array(2)
          const r = sys.pipe2(p, O_CLOEXEC)
          if (r < 0) throw new CommandError(`SEND: pipe2: ${errnoText(-r)}`)
          const readFd = p[0]!
          fds.push(p[1]!) // the compositor gets the write end; ours is closed once sent
          // Only our read end is non-blocking: the write end's file belongs to the writer.
          sys.fcntl(readFd, F_SETFL, sys.fcntl(readFd, F_GETFL) | O_NONBLOCK)
          const hostId = this.#addReadPipe(readFd)
          // The guest guessed the id; a wrong guess is an error (the counter has moved anyway).
          if (hostId !== id) {
            this.#closeItem(this.#items.get(hostId)!)
            this.#items.delete(hostId)
            throw new CommandError(`SEND: read pipe id ${id} does not match the host's ${hostId}`)
          }
          readPipeId = hostId
        } else {
          throw new CommandError(`SEND: identifier type ${type} is not supported`)
        }
      }
    } catch (e) {
      closeAll()
      throw e
    }
    const ch = this.#channel
    if (this.#state === null || ch === null) {
      closeAll()
      throw new CommandError("SEND without an initialized channel")
    }
    if (ch.writeBroken || ch.endpoint.closed) {
      closeAll()
      throw new CommandError("SEND: the compositor connection is broken")
    }
    try {
      // The endpoint owns the fds from here and closes them once sent (EOF then propagates).
      const r = ch.endpoint.write(data, 0, data.length, fds)
      if (r === "overflow") throw new CommandError("SEND: compositor is not reading (output queue full)")
    } catch (e) {
      if (e instanceof CommandError) throw e
      ch.writeBroken = true
      throw new CommandError(`SEND: ${e instanceof Error ? e.message : String(e)}`)
    } finally {
      this.#update()
    }
  }

  #write(rest: Uint8Array): void {
    this.#need(rest, READ_WRITE_HEADER_SIZE, "WRITE")
    const id = u32(rest, 8)
    const hangUp = u32(rest, 12)
    const size = u32(rest, 16)
    if (READ_WRITE_HEADER_SIZE + size > rest.length) throw new CommandError(`WRITE: opaque_data_size ${size} runs past the buffer`)
    const data = rest.subarray(READ_WRITE_HEADER_SIZE, READ_WRITE_HEADER_SIZE + size)
    const item = this.#items.get(id)
    if (item === undefined) throw new CommandError(`WRITE: no item ${id}`)
    if (item.kind === "event") {
      if (size !== 8) throw new CommandError(`WRITE to event ${id}: ${size} bytes, must be 8`)
      const r = sys.write(item.fd, data, 8)
      if (r < 0) throw new CommandError(`WRITE to event ${id}: ${errnoText(-r)}`)
      if (hangUp !== 0) {
        this.#items.delete(id)
        sys.close(item.fd)
      }
      return
    }
    if (item.kind !== "writePipe") throw new CommandError(`WRITE: item ${id} is a ${item.kind}`)
    if (size > 0) {
      if (item.queue.length === 0) {
        const n = sys.write(item.fd, data, size)
        if (n < 0 && n !== -Errno.EAGAIN) {
          this.#items.delete(id)
          this.#closeItem(item)
          throw new CommandError(`WRITE to pipe ${id}: ${errnoText(-n)}`)
        }
        const done = Math.max(n, 0)
        if (done < size) item.queue.push(data.slice(done))
      } else {
        item.queue.push(data.slice())
      }
    }
    if (hangUp !== 0) {
      // Gone from the table at once (a later WRITE to it is an error); closed once drained.
      this.#items.delete(id)
      if (item.queue.length === 0) this.#closeItem(item)
      else {
        item.closing = true
        this.#draining.add(item)
      }
    }
    this.#watchWritePipe(item)
  }

  #watchWritePipe(p: WritePipe): void {
    if (p.fd < 0) return
    if (p.queue.length === 0) {
      p.watch?.close()
      p.watch = null
      return
    }
    if (p.watch === null) p.watch = this.#host.reactor.watch(p.fd, EPOLLOUT, () => this.#flushWritePipe(p))
  }

  #flushWritePipe(p: WritePipe): void {
    while (p.queue.length > 0) {
      const head = p.queue[0]!
      const n = sys.write(p.fd, head, head.length)
      if (n === -Errno.EAGAIN) return
      if (n < 0) {
        this.#log(`write pipe ${p.id}: ${errnoText(-n)}; closing it`)
        this.#items.delete(p.id)
        this.#draining.delete(p)
        this.#closeItem(p)
        return
      }
      if (n < head.length) p.queue[0] = head.subarray(n)
      else p.queue.shift()
    }
    if (p.closing) {
      this.#draining.delete(p)
      this.#closeItem(p)
    } else this.#watchWritePipe(p)
  }

  // -----------------------------------------------------------------------------------------------
  // Fences and the worker

  /** context_create_fence for a submission with INFO_RING_IDX. */
  createFence(fence: F, ringIdx: number): void {
    if (ringIdx === QUERY_RING) {
      // The query was answered synchronously in submit_cmd.
      this.#signal(fence)
      return
    }
    if (ringIdx !== CHANNEL_RING) {
      this.#log(`fence on unexpected ring ${ringIdx} dropped`)
      return
    }
    // Before INIT the fence is silently dropped; a halted worker never handles it.
    if (this.#state === null || this.#channel === null || this.#halted || this.#destroyed) return
    this.#pending.push(fence)
    this.#update()
  }

  get #armed(): boolean {
    return this.#pending.length > 0 && !this.#halted && !this.#destroyed
  }

  /**
   * Recompute what is watched: sources while a ring-1 fence waits; EPOLLOUT while output is
   * queued. With no fence pending, a source's EPOLLIN is left on until it fires (`lazy`): the next
   * POLL usually comes before the compositor says anything, so a round trip changes no watch;
   * a source that does fire unarmed is silenced then (level-triggered: it would spin).
   */
  #update(lazy = true): void {
    if (this.#destroyed) return
    const armed = this.#armed
    const ch = this.#channel
    if (ch !== null) {
      const out = !ch.writeBroken && ch.endpoint.pendingBytes > 0 ? EPOLLOUT : 0
      const keepIn = lazy && ch.watch !== null ? ch.events & EPOLLIN : 0
      this.#setWatch(ch, (armed ? EPOLLIN : keepIn) | out, this.#onChannelReady)
    }
    for (const item of this.#readPipes) {
      if (armed) this.#setWatch(item, EPOLLIN, item.onReady)
      else if (!lazy) this.#setWatch(item, 0, item.onReady)
    }
  }

  /** A silent watch (events 0) is kept, not closed: reopening costs an fstat and a uv handle per round trip. */
  #setWatch(w: Watched, events: number, onReady: (events: number) => void): void {
    if (w.events === events) return
    w.events = events
    if (w.watch === null) {
      if (events !== 0) w.watch = this.#host.reactor.watch(w.fd, events, onReady)
    } else {
      w.watch.setEvents(events)
    }
  }

  readonly #onChannelReady = (events: number): void => this.#onChannel(events)

  #onChannel(events: number): void {
    const ch = this.#channel
    if (ch === null) return
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) !== 0 && ch.endpoint.pendingBytes > 0 && !ch.writeBroken) {
      try {
        ch.endpoint.flush()
      } catch (e) {
        ch.writeBroken = true
        this.#log(`sending to the compositor: ${e instanceof Error ? e.message : String(e)}`)
      }
    }
    const readable = (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) !== 0
    const armed = this.#armed
    if (readable && armed) this.#receive(ch.fd)
    // Readable with no fence to answer: stop listening until the next POLL.
    this.#update(!(readable && !armed))
  }

  #halt(reason: string): void {
    this.#log(`worker halting due to: ${reason}`)
    this.#halted = true
    this.#update()
  }

  /** One recvmsg → one RECEIVE in the channel ring → signal the oldest pending fence. */
  #receive(fd: number): void {
    const io = this.#io
    const n = io.recv(fd, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, MAX_SEND_DATA)
    if (n === -Errno.EAGAIN) return
    if (n < 0) return this.#halt(`recvmsg: ${errnoText(-n)}`)
    if (io.truncated) {
      io.closeFds()
      return this.#halt("recvmsg: control data truncated (fds lost)")
    }
    const ids: Array<[number, number, number]> = []
    if (io.fds.length > 0) {
      const fds = io.fds.splice(0)
      for (let i = 0; i < fds.length; i++) {
        const converted = this.#convert(fds[i]!)
        if (typeof converted === "string") {
          for (let k = i; k < fds.length; k++) sys.close(fds[k]!)
          return this.#halt(converted)
        }
        ids.push(converted)
      }
    }
    const ring = this.#resources.get(this.#state!.channelRingId)?.guestView ?? null
    if (ring === null) return this.#halt(`channel ring ${this.#state!.channelRingId} is not attached`)
    if (ring.length < SEND_HEADER_SIZE + n) return this.#halt("channel ring too small")
    ring.fill(0, 0, SEND_HEADER_SIZE)
    const v = dataView(ring)
    v.setUint8(0, CMD_RECEIVE)
    v.setUint32(8, ids.length, true)
    v.setUint32(12, n, true)
    for (let i = 0; i < ids.length; i++) {
      const [id, type, size] = ids[i]!
      v.setUint32(16 + 4 * i, id, true)
      v.setUint32(128 + 4 * i, type, true)
      v.setUint32(240 + 4 * i, size, true)
    }
    ring.set(io.inBuf.subarray(0, n), SEND_HEADER_SIZE)
    // rutabaga 2026: EOF (nothing read, no fds) still answers with an empty RECEIVE.
    if (n === 0 && ids.length === 0 && !this.#eof) {
      this.#eof = true
      this.#log("compositor closed the connection; answering POLLs with empty RECEIVEs")
    }
    this.#signal(this.#pending.shift()!)
  }

  /** Host fd → [identifier, type, size] (spec §4.7 order), or an error text. Takes the fd. */
  #convert(fd: number): [number, number, number] | string {
    let link = ""
    try {
      link = readlinkSync(`/proc/self/fd/${fd}`)
    } catch {
      // keep going: the other checks decide
    }
    if (link.startsWith("anon_inode:[eventfd]")) return [this.#addItem({ kind: "event", fd }), ID_TYPE_EVENT, 0]
    let socket = false
    try {
      socket = fstatSync(fd).isSocket()
    } catch {
      // not fatal here
    }
    if (socket) return [this.#addItem({ kind: "socket", fd }), ID_TYPE_SOCKET, 0]
    const pos = sys.lseek(fd, 0, 1 /* SEEK_CUR */)
    const end = sys.lseek(fd, 0, SEEK_END)
    if (end >= 0) {
      // The offset is shared with the sender's file description: put it back.
      if (pos >= 0) sys.lseek(fd, pos, SEEK_SET)
      return [this.#addItem({ kind: "blob", fd }), ID_TYPE_VIRTGPU_BLOB, end >>> 0]
    }
    const fl = sys.fcntl(fd, F_GETFL)
    if (fl >= 0 && (fl & 3) === O_WRONLY) {
      sys.fcntl(fd, F_SETFL, fl | O_NONBLOCK)
      const p: WritePipe = { kind: "writePipe", id: 0, fd, watch: null, queue: [], closing: false }
      p.id = this.#addItem(p)
      return [p.id, ID_TYPE_WRITE_PIPE, 0]
    }
    sys.close(fd)
    return `received fd of unsupported kind (${link || "unknown"}${fl >= 0 ? `, flags 0x${fl.toString(16)}` : ""})`
  }

  /** A read pipe is ready: one READ (data, or hang_up at EOF) → signal the oldest pending fence. */
  #onReadPipe(id: number, _events: number): void {
    const item = this.#items.get(id)
    if (item === undefined || item.kind !== "readPipe") return
    // Ready with no fence to answer: silent until the next POLL (level-triggered).
    if (!this.#armed) return this.#setWatch(item, 0, item.onReady)
    const ring = this.#resources.get(this.#state!.channelRingId)?.guestView ?? null
    if (ring === null) return this.#halt(`channel ring ${this.#state!.channelRingId} is not attached`)
    if (ring.length <= READ_WRITE_HEADER_SIZE) return this.#halt("channel ring too small")
    const n = sys.read(item.fd, ring.subarray(READ_WRITE_HEADER_SIZE), ring.length - READ_WRITE_HEADER_SIZE)
    if (n === -Errno.EAGAIN) return
    if (n < 0) return this.#halt(`read pipe ${id}: ${errnoText(-n)}`)
    const v = dataView(ring)
    for (let k = 0; k < READ_WRITE_HEADER_SIZE; k += 4) v.setUint32(k, 0, true)
    v.setUint8(0, CMD_READ)
    v.setUint32(8, id, true)
    v.setUint32(12, n === 0 ? 1 : 0, true)
    v.setUint32(16, n, true)
    if (n === 0) {
      // EOF: the id is freed on both sides.
      this.#items.delete(id)
      this.#closeItem(item)
    }
    this.#signal(this.#pending.shift()!)
    this.#update()
  }

  #closeItem(item: Item): void {
    if (item.kind === "readPipe" || item.kind === "writePipe") {
      item.watch?.close()
      item.watch = null
    }
    if (item.kind === "readPipe") this.#readPipes.delete(item)
    const fd = itemFd(item)
    if (fd >= 0) sys.close(fd)
    if (item.kind === "writePipe") item.fd = -1
  }

  // -----------------------------------------------------------------------------------------------
  // Teardown and inspection

  /** Context destroyed (the guest closed its device file): kill the worker, drop the connection and items. */
  destroy(): void {
    if (this.#destroyed) return
    this.#destroyed = true
    // The kill event signals the fence being waited on.
    for (const f of this.#pending.splice(0)) this.#signal(f)
    const ch = this.#channel
    if (ch !== null) {
      ch.watch?.close()
      ch.watch = null
      ch.endpoint.close()
      this.#channel = null
    }
    for (const item of this.#items.values()) this.#closeItem(item)
    this.#items.clear()
    for (const p of this.#draining) this.#closeItem(p)
    this.#draining.clear()
    this.#resources.clear()
  }

  /** For tests and DEBUG_STATE. */
  debugState(): Record<string, unknown> {
    const kinds: Record<string, number> = {}
    for (const item of this.#items.values()) kinds[item.kind] = (kinds[item.kind] ?? 0) + 1
    return {
      id: this.id,
      initialized: this.#state !== null,
      connected: this.#channel !== null && !this.#channel.endpoint.closed,
      halted: this.#halted,
      compositorEof: this.#eof,
      destroyed: this.#destroyed,
      pendingFences: this.#pending.length,
      attached: [...this.#resources.keys()].sort((a, b) => a - b),
      items: kinds,
      itemIds: [...this.#items.keys()],
      readPipeCounter: this.#readPipeId
    }
  }
}

