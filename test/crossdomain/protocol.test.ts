/**
 * The cross-domain encodings, byte for byte against the offsets of spec `cross-domain.md` §3.2
 * (written out here as raw little-endian words, not through the module's own offset table).
 */
import { describe, expect, it } from "@effect/vitest"
import * as P from "../../src/transport/crossdomain/protocol.js"

const u32 = (b: Uint8Array, o: number): number => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(o, true)
const u16 = (b: Uint8Array, o: number): number => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint16(o, true)
const hdr = (b: Uint8Array) => ({ cmd: b[0], ring: b[1], size: u16(b, 2), pad: u32(b, 4) })

describe("cross-domain constants (spec §3.1)", () => {
  it("commands, types, rings, limits", () => {
    expect([P.CMD_INIT, P.CMD_GET_IMAGE_REQUIREMENTS, P.CMD_POLL, P.CMD_SEND, P.CMD_RECEIVE, P.CMD_READ, P.CMD_WRITE]).toEqual([1, 2, 3, 4, 5, 6, 7])
    expect([P.CHANNEL_TYPE_WAYLAND, P.CHANNEL_TYPE_CAMERA]).toEqual([1, 2])
    expect([P.ID_TYPE_VIRTGPU_BLOB, P.ID_TYPE_VIRTGPU_SYNC, P.ID_TYPE_READ_PIPE, P.ID_TYPE_WRITE_PIPE]).toEqual([1, 2, 3, 4])
    expect([P.QUERY_RING, P.CHANNEL_RING, P.POLL_RINGS_MASK, P.NUM_RINGS]).toEqual([0, 1, 0b10, 2])
    expect(P.PIPE_READ_START).toBe(0x80000000)
    expect(P.MAX_IDENTIFIERS).toBe(28)
    expect(P.RING_SIZE).toBe(4096)
    expect(P.MAX_SEND_DATA).toBe(3744)
    expect(P.MAX_WRITE_DATA).toBe(4072)
    expect([P.CAPSET_CROSS_DOMAIN, P.CAPSET_VERSION, P.CAPS_SIZE]).toEqual([5, 0, 16])
    expect(P.SendOffset).toEqual({ numIdentifiers: 8, opaqueDataSize: 12, identifiers: 16, identifierTypes: 128, identifierSizes: 240, data: 352 })
    expect(P.ReadWriteOffset).toEqual({ identifier: 8, hangUp: 12, opaqueDataSize: 16, pad: 20, data: 24 })
  })
})

