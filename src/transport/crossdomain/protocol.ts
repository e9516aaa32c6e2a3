/**
 * The virtio-gpu cross-domain wire protocol (rutabaga_gfx `cross_domain_protocol.rs`, sommelier
 * `virtgpu_cross_domain_protocol.h`): constants, byte-exact encoders and decoders of every
 * command and of the ring layouts. Little-endian, offsets as in the C structs on x86-64.
 *
 * Pure: no I/O, no device, no fds. Decoders return a value for malformed input (`Malformed`),
 * they never throw. The `write…Into` encoders fill a caller's buffer (the data path reuses one
 * 4096-byte buffer per channel); the `encode…` forms allocate (setup, tests).
 *
 * Not here: what a channel does with these messages (channel.ts).
 */

// Commands (the `cmd` byte of the header).
export const CMD_INIT = 1
export const CMD_GET_IMAGE_REQUIREMENTS = 2
export const CMD_POLL = 3
export const CMD_SEND = 4
export const CMD_RECEIVE = 5
export const CMD_READ = 6
export const CMD_WRITE = 7

// Channel types (INIT.channel_type); supported_channels has bit (1 << type).
export const CHANNEL_TYPE_WAYLAND = 1
export const CHANNEL_TYPE_CAMERA = 2
/** crosvm's internal sockets; no guest proxy asks for it (the emulator refuses it). */
export const CHANNEL_TYPE_INTERNAL_SOCKET = 0xffffffff

// Identifier types in SEND/RECEIVE.
export const ID_TYPE_VIRTGPU_BLOB = 1
/** Defined by every host, handled by none. */
export const ID_TYPE_VIRTGPU_SYNC = 2
export const ID_TYPE_READ_PIPE = 3
export const ID_TYPE_WRITE_PIPE = 4
/** Host-to-guest only: an eventfd, or a socket, the compositor passed (spec §3). */
export const ID_TYPE_EVENT = 5
export const ID_TYPE_SOCKET = 7

// Context rings.
export const QUERY_RING = 0
export const CHANNEL_RING = 1
/** Only ring 1 raises DRM events: ring 0 answers queries the guest waits for. */
export const POLL_RINGS_MASK = 1 << CHANNEL_RING
export const NUM_RINGS = 2

/** Read-pipe ids live above this; the first is 0x80000001 (pre-increment). */
export const PIPE_READ_START = 0x80000000

export const MAX_IDENTIFIERS = 28
export const RING_SIZE = 4096
export const HEADER_SIZE = 8
export const INIT_SIZE = 20
export const GET_IMAGE_REQUIREMENTS_SIZE = 24
export const POLL_SIZE = 16
/** SEND/RECEIVE header: 16 + 3 × 28 × 4. */
export const SEND_HEADER_SIZE = 352
export const READ_WRITE_HEADER_SIZE = 24
/** Largest SEND/RECEIVE payload: one ring page minus the header. */
export const MAX_SEND_DATA = RING_SIZE - SEND_HEADER_SIZE // 3744
/** Largest READ/WRITE payload. */
export const MAX_WRITE_DATA = RING_SIZE - READ_WRITE_HEADER_SIZE // 4072

// Capset (GET_CAPS payload).
export const CAPSET_CROSS_DOMAIN = 5
export const CAPSET_VERSION = 0
export const CAPS_SIZE = 16
export const IMAGE_REQUIREMENTS_SIZE = 64

/** Field offsets of SEND / RECEIVE (struct CrossDomainSendReceive). */
export const SendOffset = {
  numIdentifiers: 8,
  opaqueDataSize: 12,
  identifiers: 16,
  identifierTypes: 16 + 4 * MAX_IDENTIFIERS, // 128
  identifierSizes: 16 + 8 * MAX_IDENTIFIERS, // 240
  data: SEND_HEADER_SIZE // 352
} as const

