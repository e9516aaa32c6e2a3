/**
 * The cross-domain hooks through the real data path: a `Connection` whose host side is a
 * `CrossDomainEndpoint` over the fake device, the client side in memory. An fd that cannot cross
 * ends that client with a `wl_display.error` naming the message (nothing reaches the host); a
 * receive's fd crosses as a read pipe; a keymap arrives as a sealed read-only memfd.
 */
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
import { F_GET_SEALS, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, sys } from "../../src/ffi/libc.js"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { ArgValue } from "../../src/protocol/types.js"
import { Connection, defaultDeniedGlobals, defaultLimits, setFdCloser } from "../../src/proxy/connection.js"
import type { ConnectionEndReason } from "../../src/proxy/errors.js"
import { MemoryEndpoint } from "../../src/proxy/memory.js"
import { CrossDomainChannel } from "../../src/transport/crossdomain/channel.js"
import { CrossDomainEndpoint } from "../../src/transport/crossdomain/endpoint.js"
import { buildHooks } from "../../src/transport/crossdomain/hooks.js"
import * as P from "../../src/transport/crossdomain/protocol.js"
import { memfdCreate } from "../../src/transport/memfd.js"
import { decodeArgs, encodeMessage, readU32 } from "../../src/wire/index.js"
import { openFds } from "../helpers/fds.js"
import { FakeDevice, FakeWatcher } from "./fake-device.js"

const registry = defaultRegistry()
const iface = (n: string) => registry.get(n)!
const reqDesc = (i: string, name: string) => iface(i).requests.find((m) => m.name === name)!
const evDesc = (i: string, name: string) => iface(i).events.find((m) => m.name === name)!
const req = (id: number, i: string, name: string, args: ArgValue[]) => encodeMessage(id, reqDesc(i, name), args, [])
const ev = (id: number, i: string, name: string, args: ArgValue[]) => encodeMessage(id, evDesc(i, name), args, [])

setFdCloser((fd) => void sys.close(fd))

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
  const channel = CrossDomainChannel.open(device, { reactor: watcher, rearm: "now" })
  const host = new CrossDomainEndpoint(channel)
  const client = new MemoryEndpoint(true)
  const ends: ConnectionEndReason[] = []
  const conn = new Connection(client, host, {
    id: 1,
    registry,
    deniedGlobals: defaultDeniedGlobals,
    limits: defaultLimits,
    trace: null,
    onBatch: null,
    onEnd: (r) => ends.push(r),
    hooks: buildHooks({ channel, registry, mappedIds: false, warn: (w) => warnings.push(w) })
  })
  host.onFatal = (r) => conn.end(r)
  // Bind wl_seat 3 → wl_keyboard 4, and a data device path to an offer (server-created id).
  const globals = [
    ev(2, "wl_registry", "global", [1, "wl_seat", 7]),
    ev(2, "wl_registry", "global", [2, "wl_shm", 1]),
    ev(2, "wl_registry", "global", [3, "wl_data_device_manager", 3])
  ]
  client.feed(req(1, "wl_display", "get_registry", [2]))
  conn.onClientReadable()
  device.deliver(P.encodeReceive([], Buffer.concat(globals)))
  conn.onHostReadable()
  const done = () => {
    conn.end({ _tag: "Shutdown" })
    device.close()
    for (const fd of client.sentFds) sys.close(fd)
  }
  return { device, watcher, channel, host, client, conn, ends, warnings, done }
}

/** SEND commands since `from`, decoded. */
const sends = (device: FakeDevice, from: number) =>
  device
    .sent(from)
    .filter((e) => e.cmd === P.CMD_SEND)
    .map((e) => P.decodeTransfer(e.command) as P.Transfer)

