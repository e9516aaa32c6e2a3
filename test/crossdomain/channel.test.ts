/**
 * The cross-domain channel against an in-process fake device (fake-device.ts): setup sequence,
 * identifier translation both ways, SEND splitting, POLL re-arming, one ring message per fence,
 * pipes and their hang-ups, compositor EOF. Every test checks it leaked no fds.
 */
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
import { sys } from "../../src/ffi/libc.js"
import { EPOLLIN, EPOLLOUT } from "../../src/transport/reactor.js"
import { memfdCreate } from "../../src/transport/memfd.js"
import { CrossDomainChannel, CrossDomainError } from "../../src/transport/crossdomain/channel.js"
import { CrossDomainEndpoint } from "../../src/transport/crossdomain/endpoint.js"
import * as P from "../../src/transport/crossdomain/protocol.js"
import { openFds } from "../helpers/fds.js"
import { FakeDevice, FakeWatcher } from "./fake-device.js"

let before: number[] = []
beforeEach(() => {
  before = openFds()
})
afterEach(() => {
  expect(openFds()).toEqual(before)
})

const setup = () => {
  const device = new FakeDevice()
  const watcher = new FakeWatcher()
  const warnings: string[] = []
  const channel = CrossDomainChannel.open(device, { reactor: watcher, onWarning: (w) => warnings.push(w), rearm: "now" })
  const done = () => {
    channel.close()
    device.close()
    expect(watcher.live.size).toBe(0)
  }
  return { device, watcher, channel, warnings, done }
}

const pipe = (): [number, number] => {
  const ends = new Int32Array(2)
  expect(sys.pipe2(ends, 0o2000000)).toBe(0)
  return [ends[0]!, ends[1]!]
}

const readAll = (fd: number, max = 65536): Uint8Array => {
  const buf = new Uint8Array(max)
  const n = sys.read(fd, buf, max)
  return n > 0 ? buf.slice(0, n) : new Uint8Array(0)
}

const transfers = (device: FakeDevice, from = 0) =>
  device.sent(from).filter((e) => e.cmd === P.CMD_SEND).map((e) => {
    const t = P.decodeTransfer(e.command)
    if (P.isMalformed(t)) throw new Error(t.message)
    expect(new DataView(e.command.buffer).getUint16(2, true)).toBe(e.command.length) // cmd_size = 352 + data
    expect(e.ringIdx).toBeUndefined() // SEND: no ring, no fence
    return t
  })

const text = (s: string) => new TextEncoder().encode(s)

describe("channel setup (spec §2 steps 3–8)", () => {
  it("GET_CAPS, CONTEXT_INIT(5, 2 rings, mask 0b10), two ring blobs, INIT alone, then exactly one POLL on ring 1", () => {
    const { device, channel, done } = setup()
    expect(device.contextInits).toEqual([[5, 2, 0b10]])
    const s = device.sent()
    expect(s.map((e) => [e.cmd, e.ringIdx])).toEqual([
      [P.CMD_INIT, undefined],
      [P.CMD_POLL, 1]
    ])
    expect(s[0]!.command.length).toBe(20)
    const d = new DataView(s[0]!.command.buffer)
    expect([d.getUint32(8, true), d.getUint32(12, true), d.getUint32(16, true)]).toEqual([1, 2, P.CHANNEL_TYPE_WAYLAND])
    expect(device.outstandingPolls).toBe(1)
    expect(channel.caps.supportedChannels).toBe(2)
    done()
    // Ring handles are released at close.
    expect(device.gemClosed).toEqual([1, 2])
  })

  it("refuses a host without a Wayland channel, before creating the context", () => {
    const device = new FakeDevice()
    device.caps = P.encodeCapabilities({ version: 1, supportedChannels: 1 << P.CHANNEL_TYPE_CAMERA, supportsDmabuf: false, supportsExternalGpuMemory: false })
    expect(() => CrossDomainChannel.open(device, { reactor: new FakeWatcher() })).toThrow(CrossDomainError)
    expect(device.contextInits).toEqual([])
    expect(device.execs).toEqual([])
    device.close()
  })
})