/** Field offsets of READ / WRITE (struct CrossDomainReadWrite). */
export const ReadWriteOffset = { identifier: 8, hangUp: 12, opaqueDataSize: 16, pad: 20, data: 24 } as const

/**
 * A DataView over `b`, kept per array: the channel encodes into and decodes from the same few
 * buffers (its send buffer, the mapped rings) on every round trip, as does the emulator (the
 * channel ring it writes RECEIVEs and READs into), and constructing a DataView is a call into
 * V8's runtime that showed in profiles of the data path.
 */
const views = new WeakMap<Uint8Array, DataView>()
export const dataView = (b: Uint8Array): DataView => {
  let d = views.get(b)
  if (d === undefined) {
    d = new DataView(b.buffer, b.byteOffset, b.byteLength)
    views.set(b, d)
  }
  return d
}

// -------------------------------------------------------------------------------------------------
// Header

export interface Header {
  readonly cmd: number
  /** `fence_ctx_idx` in C; hosts ignore it and guests write 0. */
  readonly ringIdx: number
  /** Total bytes of this command, header and trailing data included. */
  readonly cmdSize: number
}

/** Writes the 8-byte header at `off`: cmd u8 @0, ring_idx u8 @1, cmd_size u16 @2, pad u32 @4. */
export const writeHeader = (d: DataView, off: number, cmd: number, cmdSize: number): void => {
  d.setUint8(off, cmd)
  d.setUint8(off + 1, 0)
  d.setUint16(off + 2, cmdSize, true)
  d.setUint32(off + 4, 0, true)
}

export const readHeader = (b: Uint8Array, off = 0): Header | undefined => {
  if (b.length - off < HEADER_SIZE) return undefined
  const d = dataView(b)
  return { cmd: d.getUint8(off), ringIdx: d.getUint8(off + 1), cmdSize: d.getUint16(off + 2, true) }
}

// -------------------------------------------------------------------------------------------------
// Capabilities, INIT, GET_IMAGE_REQUIREMENTS, POLL

export interface Capabilities {
  readonly version: number
  /** Bit (1 << channel type) per channel the host has configured. */
  readonly supportedChannels: number
  readonly supportsDmabuf: boolean
  readonly supportsExternalGpuMemory: boolean
}

export const encodeCapabilities = (c: Capabilities): Uint8Array => {
  const b = new Uint8Array(CAPS_SIZE)
  const d = dataView(b)
  d.setUint32(0, c.version, true)
  d.setUint32(4, c.supportedChannels, true)
  d.setUint32(8, c.supportsDmabuf ? 1 : 0, true)
  d.setUint32(12, c.supportsExternalGpuMemory ? 1 : 0, true)
  return b
}

/** GET_CAPS copies min(size, host size) bytes: missing trailing fields read as 0. */
export const decodeCapabilities = (b: Uint8Array): Capabilities => {
  const full = new Uint8Array(CAPS_SIZE)
  full.set(b.subarray(0, CAPS_SIZE))
  const d = dataView(full)
  return {
    version: d.getUint32(0, true),
    supportedChannels: d.getUint32(4, true),
    supportsDmabuf: d.getUint32(8, true) !== 0,
    supportsExternalGpuMemory: d.getUint32(12, true) !== 0
  }
}

export interface Init {
  readonly queryRingId: number
  readonly channelRingId: number
  readonly channelType: number
}

/** The 20-byte standard INIT; send it alone in its EXECBUFFER (hosts pick the variant by size). */
export const encodeInit = (i: Init): Uint8Array => {
  const b = new Uint8Array(INIT_SIZE)
  const d = dataView(b)
  writeHeader(d, 0, CMD_INIT, INIT_SIZE)
  d.setUint32(8, i.queryRingId, true)
  d.setUint32(12, i.channelRingId, true)
  d.setUint32(16, i.channelType, true)
  return b
}

export interface GetImageRequirements {
  readonly width: number
  readonly height: number
  /** DRM fourcc. */
  readonly drmFormat: number
  /** gbm-style use flags (SCANOUT 1, LINEAR 16). */
  readonly flags: number
}

