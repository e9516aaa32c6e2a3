/**
 * One guest client and its own host connection: the data path of the proxy.
 *
 * Each direction is processed one batch at a time: everything one readiness wake-up read from a
 * socket is framed, checked against the protocol tables, has its object ids mapped through the
 * shadow table and its fds attributed, and is written to the peer with one `sendmsg` (split only
 * at 28 fds). All of this is plain synchronous code over typed arrays, called from the reactor;
 * no Effect runs per message (see docs/ARCHITECTURE.md for where Effect runs and why).
 *
 * What it checks, like libwayland-server does for requests: the header (size ≥ 8, a multiple of
 * 4, at most the maximum message size), that the sender is a live object, that the opcode exists
 * and is not newer than the object's version, every argument's bounds (strings NUL-terminated,
 * arrays within the body, no trailing bytes), object arguments live and of the right interface,
 * new ids free and in the client range, fds present. A failure ends this client only with a
 * `wl_display.error` naming the object, the code and the reason.
 *
 * Hand-written handlers (registry filtering, bind validation) hook single messages; everything
 * else takes the table-driven default path. It does not know how sockets are accepted or
 * connected (the listener does) and it owns no Effect resources: the listener's scope closes it.
 */
import type { InterfaceRegistry } from "../protocol/registry.js"
import type { ArgValue, InterfaceDesc, MessageDesc, UntypedNewId } from "../protocol/types.js"
import { ArgCode } from "../protocol/types.js"
import { ObjectState, SERVER_ID_START, ShadowTable, type ObjectEntry } from "../shadow/table.js"
import { decodeArgs, encodeMessage, readU32, writeU32 } from "../wire/index.js"
import { DisplayErrorCode, ProtocolViolation, type ConnectionEndReason } from "./errors.js"
import { formatTraceLine } from "./trace.js"

export interface ConnectionLimits {
  /** Largest Wayland message accepted from either side (libwayland's classic 4096). */
  readonly maxMessageSize: number
  /** Objects one client may hold at once. */
  readonly maxObjects: number
  /** Bytes queued toward a client that does not read before it is cut. */
  readonly maxClientBacklog: number
  /** Bytes queued toward the compositor before the proxy stops reading that client. */
  readonly hostBackpressure: number
  /**
   * Hard bound on bytes queued toward a compositor that does not read, beyond which the client
   * is cut. Normally unreachable: the client is paused at `hostBackpressure` first.
   */
  readonly maxHostBacklog: number
  /**
   * fds one client may have in flight: received from it and not yet forwarded (waiting for the
   * message that carries them) plus queued toward the compositor. Every one is an open fd of
   * the proxy's process, shared by all clients, so one client must not be able to exhaust it.
   */
  readonly maxFdsInFlight: number
}

export const defaultLimits: ConnectionLimits = {
  maxMessageSize: 4096,
  maxObjects: 100_000,
  maxClientBacklog: 16 * 1024 * 1024,
  hostBackpressure: 1024 * 1024,
  maxHostBacklog: 16 * 1024 * 1024,
  // libwayland's classic fd ring buffer held 1024 fds per connection.
  maxFdsInFlight: 1024
}

/** Counters of what one connection forwarded; summed by the listener for `demo`'s summary. */
export interface ConnectionStats {
  requests: number
  events: number
  requestBytes: number
  eventBytes: number
  requestFds: number
  eventFds: number
  batches: number
  /** Cross-domain shm copies: bytes copied from guest pools into host blobs, and commits that copied. */
  copiedBytes: number
  copyCommits: number
}

export const emptyStats = (): ConnectionStats => ({
  requests: 0,
  events: 0,
  requestBytes: 0,
  eventBytes: 0,
  requestFds: 0,
  eventFds: 0,
  batches: 0,
  copiedBytes: 0,
  copyCommits: 0
})

/** What a batch observer sees (the per-batch trace span is built from it). */
export interface BatchInfo {
  readonly direction: "request" | "event"
  readonly messages: number
  readonly bytes: number
  readonly fds: number
}

/**
 * Globals a guest client is not shown unless allowed: each gives a client power over the host
 * session beyond its own windows (capturing the host screen, locking it, reading every
 * clipboard, creating sockets on the host, leasing displays, seeing other windows).
 */
export const defaultDeniedGlobals: ReadonlySet<string> = new Set([
  "wp_security_context_manager_v1",
  "ext_image_copy_capture_manager_v1",
  "ext_output_image_capture_source_manager_v1",
  "ext_foreign_toplevel_image_capture_source_manager_v1",
  "ext_session_lock_manager_v1",
  "ext_data_control_manager_v1",
  "ext_foreign_toplevel_list_v1",
  "ext_workspace_manager_v1",
  "ext_transient_seat_manager_v1",
  "xwayland_shell_v1",
  "wp_drm_lease_device_v1"
])

/**
 * A hand-written handler for one message, beside the generated default path (e.g. the
 * cross-domain shm copy, keymap and pipe translation). It runs after the default checks and id
 * mapping, on the decoded message as it will be sent: object ids are already the receiving
 * side's, fd arguments are the received fds. Once called, the hook owns those fds: on `Forward`
 * they travel as they are; otherwise the hook must close or reuse them.
 */
export type MessageHook = (m: HookMessage) => HookResult