describe("cross-domain hooks over the data path", () => {
  it("a wl_shm memfd cannot cross: wl_display.error names wl_shm.create_pool, nothing is sent", () => {
    const { device, client, conn, ends, done } = setup()
    const bind = encodeMessage(2, reqDesc("wl_registry", "bind"), [2, { interface: "wl_shm", version: 1, id: 3 }], [])
    client.feed(bind)
    conn.onClientReadable()
    const mark = device.execs.length
    const shm = memfdCreate("client-pool", 4096)
    client.feed(encodeMessage(3, reqDesc("wl_shm", "create_pool"), [4, shm, 4096], []), [shm])
    expect(conn.onClientReadable()).toBe(false)
    expect(device.execs.length).toBe(mark)
    expect(ends[0]?._tag).toBe("ClientViolation")
    const err = decodeLastError(client.output())
    expect(err.objectId).toBe(3)
    expect(err.code).toBe(3)
    expect(err.message).toMatch(/^wl_shm@3\.create_pool: fd argument fd cannot cross to the host in cross-domain mode/)
    done()
  })

  it("wl_data_offer.receive: the client's pipe crosses as READ_PIPE 0x80000001 and READ data lands in it", () => {
    const { device, client, conn, host, done } = setup()
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [3, { interface: "wl_data_device_manager", version: 3, id: 3 }], []))
    conn.onClientReadable()
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [1, { interface: "wl_seat", version: 7, id: 4 }], []))
    client.feed(req(3, "wl_data_device_manager", "get_data_device", [5, 4]))
    conn.onClientReadable()
    expect(conn.isEnded).toBe(false)
    // The compositor introduces an offer (server-created id).
    device.deliver(P.encodeReceive([], ev(5, "wl_data_device", "data_offer", [0xff000001])))
    conn.onHostReadable()
    const ends = new Int32Array(2)
    sys.pipe2(ends, 0o2000000)
    const mark = device.execs.length
    client.feed(req(0xff000001, "wl_data_offer", "receive", ["text/plain;charset=utf-8", ends[1]!]), [ends[1]!])
    expect(conn.onClientReadable()).toBe(true)
    const s = sends(device, mark)
    expect(s.length).toBe(1)
    expect(s[0]!.identifiers).toEqual([{ id: 0x80000001, type: P.ID_TYPE_READ_PIPE, size: 0 }])
    device.deliver(P.encodeRead(0x80000001, false, new TextEncoder().encode("copied text")))
    expect(conn.onHostReadable()).toBe(true)
    device.deliver(P.encodeRead(0x80000001, true, new Uint8Array(0)))
    conn.onHostReadable()
    const buf = new Uint8Array(64)
    const n = sys.read(ends[0]!, buf, 64)
    expect(new TextDecoder().decode(buf.subarray(0, n))).toBe("copied text")
    expect(sys.read(ends[0]!, buf, 64)).toBe(0)
    sys.close(ends[0]!)
    void host
    done()
  })

  it("wl_keyboard.keymap: the blob reaches the client as a sealed memfd with the same bytes", () => {
    const { device, client, conn, done } = setup()
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [1, { interface: "wl_seat", version: 7, id: 3 }], []))
    client.feed(req(3, "wl_seat", "get_keyboard", [4]))
    conn.onClientReadable()
    const keymap = new TextEncoder().encode("xkb_keymap { xkb_keycodes { }; };\n\0")
    device.hostItems.set(9, keymap)
    const sentBefore = client.sentFds.length
    device.deliver(P.encodeReceive([{ id: 9, type: P.ID_TYPE_VIRTGPU_BLOB, size: keymap.length }], ev(4, "wl_keyboard", "keymap", [1, 0, keymap.length])))
    expect(conn.onHostReadable()).toBe(true)
    const fds = client.sentFds.slice(sentBefore)
    expect(fds.length).toBe(1)
    const fd = fds[0]!
    expect(readFileSync(`/proc/self/fd/${fd}`)).toEqual(Buffer.from(keymap))
    expect(sys.fcntl(fd, F_GET_SEALS)).toBe(F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)
    const out = client.output()
    // The event itself is unchanged: keymap(format 1, size).
    const frame = out.subarray(out.length - 16)
    expect([readU32(frame, 0), readU32(frame, 4) & 0xffff, readU32(frame, 8), readU32(frame, 12)]).toEqual([4, 0, 1, keymap.length])
    done()
  })
})

/** Offset of the last frame in a byte stream of frames. */
const lastFrameStart = (b: Uint8Array): number => {
  let o = 0
  let last = 0
  while (o < b.length) {
    last = o
    o += readU32(b, o + 4) >>> 16
  }
  return last
}

const decodeLastError = (b: Uint8Array) => {
  const at = lastFrameStart(b)
  expect(readU32(b, at)).toBe(1)
  expect(readU32(b, at + 4) & 0xffff).toBe(0)
  const size = readU32(b, at + 4) >>> 16
  const r = decodeArgs(evDesc("wl_display", "error"), 1, b, at + 8, size - 8, { length: 0, shift: () => undefined })
  if (r._tag !== "Ok") throw new Error("bad error event")
  return { objectId: r.args[0] as number, code: r.args[1] as number, message: r.args[2] as string }
}