export const encodeGetImageRequirements = (r: GetImageRequirements): Uint8Array => {
  const b = new Uint8Array(GET_IMAGE_REQUIREMENTS_SIZE)
  const d = dataView(b)
  writeHeader(d, 0, CMD_GET_IMAGE_REQUIREMENTS, GET_IMAGE_REQUIREMENTS_SIZE)
  d.setUint32(8, r.width, true)
  d.setUint32(12, r.height, true)
  d.setUint32(16, r.drmFormat, true)
  d.setUint32(20, r.flags, true)
  return b
}

export interface ImageRequirements {
  readonly strides: readonly [number, number, number, number]
  readonly offsets: readonly [number, number, number, number]
  readonly modifier: bigint
  readonly size: bigint
  readonly blobId: number
  readonly mapInfo: number
  readonly memoryIdx: number
  readonly physicalDeviceIdx: number
}

/** The reply at query-ring offset 0. */
export const decodeImageRequirements = (b: Uint8Array): ImageRequirements | Malformed => {
  if (b.length < IMAGE_REQUIREMENTS_SIZE) return malformed(`image requirements need ${IMAGE_REQUIREMENTS_SIZE} bytes, have ${b.length}`)
  const d = dataView(b)
  const u = (o: number): number => d.getUint32(o, true)
  return {
    strides: [u(0), u(4), u(8), u(12)],
    offsets: [u(16), u(20), u(24), u(28)],
    modifier: d.getBigUint64(32, true),
    size: d.getBigUint64(40, true),
    blobId: u(48),
    mapInfo: u(52),
    memoryIdx: d.getInt32(56, true),
    physicalDeviceIdx: d.getInt32(60, true)
  }
}

export const encodeImageRequirements = (r: ImageRequirements): Uint8Array => {
  const b = new Uint8Array(IMAGE_REQUIREMENTS_SIZE)
  const d = dataView(b)
  for (let i = 0; i < 4; i++) {
    d.setUint32(4 * i, r.strides[i]!, true)
    d.setUint32(16 + 4 * i, r.offsets[i]!, true)
  }
  d.setBigUint64(32, r.modifier, true)
  d.setBigUint64(40, r.size, true)
  d.setUint32(48, r.blobId, true)
  d.setUint32(52, r.mapInfo, true)
  d.setInt32(56, r.memoryIdx, true)
  d.setInt32(60, r.physicalDeviceIdx, true)
  return b
}

/** POLL: header + u64 pad; its fence on ring 1 lets the host deliver one message. */
export const encodePoll = (): Uint8Array => {
  const b = new Uint8Array(POLL_SIZE)
  writeHeader(dataView(b), 0, CMD_POLL, POLL_SIZE)
  return b
}

// -------------------------------------------------------------------------------------------------
// SEND / RECEIVE

export interface Identifier {
  readonly id: number
  readonly type: number
  /** RECEIVE: the blob's byte size; SEND: ignored by hosts (0). */
  readonly size: number
}

export interface Malformed {
  readonly _tag: "Malformed"
  readonly message: string
}

const malformed = (message: string): Malformed => ({ _tag: "Malformed", message })

export const isMalformed = (v: unknown): v is Malformed => typeof v === "object" && v !== null && (v as { _tag?: unknown })._tag === "Malformed"

/**
 * Writes a SEND (or RECEIVE) into `out` at 0: header, identifiers, then `data[off, off + len)`
 * at 352. Unused identifier slots are zeroed. Returns cmd_size (352 + len).
 */