export interface HookMessage {
  readonly connection: Connection
  /** The sender object (its entry in the shadow table). */
  readonly entry: ObjectEntry
  readonly desc: MessageDesc
  readonly args: ArgValue[]
  /** The message's fds in signature order. */
  readonly fds: readonly number[]
}

/** A message a hook emits instead of the one it handled. `objectId` is the receiving side's id. */
export interface OutMessage {
  readonly objectId: number
  readonly desc: MessageDesc
  readonly args: readonly ArgValue[]
}

export type HookResult =
  | { readonly _tag: "Forward" }
  | { readonly _tag: "Drop" }
  | { readonly _tag: "Replace"; readonly messages: ReadonlyArray<OutMessage> }
  /** Only for requests: ends the client with this `wl_display.error` code and message. */
  | { readonly _tag: "Violation"; readonly code: number; readonly message: string }

export const Forward: HookResult = { _tag: "Forward" }
export const Drop: HookResult = { _tag: "Drop" }

export interface ConnectionHooks {
  readonly requests: ReadonlyMap<MessageDesc, MessageHook>
  readonly events: ReadonlyMap<MessageDesc, MessageHook>
}

export interface ConnectionOptions {
  /** Hand-written message handlers; null in local mode, where everything takes the default path. */
  readonly hooks?: ConnectionHooks | null
  /** Shadow table in mapped-ids mode: hooks create proxy-owned host objects (cross-domain shm). */
  readonly mappedIds?: boolean
  readonly id: number
  readonly registry: InterfaceRegistry
  /** Interfaces whose globals are hidden from the client (see defaultDeniedGlobals). */
  readonly deniedGlobals: ReadonlySet<string>
  readonly limits: ConnectionLimits
  /** `--trace`: receives one WAYLAND_DEBUG-format line per message; null when off. */
  readonly trace: ((line: string) => void) | null
  /** Called after each forwarded batch (spans, stats taps); null when nobody observes. */
  readonly onBatch: ((info: BatchInfo) => void) | null
  /** Called once when the connection ends, after both sockets are closed. */
  readonly onEnd: (reason: ConnectionEndReason) => void
}

/**
 * What the data path needs of a socket: the transport's `SocketEndpoint` is one; benchmarks and
 * unit tests use in-memory ones. Received bytes are `inBuf[inStart, inEnd)`; received fds wait in
 * `inFds` in arrival order; `write` takes ownership of the fds it is given.
 */
export interface Endpoint {
  readonly fd: number
  readonly inBuf: Uint8Array
  readonly inStart: number
  readonly inEnd: number
  readonly inFds: { shift(): number | undefined; readonly length: number }
  fill(): "data" | "again" | "eof"
  consume(n: number): void
  write(data: Uint8Array, offset: number, length: number, fds: readonly number[]): "sent" | "queued" | "overflow"
  flush(): boolean
  readonly pendingBytes: number
  close(): void
  /**
   * Optional (host side): called after the events `fill()` delivered were forwarded, with a
   * function that reads requests already waiting from the client. The cross-domain endpoint
   * re-arms its POLL here. Throws like `fill()`.
   */
  settle?(readPending: () => void): void
}

/** A global the host announced and the client was shown (version already capped). */
interface GlobalInfo {
  readonly iface: InterfaceDesc
  readonly version: number
}

/** An error's own message (no "Name:" prefix: clients read it in a wl_display.error). */
const errorText = (e: unknown): string => (e instanceof Error && e.message !== "" ? e.message : String(e))

const u32 = readU32
const putU32 = writeU32

/**
 * Copies one frame into the output batch. Most Wayland messages are 8–64 bytes, where a plain
 * loop beats allocating a `subarray` view for `set`.
 */
const copyFrame = (src: Uint8Array, off: number, size: number, dst: Uint8Array, at: number): void => {
  if (size > 128) {
    dst.set(src.subarray(off, off + size), at)
    return
  }
  for (let i = 0; i < size; i++) dst[at + i] = src[off + i]!
}

/** Protocol strings (interface names) are ASCII; this avoids a TextDecoder call per global. */
const asciiString = (b: Uint8Array, start: number, lenWithNul: number): string => {
  let s = ""
  for (let i = 0; i < lenWithNul - 1; i++) s += String.fromCharCode(b[start + i]!)
  return s
}

/** Result of walking one message's arguments: ok, or the reason it is malformed. */
type WalkError = { readonly code: number; readonly objectId: number; readonly iface: string; readonly message: string }

export class Connection {
  readonly shadow: ShadowTable
  readonly stats = emptyStats()
  private readonly globals = new Map<number, GlobalInfo>()
  // Grows by doubling; small to start, since most batches are a few hundred bytes.
  private out = new Uint8Array(1024)
  private readonly outFds: number[] = []
  private ended = false
  private readonly display: InterfaceDesc
  private readonly registryIface: InterfaceDesc
  private readonly bindDesc: MessageDesc
  private readonly globalDesc: MessageDesc
  private readonly globalRemoveDesc: MessageDesc
  private readonly deleteIdDesc: MessageDesc
  private readonly errorDesc: MessageDesc
  private hostSentError = false
  /**
   * fds handed to the compositor socket since its queue was last empty: an upper bound on the fds
   * it still holds (the endpoint does not say which of them a partial write already sent).
   */
  private hostFdsQueued = 0
  /** The same toward the client: fds of events it has not read yet (keymaps, clipboard pipes). */
  private clientFdsQueued = 0
  private readonly requestHooks: ReadonlyMap<MessageDesc, MessageHook> | null
  private readonly eventHooks: ReadonlyMap<MessageDesc, MessageHook> | null
  /** Set while the client is not being read because the compositor is backlogged. */
  clientPaused = false