describe("cross-domain encodings (spec §3.2)", () => {
  it("INIT is 20 bytes: hdr, query ring @8, channel ring @12, channel type @16", () => {
    const b = P.encodeInit({ queryRingId: 7, channelRingId: 8, channelType: 1 })
    expect(b.length).toBe(20)
    expect(hdr(b)).toEqual({ cmd: 1, ring: 0, size: 20, pad: 0 })
    expect([u32(b, 8), u32(b, 12), u32(b, 16)]).toEqual([7, 8, 1])
    expect(Buffer.from(b).toString("hex")).toBe("01001400000000000700000008000000" + "01000000")
  })

  it("POLL is 16 bytes: hdr + u64 pad", () => {
    const b = P.encodePoll()
    expect(Buffer.from(b).toString("hex")).toBe("03001000000000000000000000000000")
  })

  it("GET_IMAGE_REQUIREMENTS is 24 bytes: width @8, height @12, drm_format @16, flags @20", () => {
    const b = P.encodeGetImageRequirements({ width: 640, height: 480, drmFormat: 0x34325258, flags: 0x11 })
    expect(b.length).toBe(24)
    expect(hdr(b)).toEqual({ cmd: 2, ring: 0, size: 24, pad: 0 })
    expect([u32(b, 8), u32(b, 12), u32(b, 16), u32(b, 20)]).toEqual([640, 480, 0x34325258, 0x11])
  })

  it("capabilities: version @0, supported_channels @4, supports_dmabuf @8, external memory @12; short copies read as 0", () => {
    const raw = new Uint8Array([1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    expect(P.decodeCapabilities(raw)).toEqual({ version: 1, supportedChannels: 2, supportsDmabuf: true, supportsExternalGpuMemory: false })
    expect(P.encodeCapabilities(P.decodeCapabilities(raw))).toEqual(raw)
    expect(P.decodeCapabilities(raw.subarray(0, 8))).toEqual({ version: 1, supportedChannels: 2, supportsDmabuf: false, supportsExternalGpuMemory: false })
  })

  it("image requirements: strides @0, offsets @16, modifier @32, size @40, blob_id @48, map_info @52, memory_idx @56, physical_device_idx @60", () => {
    const b = new Uint8Array(64)
    const d = new DataView(b.buffer)
    d.setUint32(0, 2560, true)
    d.setUint32(20, 4096, true)
    d.setBigUint64(32, 0x0100000000000001n, true)
    d.setBigUint64(40, 1228800n, true)
    d.setUint32(48, 4, true)
    d.setUint32(52, 0x31, true)
    d.setInt32(56, -1, true)
    d.setInt32(60, -1, true)
    const r = P.decodeImageRequirements(b)
    expect(r).toEqual({
      strides: [2560, 0, 0, 0],
      offsets: [0, 4096, 0, 0],
      modifier: 0x0100000000000001n,
      size: 1228800n,
      blobId: 4,
      mapInfo: 0x31,
      memoryIdx: -1,
      physicalDeviceIdx: -1
    })
    expect(P.encodeImageRequirements(r as P.ImageRequirements)).toEqual(b)
    expect(P.isMalformed(P.decodeImageRequirements(b.subarray(0, 63)))).toBe(true)
  })

  it("SEND: 352-byte header, num_identifiers @8, opaque_data_size @12, ids @16, types @128, sizes @240, data @352", () => {
    const data = new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0x42])
    const ids = [
      { id: 11, type: 1, size: 0 },
      { id: 0x80000001, type: 3, size: 0 }
    ]
    const b = P.encodeSend(ids, data)
    expect(b.length).toBe(357)
    expect(hdr(b)).toEqual({ cmd: 4, ring: 0, size: 357, pad: 0 })
    expect(u32(b, 8)).toBe(2)
    expect(u32(b, 12)).toBe(5)
    expect([u32(b, 16), u32(b, 20), u32(b, 24)]).toEqual([11, 0x80000001, 0])
    expect([u32(b, 128), u32(b, 132), u32(b, 136)]).toEqual([1, 3, 0])
    expect([u32(b, 240), u32(b, 244)]).toEqual([0, 0])
    // identifiers[27] is the last slot before types, types[27] the last before sizes.
    expect(u32(b, 16 + 27 * 4)).toBe(0)
    expect(16 + 28 * 4).toBe(128)
    expect(128 + 28 * 4).toBe(240)
    expect(240 + 28 * 4).toBe(352)
    expect([...b.subarray(352)]).toEqual([...data])
  })

  it("RECEIVE decodes identifiers with sizes and a data view; 28 identifiers fill every slot", () => {
    const ids = Array.from({ length: 28 }, (_, i) => ({ id: 100 + i, type: i % 2 === 0 ? 1 : 4, size: i % 2 === 0 ? 4096 * (i + 1) : 0 }))
    const data = new TextEncoder().encode("hello ring")
    const ring = new Uint8Array(4096)
    const n = P.writeSendInto(ring, P.CMD_RECEIVE, ids, data, 0, data.length)
    expect(n).toBe(352 + 10)
    expect(u32(ring, 16 + 27 * 4)).toBe(127)
    expect(u32(ring, 128 + 27 * 4)).toBe(4)
    expect(u32(ring, 240)).toBe(4096)
    const t = P.decodeTransfer(ring)
    if (P.isMalformed(t)) throw new Error(t.message)
    expect(t._tag).toBe("Receive")
    expect(t.identifiers).toEqual(ids)
    expect(new TextDecoder().decode(t.data)).toBe("hello ring")
    expect(P.decodeChannelRing(ring)).toEqual(t)
  })

  it("SEND/RECEIVE refuse more than 28 identifiers, more than 3744 bytes, data past the buffer", () => {
    const buf = new Uint8Array(4096)
    expect(() => P.writeSendInto(buf, P.CMD_SEND, Array.from({ length: 29 }, () => ({ id: 1, type: 1, size: 0 })), new Uint8Array(0), 0, 0)).toThrow(/28/)
    expect(() => P.writeSendInto(buf, P.CMD_SEND, [], new Uint8Array(3745), 0, 3745)).toThrow(/3744/)
    expect(P.writeSendInto(buf, P.CMD_SEND, [], new Uint8Array(3744), 0, 3744)).toBe(4096)
    const d = new DataView(buf.buffer)
    buf[0] = P.CMD_RECEIVE
    d.setUint32(8, 29, true)
    expect(P.isMalformed(P.decodeTransfer(buf))).toBe(true)
    d.setUint32(8, 0, true)
    d.setUint32(12, 3745, true)
    expect(P.isMalformed(P.decodeTransfer(buf))).toBe(true)
    d.setUint32(12, 100, true)
    expect(P.isMalformed(P.decodeTransfer(buf.subarray(0, 400)))).toBe(true)
    expect(P.isMalformed(P.decodeTransfer(buf.subarray(0, 351)))).toBe(true)
  })

  it("WRITE and READ: identifier @8, hang_up @12, opaque_data_size @16, pad @20, data @24", () => {
    const w = P.encodeWrite(0x33, false, new Uint8Array([1, 2, 3]))
    expect(Buffer.from(w).toString("hex")).toBe("07001b0000000000" + "33000000" + "00000000" + "03000000" + "00000000" + "010203")
    const r = P.encodeRead(0x80000001, true, new Uint8Array(0))
    expect(Buffer.from(r).toString("hex")).toBe("0600180000000000" + "01000080" + "01000000" + "00000000" + "00000000")
    expect(P.decodeReadWrite(r)).toEqual({ _tag: "Read", identifier: 0x80000001, hangUp: true, data: new Uint8Array(0) })
    const big = new Uint8Array(4096)
    expect(P.writeReadWriteInto(big, P.CMD_READ, 5, false, new Uint8Array(4072), 0, 4072)).toBe(4096)
    expect(() => P.writeReadWriteInto(big, P.CMD_READ, 5, false, new Uint8Array(4073), 0, 4073)).toThrow(/4072/)
    const dec = P.decodeChannelRing(big)
    if (P.isMalformed(dec) || dec._tag !== "Read") throw new Error("not a READ")
    expect(dec.data.length).toBe(4072)
  })

  it("the channel ring: unknown commands and short rings are values, not exceptions", () => {
    const ring = new Uint8Array(4096)
    ring[0] = 9
    expect(P.decodeChannelRing(ring)).toEqual({ _tag: "Unknown", cmd: 9 })
    expect(P.isMalformed(P.decodeChannelRing(ring.subarray(0, 4)))).toBe(true)
    expect(P.readHeader(ring.subarray(0, 7))).toBeUndefined()
  })

  it("read-pipe ids: pre-increment from 0x80000000, never below it after a wrap", () => {
    let c = P.PIPE_READ_START
    c = P.nextReadPipeId(c)
    expect(c).toBe(0x80000001)
    expect(P.nextReadPipeId(c)).toBe(0x80000002)
    expect(P.nextReadPipeId(0xffffffff)).toBe(0x80000000)
  })
})