export const writeSendInto = (
  out: Uint8Array,
  cmd: typeof CMD_SEND | typeof CMD_RECEIVE,
  ids: readonly Identifier[],
  data: Uint8Array,
  off: number,
  len: number,
  /** Identifier slots to write (the rest are zero from `ids.length` on); a caller reusing `out` may know fewer need clearing. */
  slots: number = MAX_IDENTIFIERS
): number => {
  if (ids.length > MAX_IDENTIFIERS) throw new RangeError(`${ids.length} identifiers, at most ${MAX_IDENTIFIERS}`)
  if (len > MAX_SEND_DATA) throw new RangeError(`${len} bytes, at most ${MAX_SEND_DATA} per ${cmd === CMD_SEND ? "SEND" : "RECEIVE"}`)
  const size = SEND_HEADER_SIZE + len
  if (out.length < size) throw new RangeError(`buffer of ${out.length} bytes, need ${size}`)
  const d = dataView(out)
  writeHeader(d, 0, cmd, size)
  d.setUint32(SendOffset.numIdentifiers, ids.length, true)
  d.setUint32(SendOffset.opaqueDataSize, len, true)
  const n = Math.min(MAX_IDENTIFIERS, Math.max(slots, ids.length))
  for (let i = 0; i < n; i++) {
    const id = ids[i]
    d.setUint32(SendOffset.identifiers + 4 * i, id === undefined ? 0 : id.id, true)
    d.setUint32(SendOffset.identifierTypes + 4 * i, id === undefined ? 0 : id.type, true)
    d.setUint32(SendOffset.identifierSizes + 4 * i, id === undefined ? 0 : id.size, true)
  }
  if (len > 0) out.set(data.subarray(off, off + len), SEND_HEADER_SIZE)
  return size
}

export const encodeSend = (ids: readonly Identifier[], data: Uint8Array): Uint8Array => {
  const out = new Uint8Array(SEND_HEADER_SIZE + data.length)
  writeSendInto(out, CMD_SEND, ids, data, 0, data.length)
  return out
}

export const encodeReceive = (ids: readonly Identifier[], data: Uint8Array): Uint8Array => {
  const out = new Uint8Array(SEND_HEADER_SIZE + data.length)
  writeSendInto(out, CMD_RECEIVE, ids, data, 0, data.length)
  return out
}

export interface Transfer {
  readonly _tag: "Send" | "Receive"
  readonly identifiers: readonly Identifier[]
  /** A view into the input (copy it before the ring is reused). */
  readonly data: Uint8Array
}

/** Decodes a SEND or RECEIVE at the start of `b` (a ring page or a command buffer). */
export const decodeTransfer = (b: Uint8Array): Transfer | Malformed => {
  if (b.length < SEND_HEADER_SIZE) return malformed(`SEND/RECEIVE needs ${SEND_HEADER_SIZE} bytes, have ${b.length}`)
  const d = dataView(b)
  const cmd = d.getUint8(0)
  if (cmd !== CMD_SEND && cmd !== CMD_RECEIVE) return malformed(`command ${cmd} is not SEND or RECEIVE`)
  const n = d.getUint32(SendOffset.numIdentifiers, true)
  const len = d.getUint32(SendOffset.opaqueDataSize, true)
  if (n > MAX_IDENTIFIERS) return malformed(`${n} identifiers, at most ${MAX_IDENTIFIERS}`)
  if (len > MAX_SEND_DATA || SEND_HEADER_SIZE + len > b.length) return malformed(`opaque_data_size ${len} overruns the ${b.length}-byte buffer`)
  const identifiers: Identifier[] = []
  for (let i = 0; i < n; i++) {
    identifiers.push({
      id: d.getUint32(SendOffset.identifiers + 4 * i, true),
      type: d.getUint32(SendOffset.identifierTypes + 4 * i, true),
      size: d.getUint32(SendOffset.identifierSizes + 4 * i, true)
    })
  }
  return { _tag: cmd === CMD_SEND ? "Send" : "Receive", identifiers, data: b.subarray(SEND_HEADER_SIZE, SEND_HEADER_SIZE + len) }
}

// -------------------------------------------------------------------------------------------------
// READ / WRITE