  constructor(
    readonly client: Endpoint,
    readonly host: Endpoint,
    readonly options: ConnectionOptions
  ) {
    const reg = options.registry
    this.shadow = new ShadowTable({ mappedIds: options.mappedIds === true })
    this.requestHooks = options.hooks != null && options.hooks.requests.size > 0 ? options.hooks.requests : null
    this.eventHooks = options.hooks != null && options.hooks.events.size > 0 ? options.hooks.events : null
    const need = (name: string): InterfaceDesc => {
      const i = reg.get(name)
      if (i === undefined) throw new Error(`protocol tables lack ${name}`)
      return i
    }
    this.display = need("wl_display")
    this.registryIface = need("wl_registry")
    this.bindDesc = this.registryIface.requests[0]!
    this.globalDesc = this.registryIface.events[0]!
    this.globalRemoveDesc = this.registryIface.events[1]!
    this.errorDesc = this.display.events[0]!
    this.deleteIdDesc = this.display.events[1]!
    // wl_display is object 1 on both sides from the start.
    this.shadow.insert({ clientId: 1, hostId: 1, iface: this.display, version: 1, state: ObjectState.Live })
  }

  get isEnded(): boolean {
    return this.ended
  }

  // ---------------------------------------------------------------------------------------------
  // Client → host (requests)