describe("host → guest", () => {
  it("one RECEIVE per fence: delivers data and re-arms exactly one POLL; no fence, no re-arm", () => {
    const { device, channel, done } = setup()
    const got: string[] = []
    const sink = (data: Uint8Array, fds: readonly number[]) => {
      got.push(new TextDecoder().decode(data))
      expect(fds).toEqual([])
    }
    expect(channel.pump(sink)).toBe("again")
    expect(device.outstandingPolls).toBe(1)
    device.deliver(P.encodeReceive([], text("first")))
    // The host cannot deliver a second message before the guest re-arms.
    expect(() => device.deliver(P.encodeReceive([], text("second")))).toThrow(/no POLL/)
    expect(channel.pump(sink)).toBe("data")
    expect(got).toEqual(["first"])
    expect(device.outstandingPolls).toBe(1)
    expect(channel.counters).toMatchObject({ polls: 2, fences: 1, receives: 1 })
    device.deliver(P.encodeReceive([], text("second")))
    expect(channel.pump(sink)).toBe("data")
    expect(got).toEqual(["first", "second"])
    expect(channel.counters.polls).toBe(3)
    done()
  })

  it("deferred re-arm (the default): the next SEND carries the POLL on ring 1; with no SEND, a POLL alone by the end of the next loop turn", async () => {
    const device = new FakeDevice()
    const watcher = new FakeWatcher()
    const channel = CrossDomainChannel.open(device, { reactor: watcher })
    const nextTurn = () => new Promise<void>((r) => setImmediate(() => setImmediate(() => setImmediate(r))))
    const sink = () => {}
    device.deliver(P.encodeReceive([], text("one")))
    expect(channel.pump(sink)).toBe("data")
    expect(device.outstandingPolls).toBe(0)
    // A request right after the events: one submission, SEND then POLL, fenced on ring 1.
    const mark = device.execs.length
    channel.send(text("req!"), 0, 4, [])
    const s = device.sent(mark)
    expect(s.map((e) => [e.cmd, e.ringIdx])).toEqual([[P.CMD_SEND, 1]])
    const cmd = s[0]!.command
    const sendSize = new DataView(cmd.buffer).getUint16(2, true)
    expect(sendSize).toBe(P.SEND_HEADER_SIZE + 4)
    expect(P.readHeader(cmd, sendSize)).toEqual({ cmd: P.CMD_POLL, ringIdx: 0, cmdSize: P.POLL_SIZE })
    expect(cmd.length).toBe(sendSize + P.POLL_SIZE)
    expect(device.outstandingPolls).toBe(1)
    expect(channel.counters).toMatchObject({ polls: 2, fences: 1, sends: 1 })
    // Already armed: the late re-arm does nothing; the next SEND goes alone, without a ring.
    await nextTurn()
    expect(device.execs.length).toBe(mark + 1)
    channel.send(text("more"), 0, 4, [])
    expect(device.sent(mark + 1).map((e) => [e.cmd, e.ringIdx, e.command.length])).toEqual([[P.CMD_SEND, undefined, P.SEND_HEADER_SIZE + 4]])
    // No request follows: the POLL goes alone once the loop has turned.
    device.deliver(P.encodeReceive([], text("two")))
    expect(channel.pump(sink)).toBe("data")
    expect(device.outstandingPolls).toBe(0)
    await nextTurn()
    expect(device.sent(mark + 2).map((e) => [e.cmd, e.ringIdx])).toEqual([[P.CMD_POLL, 1]])
    expect(device.outstandingPolls).toBe(1)
    // A re-arm still due when the channel closes is dropped.
    device.deliver(P.encodeReceive([], text("three")))
    channel.pump(sink)
    const before = device.execs.length
    channel.close()
    await nextTurn()
    expect(device.execs.length).toBe(before)
    device.close()
    expect(watcher.live.size).toBe(0)
  })

  it("settle re-arm (connections): requests read in settle carry the POLL; none waiting, the POLL goes alone in settle; nothing due, nothing sent", async () => {
    const device = new FakeDevice()
    const watcher = new FakeWatcher()
    const channel = CrossDomainChannel.open(device, { reactor: watcher, rearm: "settle" })
    const sink = () => {}
    const mark = device.execs.length
    // Nothing consumed yet: settle neither reads nor submits.
    let reads = 0
    channel.settle(() => reads++)
    expect(reads).toBe(0)
    expect(device.execs.length).toBe(mark)
    device.deliver(P.encodeReceive([], text("one")))
    expect(channel.pump(sink)).toBe("data")
    expect(device.outstandingPolls).toBe(0)
    // A request already waiting: read in settle, one submission SEND then POLL on ring 1.
    channel.settle(() => channel.send(text("req!"), 0, 4, []))
    expect(device.sent(mark).map((e) => [e.cmd, e.ringIdx, e.command.length])).toEqual([[P.CMD_SEND, 1, P.SEND_HEADER_SIZE + 4 + P.POLL_SIZE]])
    expect(device.outstandingPolls).toBe(1)
    // No request waiting: the POLL goes alone, inside settle, with no loop turn.
    device.deliver(P.encodeReceive([], text("two")))
    expect(channel.pump(sink)).toBe("data")
    channel.settle(() => reads++)
    expect(reads).toBe(1)
    expect(device.sent(mark + 1).map((e) => [e.cmd, e.ringIdx])).toEqual([[P.CMD_POLL, 1]])
    expect(device.outstandingPolls).toBe(1)
    // Never by itself: a fence left unsettled stays unarmed across loop turns.
    device.deliver(P.encodeReceive([], text("three")))
    channel.pump(sink)
    await new Promise<void>((r) => setImmediate(() => setImmediate(() => setImmediate(r))))
    expect(device.outstandingPolls).toBe(0)
    channel.settle()
    expect(device.outstandingPolls).toBe(1)
    expect(channel.counters).toMatchObject({ polls: 4, fences: 3, sends: 1 })
    channel.close()
    device.close()
    expect(watcher.live.size).toBe(0)
  })

  it("RECEIVE blob identifier → CREATE_BLOB HOST3D {MAPPABLE|SHAREABLE, size, blob_id} → PRIME export → GEM close", () => {
    const { device, channel, done } = setup()
    const keymap = text("xkb_keymap { fake };\0")
    device.hostItems.set(3, keymap)
    device.deliver(P.encodeReceive([{ id: 3, type: P.ID_TYPE_VIRTGPU_BLOB, size: keymap.length }], text("msg!")))
    const fds: number[] = []
    channel.pump((_d, f) => fds.push(...f))
    expect(fds.length).toBe(1)
    const bytes = readFileSync(`/proc/self/fd/${fds[0]}`)
    expect(bytes.subarray(0, keymap.length)).toEqual(Buffer.from(keymap))
    // The GEM handle made for the import is closed at once (ring handles are 1 and 2).
    expect(device.gemClosed).toEqual([3])
    sys.close(fds[0]!)
    done()
  })

  it("a blob identifier of size 0 (no blob can be that small) becomes an empty file, with a warning", () => {
    const { device, channel, warnings, done } = setup()
    device.deliver(P.encodeReceive([{ id: 4, type: P.ID_TYPE_VIRTGPU_BLOB, size: 0 }], text("keymap")))
    const fds: number[] = []
    expect(channel.pump((_d, f) => fds.push(...f))).toBe("data")
    expect(fds.length).toBe(1)
    expect(readFileSync(`/proc/self/fd/${fds[0]}`).length).toBe(0)
    expect(warnings.join()).toMatch(/size 0/)
    sys.close(fds[0]!)
    done()
  })

  it("a RECEIVE with an identifier type a Wayland channel never uses is an error, and no fd leaks", () => {
    const { device, channel, done } = setup()
    device.hostItems.set(3, new Uint8Array(10))
    device.deliver(P.encodeReceive([{ id: 3, type: P.ID_TYPE_VIRTGPU_BLOB, size: 10 }, { id: 9, type: 7, size: 0 }], text("x")))
    expect(() => channel.pump(() => {})).toThrow(/type 7/)
    done()
  })

  it("WRITE_PIPE: the client gets the write end, the proxy forwards what it writes with WRITE, then WRITE hang_up at EOF", () => {
    const { device, watcher, channel, done } = setup()
    device.deliver(P.encodeReceive([{ id: 5, type: P.ID_TYPE_WRITE_PIPE, size: 0 }], text("send")))
    const fds: number[] = []
    channel.pump((_d, f) => fds.push(...f))
    const clientEnd = fds[0]!
    expect(channel.pipes.write).toBe(1)
    const readEnd = [...watcher.live.keys()][0]!
    expect(watcher.live.get(readEnd)!.events).toBe(EPOLLIN)
    const big = new Uint8Array(5000).map((_, i) => i & 0xff)
    expect(sys.write(clientEnd, big, big.length)).toBe(5000)
    const mark = device.execs.length
    watcher.fire(readEnd, EPOLLIN)
    const writes = device.sent(mark).map((e) => P.decodeReadWrite(e.command))
    expect(writes.map((w) => (P.isMalformed(w) ? "bad" : [w._tag, w.identifier, w.hangUp, w.data.length]))).toEqual([
      ["Write", 5, false, 4072],
      ["Write", 5, false, 928]
    ])
    sys.close(clientEnd)
    const mark2 = device.execs.length
    watcher.fire(readEnd, EPOLLIN)
    const last = P.decodeReadWrite(device.sent(mark2)[0]!.command)
    expect(last).toEqual({ _tag: "Write", identifier: 5, hangUp: true, data: new Uint8Array(0) })
    expect(channel.pipes.write).toBe(0)
    expect(watcher.live.size).toBe(0)
    done()
  })

  it("an empty RECEIVE is the compositor hanging up: eof, and no POLL is armed after it", () => {
    const { device, channel, done } = setup()
    device.deliver(P.encodeReceive([], new Uint8Array(0)))
    expect(channel.pump(() => {})).toBe("eof")
    expect(device.outstandingPolls).toBe(0)
    expect(channel.pump(() => {})).toBe("eof")
    expect(channel.counters.polls).toBe(1)
    done()
  })
})

