/**
 * linux-dmabuf in cross-domain mode (dmabuf.ts) through the data path, host side a
 * `CrossDomainEndpoint` over the fake device: with `supports_dmabuf = 0` the global is hidden
 * (global and global_remove dropped, a bind by a guessed name refused); with dma-buf support a
 * `zwp_linux_buffer_params_v1.add` of a blob of this device crosses as its resource id, and any
 * other fd ends the client with an error naming the request before anything is sent.
 */
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { sys } from "../../src/ffi/libc.js"
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
import { encodeMessage, readU32 } from "../../src/wire/index.js"
import { openFds } from "../helpers/fds.js"
import { FakeDevice, FakeWatcher } from "./fake-device.js"

const registry = defaultRegistry()
const reqDesc = (i: string, name: string) => registry.get(i)!.requests.find((m) => m.name === name)!
const evDesc = (i: string, name: string) => registry.get(i)!.events.find((m) => m.name === name)!
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

const setup = (supportsDmabuf: boolean) => {
  const device = new FakeDevice()
  device.caps = P.encodeCapabilities({ version: 1, supportedChannels: 1 << P.CHANNEL_TYPE_WAYLAND, supportsDmabuf, supportsExternalGpuMemory: false })
  const watcher = new FakeWatcher()
  const channel = CrossDomainChannel.open(device, { reactor: watcher })
  const host = new CrossDomainEndpoint(channel)
  const client = new MemoryEndpoint(true)
  const ends: ConnectionEndReason[] = []
  const releases: Array<() => void> = []
  const conn = new Connection(client, host, {
    id: 1,
    registry,
    deniedGlobals: defaultDeniedGlobals,
    limits: defaultLimits,
    trace: null,
    onBatch: null,
    onEnd: (r) => ends.push(r),
    hooks: buildHooks({ channel, registry, mappedIds: true, warn: () => {}, onClose: (r) => void releases.push(r) }),
    mappedIds: true
  })
  host.onFatal = (r) => conn.end(r)
  client.feed(req(1, "wl_display", "get_registry", [2]))
  conn.onClientReadable()
  device.deliver(
    P.encodeReceive(
      [],
      Buffer.concat([ev(2, "wl_registry", "global", [1, "wl_shm", 1]), ev(2, "wl_registry", "global", [2, "zwp_linux_dmabuf_v1", 4]), ev(2, "wl_registry", "global", [3, "wl_compositor", 4])])
    )
  )
  conn.onHostReadable()
  const done = () => {
    conn.end({ _tag: "Shutdown" })
    for (const r of releases) r()
    device.close()
    for (const fd of client.sentFds) sys.close(fd)
  }
  return { device, client, conn, ends, done }
}

/** Interface names of the wl_registry.global events the client got. */
const shownGlobals = (client: MemoryEndpoint): string[] => {
  const out = client.output()
  const names: string[] = []
  for (let p = 0; p + 8 <= out.length; ) {
    const size = readU32(out, p + 4) >>> 16
    if (readU32(out, p) === 2 && (readU32(out, p + 4) & 0xffff) === 0) {
      const len = readU32(out, p + 12)
      names.push(new TextDecoder().decode(out.subarray(p + 16, p + 16 + len - 1)))
    }
    p += size
  }
  return names
}

describe("linux-dmabuf in cross-domain mode", () => {
  it("supports_dmabuf = 0: the global is hidden, its removal too, and a bind by its name is refused", () => {
    const { device, client, conn, ends, done } = setup(false)
    expect(shownGlobals(client)).toEqual(["wl_shm", "wl_compositor"])
    const mark = client.output().length
    device.deliver(P.encodeReceive([], ev(2, "wl_registry", "global_remove", [2])))
    conn.onHostReadable()
    expect(client.output().length).toBe(mark)
    // The host removed it; announce it again and let the client guess its name.
    device.deliver(P.encodeReceive([], ev(2, "wl_registry", "global", [4, "zwp_linux_dmabuf_v1", 4])))
    conn.onHostReadable()
    const sendsBefore = device.execs.length
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [4, { interface: "zwp_linux_dmabuf_v1", version: 3, id: 3 }], []))
    expect(conn.onClientReadable()).toBe(false)
    expect(device.execs.length).toBe(sendsBefore)
    expect(ends[0]?._tag).toBe("ClientViolation")
    const v = (ends[0] as { violation: { message: string; objectId: number } }).violation
    expect(v.objectId).toBe(2)
    expect(v.message).toMatch(/^wl_registry@2\.bind: invalid global 4 \(zwp_linux_dmabuf_v1\): linux-dmabuf is not offered in cross-domain mode/)
    done()
  })

  it("supports_dmabuf = 1: the global is shown; params.add of a blob of this device crosses as its resource id", () => {
    const { device, client, conn, ends, done } = setup(true)
    expect(shownGlobals(client)).toEqual(["wl_shm", "zwp_linux_dmabuf_v1", "wl_compositor"])
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [2, { interface: "zwp_linux_dmabuf_v1", version: 3, id: 3 }], []))
    client.feed(req(3, "zwp_linux_dmabuf_v1", "create_params", [4]))
    conn.onClientReadable()
    const blob = device.guestBlob(77)
    const mark = device.execs.length
    client.feed(encodeMessage(4, reqDesc("zwp_linux_buffer_params_v1", "add"), [blob, 0, 0, 256, 0, 0], []), [blob])
    expect(conn.onClientReadable()).toBe(true)
    const sends = device
      .sent(mark)
      .filter((e) => e.cmd === P.CMD_SEND)
      .map((e) => P.decodeTransfer(e.command) as P.Transfer)
    expect(sends.length).toBe(1)
    expect(sends[0]!.identifiers).toEqual([{ id: 77, type: P.ID_TYPE_VIRTGPU_BLOB, size: 0 }])
    expect(ends).toEqual([])
    done()
  })

  it("supports_dmabuf = 1: params.add of any other fd is refused naming the request; nothing is sent", () => {
    const { device, client, conn, ends, done } = setup(true)
    client.feed(encodeMessage(2, reqDesc("wl_registry", "bind"), [2, { interface: "zwp_linux_dmabuf_v1", version: 3, id: 3 }], []))
    client.feed(req(3, "zwp_linux_dmabuf_v1", "create_params", [4]))
    conn.onClientReadable()
    const mark = device.execs.length
    const fd = memfdCreate("not-a-dmabuf", 4096)
    client.feed(encodeMessage(4, reqDesc("zwp_linux_buffer_params_v1", "add"), [fd, 0, 0, 256, 0, 0], []), [fd])
    expect(conn.onClientReadable()).toBe(false)
    expect(device.sent(mark).filter((e) => e.cmd === P.CMD_SEND)).toEqual([])
    const v = (ends[0] as { violation: { message: string; objectId: number } }).violation
    expect(v.objectId).toBe(4)
    expect(v.message).toMatch(/^zwp_linux_buffer_params_v1@4\.add: the dma-buf is not a buffer of this virtio-gpu device/)
    done()
  })
})