  /** For `Endpoint.settle`: requests already waiting, read now (not while the client is paused). */
  readonly #readPending = (): void => {
    if (!this.ended && !this.clientPaused) this.onClientReadable()
  }

  /**
   * The client socket is readable: read what is there, forward every complete request.
   * Returns false when the connection ended.
   */
  onClientReadable(): boolean {
    if (this.ended) return false
    let r: "data" | "again" | "eof"
    try {
      r = this.client.fill()
    } catch (e) {
      this.end({ _tag: "IoError", message: `client read failed: ${errorText(e)}` })
      return false
    }
    if (this.client.inEnd > this.client.inStart) {
      if (!this.processRequests()) return false
    }
    if (!this.checkFdsInFlight()) return false
    if (r === "eof") {
      this.end({ _tag: "ClientClosed" })
      return false
    }
    return true
  }

  private processRequests(): boolean {
    const ep = this.client
    const buf = ep.inBuf
    const end = ep.inEnd
    const maxSize = this.options.limits.maxMessageSize
    const trace = this.options.trace
    let off = ep.inStart
    let outLen = 0
    let messages = 0
    const fdsBefore = this.outFds.length
    while (end - off >= 8) {
      const sender = u32(buf, off)
      const w1 = u32(buf, off + 4)
      const size = w1 >>> 16
      const opcode = w1 & 0xffff
      if (size < 8 || (size & 3) !== 0 || size > maxSize) {
        const why =
          size < 8 ? `message size ${size} is below the 8-byte header` : (size & 3) !== 0 ? `message size ${size} is not a multiple of 4` : `message size ${size} exceeds the limit of ${maxSize} bytes`
        return this.violation(1, "wl_display", DisplayErrorCode.InvalidMethod, `${why} (object ${sender}, opcode ${opcode})`)
      }
      if (end - off < size) break
      const entry = this.shadow.byClient(sender)
      if (entry === undefined || entry.state !== ObjectState.Live) {
        // libwayland-server posts this one on wl_display: the sender does not exist.
        return this.violation(1, "wl_display", DisplayErrorCode.InvalidObject, `invalid object ${sender}`)
      }
      const desc = entry.iface.requests[opcode]
      if (desc === undefined) {
        return this.violation(sender, entry.iface.name, DisplayErrorCode.InvalidMethod, `invalid method ${opcode}, object ${entry.iface.name}@${sender}`)
      }
      if (desc.since > entry.version) {
        return this.violation(
          sender,
          entry.iface.name,
          DisplayErrorCode.InvalidMethod,
          `invalid method ${opcode} (since ${desc.since} > ${entry.version}), object ${entry.iface.name}@${sender}`
        )
      }
      // Copy the frame, then validate and map its arguments in the copy.
      if (this.out.length < outLen + size) this.growOut(outLen + size)
      const out = this.out
      copyFrame(buf, off, size, out, outLen)
      putU32(out, outLen, entry.hostId)
      if (trace !== null) this.traceMessage(trace, "client→host", false, entry, desc, buf, off, size, ep.inFds.length)
      const err = desc === this.bindDesc ? this.walkBind(entry, desc, out, outLen, size) : this.walkRequest(entry, desc, out, outLen, size)
      if (err !== null) return this.violation(err.objectId, err.iface, err.code, err.message)
      const fdStart = this.outFds.length
      if (desc.fdCount > 0) {
        for (let i = 0; i < desc.fdCount; i++) {
          const fd = ep.inFds.shift()
          if (fd === undefined) {
            return this.violation(sender, entry.iface.name, DisplayErrorCode.InvalidMethod, `${entry.iface.name}@${sender}.${desc.name}: fd missing`)
          }
          this.outFds.push(fd)
        }
      }
      let emitted = size
      const hook = this.requestHooks === null ? undefined : this.requestHooks.get(desc)
      if (hook !== undefined) {
        emitted = this.runHook(hook, entry, desc, outLen, size, fdStart, true)
        if (emitted < 0) return false
      }
      if (desc.destructor) this.shadow.destroyedByRequest(entry)
      outLen += emitted
      off += size
      messages++
    }
    ep.consume(off - ep.inStart)
    if (outLen > 0 || this.outFds.length > fdsBefore) {
      const fds = this.outFds.length === 0 ? NO_FD_LIST : this.outFds.splice(0)
      const nfds = fds.length
      let res: "sent" | "queued" | "overflow"
      try {
        res = this.host.write(this.out, 0, outLen, fds)
      } catch (e) {
        // The compositor closed its end (EPIPE), typically right after posting a
        // wl_display.error: read what it sent first, so the client gets that error.
        if (this.onHostReadable()) this.end({ _tag: "IoError", message: `compositor write failed: ${String(e)}` })
        return false
      }
      this.stats.requests += messages
      this.stats.requestBytes += outLen
      this.stats.requestFds += nfds
      this.stats.batches++
      if (res === "overflow") {
        this.end({
          _tag: "Limit",
          limit: "host backlog",
          message: `the compositor does not read: more than ${this.options.limits.maxHostBacklog} bytes queued toward it`
        })
        return false
      }
      this.hostFdsQueued = this.host.pendingBytes > 0 ? this.hostFdsQueued + nfds : 0
      if (this.options.onBatch !== null) this.options.onBatch({ direction: "request", messages, bytes: outLen, fds: nfds })
    }
    return true
  }

  /**
   * After every read: one client may not pin more of the process's fds than the limit — neither
   * with fds it sends nor with fd-carrying events it asks for and does not read (each
   * wl_seat.get_keyboard brings a keymap fd).
   */
  private checkFdsInFlight(): boolean {
    const inFlight = this.client.inFds.length + this.hostFdsQueued + this.clientFdsQueued
    if (inFlight <= this.options.limits.maxFdsInFlight) return true
    this.end({
      _tag: "Limit",
      limit: "fds in flight",
      message: `${inFlight} fds in flight (received and not yet forwarded, or queued toward the compositor or toward the client), more than ${this.options.limits.maxFdsInFlight}`
    })
    return false
  }

  /** Walks a request's arguments in `out` (a copy of the frame), mapping ids and creating objects. */
  private walkRequest(entry: ObjectEntry, desc: MessageDesc, out: Uint8Array, start: number, size: number): WalkError | null {
    const codes = desc.codes
    const end = start + size
    let p = start + 8
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i]!
      switch (code) {
        case ArgCode.Word:
          if (p + 4 > end) return this.shortBody(entry, desc)
          p += 4
          break
        case ArgCode.String:
        case ArgCode.Array: {
          if (p + 4 > end) return this.shortBody(entry, desc)
          const len = u32(out, p)
          const padded = (len + 3) & ~3
          if (len > end - p - 4 || padded > end - p - 4) {
            return this.bad(entry, desc, `${code === ArgCode.String ? "string" : "array"} argument ${desc.args[i]!.name} overruns the message`)
          }
          if (code === ArgCode.String) {
            if (len === 0) {
              if (!desc.args[i]!.nullable) return this.bad(entry, desc, `null string argument ${desc.args[i]!.name} is not allowed`)
            } else if (out[p + 4 + len - 1] !== 0) {
              return this.bad(entry, desc, `string argument ${desc.args[i]!.name} is not NUL-terminated`)
            }
          }
          p += 4 + padded
          break
        }
        case ArgCode.Object: {
          if (p + 4 > end) return this.shortBody(entry, desc)
          const id = u32(out, p)
          if (id === 0) {
            if (!desc.args[i]!.nullable) return this.bad(entry, desc, `null object argument ${desc.args[i]!.name} is not allowed`, DisplayErrorCode.InvalidObject)
          } else {
            const obj = this.shadow.byClient(id)
            if (obj === undefined || obj.state !== ObjectState.Live) {
              return { code: DisplayErrorCode.InvalidObject, objectId: entry.clientId, iface: entry.iface.name, message: `invalid object ${id}` }
            }
            const want = desc.argInterfaces[i]
            if (want != null && want !== obj.iface.name) {
              return {
                code: DisplayErrorCode.InvalidObject,
                objectId: entry.clientId,
                iface: entry.iface.name,
                message: `invalid object ${id}: ${entry.iface.name}.${desc.name} wants ${want}, got ${obj.iface.name}`
              }
            }
            putU32(out, p, obj.hostId)
          }
          p += 4
          break
        }
        case ArgCode.NewId: {
          if (p + 4 > end) return this.shortBody(entry, desc)
          const id = u32(out, p)
          const ifaceName = desc.argInterfaces[i]
          const iface = ifaceName == null ? undefined : this.options.registry.get(ifaceName)
          if (iface === undefined) return this.bad(entry, desc, `new_id of unknown interface ${ifaceName ?? "(none)"}`)
          const made = this.createClientObject(id, iface, entry.version, entry, desc)
          if (typeof made !== "object" || "code" in made) return made as WalkError
          putU32(out, p, made.hostId)
          p += 4
          break
        }
        case ArgCode.NewIdUntyped:
          // Only wl_registry.bind has one, and it goes through walkBind.
          return this.bad(entry, desc, "untyped new_id outside wl_registry.bind")
        case ArgCode.Fd:
          break
      }
    }
    if (p !== end) return this.bad(entry, desc, `${end - p} trailing bytes after the arguments`)
    return null
  }

  private createClientObject(id: number, iface: InterfaceDesc, version: number, parent: ObjectEntry, desc: MessageDesc): ObjectEntry | WalkError {
    if (this.shadow.size >= this.options.limits.maxObjects) {
      return {
        code: DisplayErrorCode.NoMemory,
        objectId: parent.clientId,
        iface: parent.iface.name,
        message: `object limit of ${this.options.limits.maxObjects} reached (${parent.iface.name}.${desc.name})`
      }
    }
    const made = this.shadow.createByClient(id, iface, version)
    if (made === "OutOfRange" || made === "InUse") {
      return {
        code: DisplayErrorCode.InvalidObject,
        objectId: parent.clientId,
        iface: parent.iface.name,
        message: `invalid new id ${id} (${made === "InUse" ? "already in use" : "outside the client range"}) in ${parent.iface.name}.${desc.name}`
      }
    }
    return made
  }

  /** `wl_registry.bind(name, interface, version, id)`: validated against what the client was shown. */
  private walkBind(entry: ObjectEntry, desc: MessageDesc, out: Uint8Array, start: number, size: number): WalkError | null {
    const res = decodeArgs(desc, entry.clientId, out, start + 8, size - 8, NO_FDS)
    if (res._tag === "Malformed") return this.bad(entry, desc, res.error.message)
    const name = res.args[0] as number
    const nid = res.args[1] as UntypedNewId
    const g = this.globals.get(name)
    if (g === undefined) return this.bad(entry, desc, `invalid global ${name}`, DisplayErrorCode.InvalidObject)
    if (nid.interface !== g.iface.name) {
      return this.bad(entry, desc, `invalid interface for global ${name}: have ${nid.interface}, wanted ${g.iface.name}`, DisplayErrorCode.InvalidObject)
    }
    if (nid.version === 0 || nid.version > g.version) {
      return this.bad(entry, desc, `invalid version for global ${g.iface.name} (${name}): have ${nid.version}, wanted 1..${g.version}`, DisplayErrorCode.InvalidObject)
    }
    const made = this.createClientObject(nid.id, g.iface, nid.version, entry, desc)
    if ("code" in made) return made
    // The id is the last word of the message; identity today, but map it like every id.
    putU32(out, start + size - 4, made.hostId)
    return null
  }

  // ---------------------------------------------------------------------------------------------
  // Host → client (events)

  onHostReadable(): boolean {
    // libwayland-server cuts a client whose events it cannot flush (its buffer toward us is a
    // few KiB), so the compositor is read until it has nothing more, not one buffer per wake-up:
    // a client pipelining requests would otherwise get events faster than one buffer a round.
    for (let round = 0; round < MAX_HOST_READS; round++) {
      if (this.ended) return false
      const host = this.host
      let r: "data" | "again" | "eof"
      const before = host.inEnd - host.inStart
      try {
        r = host.fill()
      } catch (e) {
        // A compositor that exits or crashes with our requests unread resets the connection
        // (after everything it sent was read: the kernel reports the error last).
        const code = (e as { code?: unknown }).code
        this.end(code === "ECONNRESET" ? { _tag: "HostClosed" } : { _tag: "IoError", message: `compositor read failed: ${errorText(e)}` })
        return false
      }
      const got = host.inEnd - host.inStart - before
      const full = host.inEnd === host.inBuf.length
      if (host.inEnd > host.inStart) {
        if (!this.processEvents()) return false
      }
      if (r === "eof") {
        this.end({ _tag: "HostClosed" })
        return false
      }
      // A read that stopped short of a full buffer emptied the socket.
      if (r === "again" || got <= 0 || !full) break
    }
    if (this.host.settle !== undefined) {
      try {
        this.host.settle(this.#readPending)
      } catch (e) {
        if (!this.ended) this.end({ _tag: "IoError", message: `compositor channel failed: ${errorText(e)}` })
        return false
      }
      if (this.ended) return false
    }
    return this.checkFdsInFlight()
  }

  private processEvents(): boolean {
    const ep = this.host
    const buf = ep.inBuf
    const end = ep.inEnd
    const maxSize = this.options.limits.maxMessageSize
    const trace = this.options.trace
    let off = ep.inStart
    let outLen = 0
    let messages = 0
    while (end - off >= 8) {
      const sender = u32(buf, off)
      const w1 = u32(buf, off + 4)
      const size = w1 >>> 16
      const opcode = w1 & 0xffff
      if (size < 8 || (size & 3) !== 0 || size > maxSize) {
        return this.hostViolation(`compositor sent a message of size ${size} (object ${sender}, opcode ${opcode})`)
      }
      if (end - off < size) break
      const entry = this.shadow.byHost(sender)
      if (entry === undefined) {
        // libwayland-client drops events for unknown objects; with no interface we cannot know
        // how many fds the event carried, exactly as libwayland cannot.
        if (trace !== null) trace(`[c${this.options.id} host→client] discarded event for unknown object ${sender} opcode ${opcode}`)
        off += size
        continue
      }
      const desc = entry.iface.events[opcode]
      if (desc === undefined) {
        return this.hostViolation(`compositor sent unknown event ${opcode} for ${entry.iface.name}@${sender}`)
      }
      if (entry.state === ObjectState.Zombie) {
        // An event for an object the client already destroyed: drop it, and close the fds it
        // carried so they do not shift the fd queue for the messages behind it.
        if (trace !== null) this.traceMessage(trace, "host→client", false, entry, desc, buf, off, size, ep.inFds.length, true)
        for (let i = 0; i < desc.fdCount; i++) {
          const fd = ep.inFds.shift()
          if (fd !== undefined) closeFd(fd)
        }
        off += size
        continue
      }
      if (trace !== null) this.traceMessage(trace, "host→client", true, entry, desc, buf, off, size, ep.inFds.length)
      if (this.out.length < outLen + size) this.growOut(outLen + size)
      const out = this.out
      let emitted = size
      if (entry.iface === this.registryIface && (desc === this.globalDesc || desc === this.globalRemoveDesc)) {
        emitted = this.registryEvent(desc, entry, buf, off, size, out, outLen)
        if (emitted < 0) return false
      } else {
        copyFrame(buf, off, size, out, outLen)
        putU32(out, outLen, entry.clientId)
        const err = this.walkEvent(entry, desc, out, outLen, size)
        if (err !== null) return this.hostViolation(err)
        if (desc === this.deleteIdDesc && entry.iface === this.display) {
          const freed = this.shadow.deleteId(u32(out, outLen + 8))
          if (freed !== undefined) putU32(out, outLen + 8, freed.clientId)
        } else if (desc === this.errorDesc && entry.iface === this.display) {
          this.hostSentError = true
        }
      }
      const fdStart = this.outFds.length
      for (let i = 0; i < desc.fdCount; i++) {
        const fd = ep.inFds.shift()
        if (fd === undefined) return this.hostViolation(`compositor sent ${entry.iface.name}.${desc.name} without its fd`)
        if (emitted > 0) this.outFds.push(fd)
        else closeFd(fd)
      }
      const hook = this.eventHooks === null || emitted === 0 ? undefined : this.eventHooks.get(desc)
      if (hook !== undefined) {
        emitted = this.runHook(hook, entry, desc, outLen, emitted, fdStart, false)
        if (emitted < 0) return false
      }
      if (desc.destructor && emitted > 0) this.shadow.destroyedByEvent(entry)
      outLen += emitted
      off += size
      if (emitted > 0) messages++
    }
    ep.consume(off - ep.inStart)
    if (outLen > 0 || this.outFds.length > 0) {
      const fds = this.outFds.length === 0 ? NO_FD_LIST : this.outFds.splice(0)
      const nfds = fds.length
      let res: "sent" | "queued" | "overflow"
      try {
        res = this.client.write(this.out, 0, outLen, fds)
      } catch (e) {
        // The client went away while its events were on the way.
        const code = (e as { code?: unknown }).code
        this.end(code === "EPIPE" || code === "ECONNRESET" ? { _tag: "ClientClosed" } : { _tag: "IoError", message: `client write failed: ${String(e)}` })
        return false
      }
      this.stats.events += messages
      this.stats.eventBytes += outLen
      this.stats.eventFds += nfds
      this.stats.batches++
      if (res === "overflow") {
        this.end({
          _tag: "Limit",
          limit: "client backlog",
          message: `client does not read: more than ${this.options.limits.maxClientBacklog} bytes queued toward it`
        })
        return false
      }
      this.clientFdsQueued = this.client.pendingBytes > 0 ? this.clientFdsQueued + nfds : 0
      if (this.options.onBatch !== null) this.options.onBatch({ direction: "event", messages, bytes: outLen, fds: nfds })
    }
    return true
  }

  /** Maps an event's object ids host → client and creates server-side objects. */
  private walkEvent(entry: ObjectEntry, desc: MessageDesc, out: Uint8Array, start: number, size: number): string | null {
    const codes = desc.codes
    const end = start + size
    let p = start + 8
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i]!
      if (p + (code === ArgCode.Fd ? 0 : 4) > end) return `${entry.iface.name}.${desc.name} ends before its arguments`
      switch (code) {
        case ArgCode.Word:
          p += 4
          break
        case ArgCode.String:
        case ArgCode.Array: {
          const len = u32(out, p)
          const padded = (len + 3) & ~3
          if (padded > end - p - 4 || len > end - p - 4) return `${entry.iface.name}.${desc.name}: argument overruns the message`
          p += 4 + padded
          break
        }
        case ArgCode.Object: {
          const id = u32(out, p)
          if (id !== 0) {
            const obj = this.shadow.byHost(id)
            // libwayland-client turns an unknown object argument into NULL; an id the client
            // never saw is mapped to 0 the same way rather than leaking a host id.
            putU32(out, p, obj === undefined ? 0 : obj.clientId)
          }
          p += 4
          break
        }
        case ArgCode.NewId: {
          const id = u32(out, p)
          const ifaceName = desc.argInterfaces[i]
          const iface = ifaceName == null ? undefined : this.options.registry.get(ifaceName)
          if (iface === undefined) return `${entry.iface.name}.${desc.name}: new object of unknown interface`
          const made = this.shadow.createByHost(id, iface, entry.version)
          if (made === undefined) return `${entry.iface.name}.${desc.name}: invalid server-side new id ${id}`
          putU32(out, p, made.clientId)
          p += 4
          break
        }
        case ArgCode.NewIdUntyped:
          return `${entry.iface.name}.${desc.name}: untyped new_id in an event`
        case ArgCode.Fd:
          break
      }
    }
    if (p !== end) return `${entry.iface.name}.${desc.name}: ${end - p} trailing bytes`
    return null
  }

  /**
   * `wl_registry.global`: only interfaces the proxy knows and does not deny are shown, at min(host, generated)
   * version. `global_remove`: forwarded for names the client was shown. Returns the bytes written
   * to `out` (0 = dropped), or -1 when the connection ended.
   */
  private registryEvent(desc: MessageDesc, entry: ObjectEntry, buf: Uint8Array, off: number, size: number, out: Uint8Array, outLen: number): number {
    const end = off + size
    if (desc === this.globalDesc) {
      // global(uint name, string interface, uint version)
      if (size < 20) return this.registryMalformed(desc)
      const name = u32(buf, off + 8)
      const len = u32(buf, off + 12)
      const padded = (len + 3) & ~3
      if (len === 0 || off + 16 + padded + 4 !== end || buf[off + 16 + len - 1] !== 0) return this.registryMalformed(desc)
      const version = u32(buf, end - 4)
      const iface = this.options.registry.get(asciiString(buf, off + 16, len))
      if (iface === undefined || this.options.deniedGlobals.has(iface.name)) return 0
      const capped = Math.min(version, iface.version)
      this.globals.set(name, { iface, version: capped })
      copyFrame(buf, off, size, out, outLen)
      putU32(out, outLen, entry.clientId)
      putU32(out, outLen + size - 4, capped)
      return size
    }
    if (size !== 12) return this.registryMalformed(desc)
    const name = u32(buf, off + 8)
    if (!this.globals.delete(name)) return 0
    copyFrame(buf, off, size, out, outLen)
    putU32(out, outLen, entry.clientId)
    return size
  }

  /**
   * Runs a hand-written handler on the message at `out[at, at + size)` whose fds are
   * `outFds[fdStart..]`. Returns the bytes now at `at` (0 when dropped), or -1 when the
   * connection ended.
   */
  private runHook(hook: MessageHook, entry: ObjectEntry, desc: MessageDesc, at: number, size: number, fdStart: number, isRequest: boolean): number {
    const fds = this.outFds.slice(fdStart)
    const res = decodeArgs(desc, entry.clientId, this.out, at + 8, size - 8, fds.slice())
    if (res._tag === "Malformed") {
      // The default path validated this message already; a failure here is our own bug.
      return isRequest ? (this.violation(entry.clientId, entry.iface.name, DisplayErrorCode.Implementation, res.error.message), -1) : (this.hostViolation(res.error.message), -1)
    }
    let result: HookResult
    try {
      result = hook({ connection: this, entry, desc, args: res.args, fds })
    } catch (e) {
      const why = `${entry.iface.name}.${desc.name} handler failed: ${e instanceof Error ? e.message : String(e)}`
      for (const fd of this.outFds.splice(fdStart)) closeFd(fd)
      if (isRequest) this.violation(entry.clientId, entry.iface.name, DisplayErrorCode.Implementation, why)
      else this.hostViolation(why)
      return -1
    }
    // A hook may end the connection itself (a write of its own failed): the batch's buffers are
    // closed with it, so the walk stops here (end() closed the fds still queued).
    if (this.ended) return -1
    switch (result._tag) {
      case "Forward":
        return size
      case "Drop":
        this.outFds.length = fdStart
        return 0
      case "Violation":
        this.outFds.length = fdStart
        if (isRequest) this.violation(entry.clientId, entry.iface.name, result.code, `${entry.iface.name}@${entry.clientId}.${desc.name}: ${result.message}`)
        else this.hostViolation(result.message)
        return -1
      case "Replace": {
        this.outFds.length = fdStart
        let n = 0
        for (const m of result.messages) {
          const frame = encodeMessage(m.objectId, m.desc, m.args, this.outFds)
          if (this.out.length < at + n + frame.length) this.growOut(at + n + frame.length)
          this.out.set(frame, at + n)
          n += frame.length
        }
        return n
      }
    }
  }

  private registryMalformed(desc: MessageDesc): number {
    this.hostViolation(`compositor sent a malformed wl_registry.${desc.name}`)
    return -1
  }

  // ---------------------------------------------------------------------------------------------
  // Writability, errors, teardown

  /** The client socket became writable: flush what is queued toward it. */
  onClientWritable(): boolean {
    try {
      const drained = this.client.flush()
      if (drained) this.clientFdsQueued = 0
      return drained
    } catch (e) {
      this.end({ _tag: "IoError", message: `client write failed: ${String(e)}` })
      return true
    }
  }

  /** The compositor socket became writable: flush, and say whether the client may be read again. */
  onHostWritable(): boolean {
    try {
      const drained = this.host.flush()
      if (drained) this.hostFdsQueued = 0
      return drained
    } catch (e) {
      this.end({ _tag: "IoError", message: `compositor write failed: ${String(e)}` })
      return true
    }
  }

  /** True when so much is queued toward the compositor that the client should not be read. */
  get hostBacklogged(): boolean {
    return this.host.pendingBytes > this.options.limits.hostBackpressure
  }

  private growOut(min: number): void {
    let n = this.out.length * 2
    while (n < min) n *= 2
    const next = new Uint8Array(n)
    next.set(this.out)
    this.out = next
  }

  private shortBody(entry: ObjectEntry, desc: MessageDesc): WalkError {
    return this.bad(entry, desc, "message ends before its arguments")
  }

  private bad(entry: ObjectEntry, desc: MessageDesc, why: string, code: number = DisplayErrorCode.InvalidMethod): WalkError {
    return { code, objectId: entry.clientId, iface: entry.iface.name, message: `${entry.iface.name}@${entry.clientId}.${desc.name}: ${why}` }
  }

  /** Ends this client with `wl_display.error(object, code, message)`. Always returns false. */
  private violation(objectId: number, iface: string, code: number, message: string): false {
    this.end({ _tag: "ClientViolation", violation: new ProtocolViolation({ objectId, interface: iface, code, message }) })
    return false
  }

  private hostViolation(message: string): false {
    this.end({ _tag: "HostViolation", message })
    return false
  }

  /** Sends `wl_display.error` to the client, best effort (the client is going away anyway). */
  private sendDisplayError(objectId: number, code: number, message: string): void {
    try {
      const frame = encodeMessage(1, this.errorDesc, [objectId, code, message], [])
      this.client.write(frame, 0, frame.length, [])
      this.client.flush()
    } catch {
      // The client may already be gone; nothing else to tell it.
    }
  }

  /**
   * Ends the connection once: tells the client why when it is still there, then closes both
   * sockets (and every fd they still hold) and reports the reason.
   */
  end(reason: ConnectionEndReason): void {
    if (this.ended) return
    this.ended = true
    switch (reason._tag) {
      case "ClientViolation":
        this.sendDisplayError(reason.violation.objectId, reason.violation.code, reason.violation.message)
        break
      case "HostViolation":
        this.sendDisplayError(1, DisplayErrorCode.Implementation, `sommelier: ${reason.message}`)
        break
      case "HostClosed":
        if (!this.hostSentError) this.sendDisplayError(1, DisplayErrorCode.Implementation, "sommelier: the host compositor closed the connection")
        break
      case "Limit":
        this.sendDisplayError(1, DisplayErrorCode.NoMemory, `sommelier: ${reason.message}`)
        break
      case "Shutdown":
        this.sendDisplayError(1, DisplayErrorCode.Implementation, "sommelier: the proxy is shutting down")
        break
      case "IoError":
        // Whichever side failed, the client is told (if it is still there to read it).
        this.sendDisplayError(1, DisplayErrorCode.Implementation, `sommelier: ${reason.message}`)
        break
      case "ClientClosed":
        break
    }
    for (const fd of this.outFds.splice(0)) closeFd(fd)
    this.client.close()
    this.host.close()
    this.options.onEnd(reason)
  }

  // ---------------------------------------------------------------------------------------------
  // Tracing (slow path, only with --trace)

  private traceMessage(
    trace: (line: string) => void,
    side: string,
    sent: boolean,
    entry: ObjectEntry,
    desc: MessageDesc,
    buf: Uint8Array,
    off: number,
    size: number,
    fdsQueued: number,
    discarded = false
  ): void {
    // Show fd arguments by their queue position: the fds themselves are not popped yet.
    const fakeFds = { length: fdsQueued, n: 0, shift(): number | undefined { return this.n < this.length ? -1 - this.n++ : undefined } }
    const res = decodeArgs(desc, entry.clientId, buf, off + 8, size - 8, fakeFds)
    const isClientSide = side === "client→host"
    const name = (id: number): string => {
      const o = isClientSide ? this.shadow.byClient(id) : this.shadow.byHost(id)
      return `${o?.iface.name ?? "[unknown]"}@${id}`
    }
    const args: readonly ArgValue[] = res._tag === "Ok" ? res.args : []
    trace(formatTraceLine(`[c${this.options.id} ${side}]`, sent, entry.iface.name, isClientSide ? entry.clientId : entry.hostId, desc, args, name, discarded))
  }
}

const NO_FDS = { length: 0, shift: (): number | undefined => undefined }
/** Most batches carry no fds: no array allocated for them. */
const NO_FD_LIST: readonly number[] = []

/** Buffers read from the compositor per wake-up at most (fairness toward other clients). */
const MAX_HOST_READS = 64

let closeFdImpl: (fd: number) => void = () => {}
/** Installed by the transport layer so this module needs no FFI import. */
export const setFdCloser = (f: (fd: number) => void): void => {
  closeFdImpl = f
}
const closeFd = (fd: number): void => closeFdImpl(fd)

export { SERVER_ID_START }