describe("guest → host", () => {
  it("splits at 3744 bytes per SEND; fds ride on the first piece", () => {
    const { device, channel, done } = setup()
    const data = new Uint8Array(10000).map((_, i) => (i * 7) & 0xff)
    const blob = device.guestBlob(42)
    const mark = device.execs.length
    channel.send(data, 0, data.length, [blob])
    const t = transfers(device, mark)
    expect(t.map((x) => [x.identifiers.length, x.data.length])).toEqual([
      [1, 3744],
      [0, 3744],
      [0, 2512]
    ])
    expect(t[0]!.identifiers[0]).toEqual({ id: 42, type: P.ID_TYPE_VIRTGPU_BLOB, size: 0 })
    expect(Buffer.concat(t.map((x) => x.data))).toEqual(Buffer.from(data))
    // The handle the import made is not closed (it keeps the resource attached to the context).
    expect(device.gemClosed).toEqual([])
    done()
  })

  it("more than 28 fds: groups of 28, every group but the last on one byte of its own", () => {
    const { device, channel, done } = setup()
    const fds = Array.from({ length: 30 }, (_, i) => device.guestBlob(100 + i))
    const data = new Uint8Array(100).fill(9)
    const mark = device.execs.length
    channel.send(data, 10, 80, fds)
    const t = transfers(device, mark)
    expect(t.map((x) => [x.identifiers.length, x.data.length])).toEqual([
      [28, 1],
      [2, 79]
    ])
    expect(t.flatMap((x) => x.identifiers.map((i) => i.id))).toEqual(fds.map((_, i) => 100 + i))
    done()
  })

  it("an fd that is neither a blob nor an adopted pipe cannot cross: precheck says so, send throws, nothing is sent, fds are closed", () => {
    const { device, channel, done } = setup()
    const shm = memfdCreate("client-shm", 4096)
    expect(channel.precheck(shm)).toBe(false)
    const mark = device.execs.length
    expect(() => channel.send(new Uint8Array(16), 0, 16, [shm, device.guestBlob(5)])).toThrow(/cannot cross/)
    expect(device.execs.length).toBe(mark)
    done()
  })

  it("read pipe: the client's write end crosses as READ_PIPE 0x80000001; READ data reaches the client's pipe; hang_up closes it", () => {
    const { device, channel, watcher, done } = setup()
    const [clientRead, clientWrite] = pipe()
    channel.adoptReadPipe(clientWrite)
    expect(channel.pipes.pendingRead).toBe(1)
    const mark = device.execs.length
    channel.send(text("receive(text/plain)"), 0, 19, [clientWrite])
    const t = transfers(device, mark)
    expect(t[0]!.identifiers).toEqual([{ id: 0x80000001, type: P.ID_TYPE_READ_PIPE, size: 0 }])
    expect(channel.pipes).toEqual({ read: 1, write: 0, pendingRead: 0 })
    device.deliver(P.encodeRead(0x80000001, false, text("hello ")))
    channel.pump(() => {})
    device.deliver(P.encodeRead(0x80000001, false, text("world")))
    channel.pump(() => {})
    expect(new TextDecoder().decode(readAll(clientRead))).toBe("hello world")
    device.deliver(P.encodeRead(0x80000001, true, new Uint8Array(0)))
    channel.pump(() => {})
    expect(channel.pipes.read).toBe(0)
    expect(sys.read(clientRead, new Uint8Array(4), 4)).toBe(0) // EOF: every write end is closed
    expect(watcher.live.size).toBe(0)
    sys.close(clientRead)
    done()
  })

  it("read pipes: ids count up per SEND, and two in one batch go in separate SENDs", () => {
    const { device, channel, done } = setup()
    const a = pipe()
    const b = pipe()
    channel.adoptReadPipe(a[1])
    channel.adoptReadPipe(b[1])
    const mark = device.execs.length
    channel.send(new Uint8Array(64), 0, 64, [a[1], b[1]])
    const t = transfers(device, mark)
    expect(t.map((x) => [x.identifiers.map((i) => i.id), x.data.length])).toEqual([
      [[0x80000001], 1],
      [[0x80000002], 63]
    ])
    sys.close(a[0])
    sys.close(b[0])
    done()
  })

  it("a slow reader: READ data queues, EPOLLOUT drains it, hang_up waits for the queue", () => {
    const { device, channel, watcher, done } = setup()
    const [clientRead, clientWrite] = pipe()
    channel.adoptReadPipe(clientWrite)
    channel.send(new Uint8Array(8), 0, 8, [clientWrite])
    // Fill the pipe (64 KiB by default) and more.
    const chunk = new Uint8Array(4072).fill(1)
    for (let i = 0; i < 20; i++) {
      device.deliver(P.encodeRead(0x80000001, false, chunk))
      channel.pump(() => {})
    }
    device.deliver(P.encodeRead(0x80000001, true, new Uint8Array(0)))
    channel.pump(() => {})
    expect(channel.pipes.read).toBe(1)
    const w = [...watcher.live.entries()][0]!
    expect(w[1].events).toBe(EPOLLOUT)
    let total = 0
    for (;;) {
      total += readAll(clientRead).length
      if (watcher.live.size === 0) break
      watcher.fire(w[0], EPOLLOUT)
    }
    total += readAll(clientRead).length
    expect(total).toBe(20 * 4072)
    expect(channel.pipes.read).toBe(0)
    sys.close(clientRead)
    done()
  })
})