/** Writes a READ or WRITE into `out` at 0; returns cmd_size (24 + len). */
export const writeReadWriteInto = (
  out: Uint8Array,
  cmd: typeof CMD_READ | typeof CMD_WRITE,
  identifier: number,
  hangUp: boolean,
  data: Uint8Array,
  off: number,
  len: number
): number => {
  if (len > MAX_WRITE_DATA) throw new RangeError(`${len} bytes, at most ${MAX_WRITE_DATA} per ${cmd === CMD_READ ? "READ" : "WRITE"}`)
  const size = READ_WRITE_HEADER_SIZE + len
  if (out.length < size) throw new RangeError(`buffer of ${out.length} bytes, need ${size}`)
  const d = dataView(out)
  writeHeader(d, 0, cmd, size)
  d.setUint32(ReadWriteOffset.identifier, identifier, true)
  d.setUint32(ReadWriteOffset.hangUp, hangUp ? 1 : 0, true)
  d.setUint32(ReadWriteOffset.opaqueDataSize, len, true)
  d.setUint32(ReadWriteOffset.pad, 0, true)
  if (len > 0) out.set(data.subarray(off, off + len), READ_WRITE_HEADER_SIZE)
  return size
}

export const encodeWrite = (identifier: number, hangUp: boolean, data: Uint8Array): Uint8Array => {
  const out = new Uint8Array(READ_WRITE_HEADER_SIZE + data.length)
  writeReadWriteInto(out, CMD_WRITE, identifier, hangUp, data, 0, data.length)
  return out
}

export const encodeRead = (identifier: number, hangUp: boolean, data: Uint8Array): Uint8Array => {
  const out = new Uint8Array(READ_WRITE_HEADER_SIZE + data.length)
  writeReadWriteInto(out, CMD_READ, identifier, hangUp, data, 0, data.length)
  return out
}

export interface PipeData {
  readonly _tag: "Read" | "Write"
  readonly identifier: number
  readonly hangUp: boolean
  /** A view into the input (copy it before the ring is reused). */
  readonly data: Uint8Array
}

export const decodeReadWrite = (b: Uint8Array): PipeData | Malformed => {
  if (b.length < READ_WRITE_HEADER_SIZE) return malformed(`READ/WRITE needs ${READ_WRITE_HEADER_SIZE} bytes, have ${b.length}`)
  const d = dataView(b)
  const cmd = d.getUint8(0)
  if (cmd !== CMD_READ && cmd !== CMD_WRITE) return malformed(`command ${cmd} is not READ or WRITE`)
  const len = d.getUint32(ReadWriteOffset.opaqueDataSize, true)
  if (len > MAX_WRITE_DATA || READ_WRITE_HEADER_SIZE + len > b.length) return malformed(`opaque_data_size ${len} overruns the ${b.length}-byte buffer`)
  return {
    _tag: cmd === CMD_READ ? "Read" : "Write",
    identifier: d.getUint32(ReadWriteOffset.identifier, true),
    hangUp: d.getUint32(ReadWriteOffset.hangUp, true) !== 0,
    data: b.subarray(READ_WRITE_HEADER_SIZE, READ_WRITE_HEADER_SIZE + len)
  }
}

// -------------------------------------------------------------------------------------------------
// The channel ring as the guest reads it

export type RingMessage = Transfer | PipeData | { readonly _tag: "Unknown"; readonly cmd: number }

/** What the host left in the channel ring when a ring-1 fence signalled. */
export const decodeChannelRing = (ring: Uint8Array): RingMessage | Malformed => {
  const h = readHeader(ring)
  if (h === undefined) return malformed("channel ring shorter than a header")
  switch (h.cmd) {
    case CMD_RECEIVE:
      return decodeTransfer(ring)
    case CMD_READ:
      return decodeReadWrite(ring)
    default:
      return { _tag: "Unknown", cmd: h.cmd }
  }
}

/** Guest read-pipe id counter: pre-increment from 0x80000000, never below it after a wrap. */
export const nextReadPipeId = (counter: number): number => Math.max((counter + 1) >>> 0, PIPE_READ_START)