describe("CrossDomainEndpoint", () => {
  it("fill appends RECEIVE bytes and fds; write submits SENDs and closes the fds; eof after the empty RECEIVE", () => {
    const { device, channel, done } = setup()
    const ep = new CrossDomainEndpoint(channel)
    expect(ep.fd).toBe(device.eventFd)
    device.hostItems.set(2, text("abc"))
    device.deliver(P.encodeReceive([{ id: 2, type: P.ID_TYPE_VIRTGPU_BLOB, size: 3 }], text("12345678")))
    expect(ep.fill()).toBe("data")
    expect(ep.inEnd - ep.inStart).toBe(8)
    expect(ep.inFds.length).toBe(1)
    ep.consume(4)
    device.deliver(P.encodeReceive([], text("abcd")))
    expect(ep.fill()).toBe("data")
    expect(new TextDecoder().decode(ep.inBuf.subarray(ep.inStart, ep.inEnd))).toBe("5678abcd")
    const blob = device.guestBlob(77)
    expect(ep.write(text("request!"), 0, 8, [blob])).toBe("sent")
    expect(ep.pendingBytes).toBe(0)
    device.deliver(P.encodeReceive([], new Uint8Array(0)))
    expect(ep.fill()).toBe("eof")
    const reasons: string[] = []
    ep.onFatal = (r) => reasons.push(r._tag)
    expect(ep.write(text("bad"), 0, 3, [memfdCreate("x", 1)])).toBe("overflow")
    expect(reasons).toEqual(["ClientViolation"])
    ep.close() // closes the queued blob fd and the channel
    done()
  })
})
