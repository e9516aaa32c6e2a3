/**
 * Unit tests of one layer: the connection's data path over in-memory endpoints (no sockets).
 * What the real compositor and real clients do through it is proven in test/e2e/.
 */
import { describe, expect, it } from "@effect/vitest"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { ArgValue } from "../../src/protocol/types.js"
import { Connection, type ConnectionHooks, type ConnectionOptions, defaultDeniedGlobals, defaultLimits, setFdCloser } from "../../src/proxy/connection.js"
import type { ConnectionEndReason } from "../../src/proxy/errors.js"
import { MemoryEndpoint } from "../../src/proxy/memory.js"
import { ObjectState } from "../../src/shadow/table.js"
import { decodeArgs, encodeMessage, readU32 } from "../../src/wire/index.js"

const registry = defaultRegistry()
const iface = (n: string) => registry.get(n)!

const closed: number[] = []
setFdCloser((fd) => closed.push(fd))

const req = (id: number, ifaceName: string, name: string, args: ArgValue[]): Uint8Array => {
  const desc = iface(ifaceName).requests.find((m) => m.name === name)!
  return encodeMessage(id, desc, args, [])
}
const ev = (id: number, ifaceName: string, name: string, args: ArgValue[]): Uint8Array => {
  const desc = iface(ifaceName).events.find((m) => m.name === name)!
  return encodeMessage(id, desc, args, [])
}
const cat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

/** Splits a byte stream into frames: [objectId, opcode, frame]. */
const frames = (b: Uint8Array): Array<{ id: number; opcode: number; frame: Uint8Array }> => {
  const out: Array<{ id: number; opcode: number; frame: Uint8Array }> = []
  let o = 0
  while (o < b.length) {
    const size = readU32(b, o + 4) >>> 16
    out.push({ id: readU32(b, o), opcode: readU32(b, o + 4) & 0xffff, frame: b.slice(o, o + size) })
    o += size
  }
  return out
}

/** A connection over two in-memory endpoints; `options` replace the defaults. */
const over = (options: Partial<ConnectionOptions> = {}) => {
  const client = new MemoryEndpoint(true)
  const host = new MemoryEndpoint(true)
  const ends: ConnectionEndReason[] = []
  const conn = new Connection(client, host, {
    id: 7,
    registry,
    deniedGlobals: defaultDeniedGlobals,
    limits: defaultLimits,
    trace: null,
    onBatch: null,
    onEnd: (r) => ends.push(r),
    ...options
  })
  return { client, host, conn, ends }
}

const setup = () => {
  const { client, host, conn, ends } = over()
  const fromClient = (...m: Uint8Array[]) => {
    client.feed(cat(...m))
    return conn.onClientReadable()
  }
  const fromHost = (m: Uint8Array[], fds: number[] = []) => {
    host.feed(cat(...m), fds)
    return conn.onHostReadable()
  }
  /** The wl_display.error the client received: [object id, code, message]. */
  const displayError = (): readonly ArgValue[] | undefined => {
    const errDesc = iface("wl_display").events[0]!
    const f = frames(client.output()).find((x) => x.id === 1 && x.opcode === 0)
    if (f === undefined) return undefined
    const r = decodeArgs(errDesc, 1, f.frame, 8, f.frame.length - 8, [])
    return r._tag === "Ok" ? r.args : undefined
  }
  return { client, host, conn, ends, fromClient, fromHost, displayError }
}

/** A connection with hand-written hooks and no denied globals. */
const hooked = (hooks: ConnectionHooks) => over({ id: 1, deniedGlobals: new Set(), hooks })

/** A connection with a registry (id 2) that has seen the host's globals. */
const withGlobals = () => {
  const t = setup()
  t.fromClient(req(1, "wl_display", "get_registry", [2]))
  t.fromHost([
    ev(2, "wl_registry", "global", [1, "wl_compositor", 99]),
    ev(2, "wl_registry", "global", [2, "weston_debug_v1", 1]),
    ev(2, "wl_registry", "global", [3, "ext_session_lock_manager_v1", 1]),
    ev(2, "wl_registry", "global", [4, "wl_seat", 5])
  ])
  return t
}

describe("Connection (in-memory endpoints)", () => {
  it("forwards requests byte-identical in local mode and tracks new objects", () => {
    const t = setup()
    const m = req(1, "wl_display", "sync", [3])
    expect(t.fromClient(m)).toBe(true)
    expect(t.host.output()).toEqual(m)
    expect(t.conn.shadow.byClient(3)?.iface.name).toBe("wl_callback")
  })

  it("shows only known, allowed globals, with versions capped at the generated version", () => {
    const t = withGlobals()
    const shown = frames(t.client.output()).map((f) => decodeArgs(iface("wl_registry").events[0]!, 2, f.frame, 8, f.frame.length - 8, []))
    const globals = shown.map((r) => (r._tag === "Ok" ? [r.args[1], r.args[2]] : r.error.message))
    expect(globals).toEqual([
      ["wl_compositor", iface("wl_compositor").version],
      ["wl_seat", Math.min(5, iface("wl_seat").version)]
    ])
    // global_remove of a hidden global is not forwarded; of a shown one it is.
    const before = t.client.output().length
    t.fromHost([ev(2, "wl_registry", "global_remove", [2])])
    expect(t.client.output().length).toBe(before)
    t.fromHost([ev(2, "wl_registry", "global_remove", [4])])
    expect(t.client.output().length).toBe(before + 12)
  })

  it("validates wl_registry.bind against name, interface and version", () => {
    for (const [args, why] of [
      [[2, { interface: "weston_debug_v1", version: 1, id: 3 }], "invalid global 2"],
      [[1, { interface: "wl_seat", version: 1, id: 3 }], "invalid interface"],
      [[1, { interface: "wl_compositor", version: 99, id: 3 }], "invalid version"],
      [[1, { interface: "wl_compositor", version: 0, id: 3 }], "invalid version"]
    ] as const) {
      const t = withGlobals()
      expect(t.fromClient(req(2, "wl_registry", "bind", [...args]))).toBe(false)
      const err = t.displayError()
      expect(err?.[0]).toBe(2)
      expect(String(err?.[2])).toContain(why)
      expect(t.ends[0]?._tag).toBe("ClientViolation")
      expect(t.client.closed && t.host.closed).toBe(true)
    }
    const ok = withGlobals()
    expect(ok.fromClient(req(2, "wl_registry", "bind", [1, { interface: "wl_compositor", version: 4, id: 3 }]))).toBe(true)
    expect(ok.conn.shadow.byClient(3)?.version).toBe(4)
  })

  const violations: Array<[string, () => Uint8Array, number, string]> = [
    ["size below the header", () => new Uint8Array([1, 0, 0, 0, 0, 0, 4, 0]), 1, "below the 8-byte header"],
    ["size not a multiple of 4", () => new Uint8Array([1, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0]), 1, "not a multiple of 4"],
    ["size over the limit", () => { const b = new Uint8Array(8); b[0] = 1; b[6] = 0x04; b[7] = 0x20; return b }, 1, "exceeds the limit"],
    ["unknown object", () => req(1, "wl_display", "sync", [3]).map((x, i) => (i === 0 ? 9 : x)), 1, "invalid object 9"],
    ["unknown opcode", () => { const b = req(1, "wl_display", "sync", [3]); b[4] = 7; return b }, 1, "invalid method 7"],
    ["new id already in use", () => req(1, "wl_display", "sync", [1]), 1, "invalid new id 1"],
    ["new id in the server range", () => req(1, "wl_display", "sync", [0xff000001]), 1, "outside the client range"],
    ["trailing bytes", () => { const m = req(1, "wl_display", "sync", [3]); const b = new Uint8Array(16); b.set(m); b[6] = 16; return b }, 1, "trailing bytes"]
  ]
  for (const [name, make, objectId, why] of violations) {
    it(`cuts the client with wl_display.error on ${name}`, () => {
      const t = setup()
      expect(t.fromClient(make())).toBe(false)
      const err = t.displayError()
      expect(err?.[0]).toBe(objectId)
      expect(String(err?.[2])).toContain(why)
      expect(t.host.output().length).toBe(0)
      expect(t.client.closed).toBe(true)
    })
  }

  it("rejects requests newer than the object's version and strings without NUL", () => {
    const t = withGlobals()
    t.fromClient(req(2, "wl_registry", "bind", [1, { interface: "wl_compositor", version: 1, id: 3 }]))
    t.fromClient(req(3, "wl_compositor", "create_surface", [4]))
    // wl_surface.set_buffer_scale is since 3; the surface inherited version 1.
    expect(t.fromClient(req(4, "wl_surface", "set_buffer_scale", [2]))).toBe(false)
    expect(String(t.displayError()?.[2])).toContain("since 3 > 1")

    const u = withGlobals()
    u.fromClient(req(2, "wl_registry", "bind", [4, { interface: "wl_seat", version: 5, id: 3 }]))
    const m = req(3, "wl_seat", "get_pointer", [4])
    expect(u.fromClient(m)).toBe(true)
    const bad = encodeMessage(2, iface("wl_registry").requests[0]!, [1, { interface: "wl_compositor", version: 1, id: 5 }], [])
    bad[8 + 4 + 4 + 13] = 0x41 // overwrite the NUL of "wl_compositor"
    expect(u.fromClient(bad)).toBe(false)
    expect(String(u.displayError()?.[2])).toMatch(/string|NUL/)
  })

  it("passes fds through in signature order and refuses a message whose fd is missing", () => {
    const t = withGlobals()
    t.fromHost([ev(2, "wl_registry", "global", [9, "wl_shm", 1])])
    t.fromClient(req(2, "wl_registry", "bind", [9, { interface: "wl_shm", version: 1, id: 3 }]))
    const pool = encodeMessage(3, iface("wl_shm").requests[0]!, [4, 55, 4096], [])
    t.client.feed(pool, [55])
    expect(t.conn.onClientReadable()).toBe(true)
    expect(t.host.sentFds).toEqual([55])
    const again = encodeMessage(3, iface("wl_shm").requests[0]!, [5, 56, 4096], [])
    expect(t.fromClient(again)).toBe(false)
    expect(String(t.displayError()?.[2])).toContain("fd missing")
  })

  it("keeps destroyed objects as zombies until delete_id, closing fds of late events", () => {
    const t = withGlobals()
    t.fromClient(req(2, "wl_registry", "bind", [4, { interface: "wl_seat", version: 5, id: 3 }]))
    t.fromClient(req(3, "wl_seat", "get_keyboard", [4]))
    t.fromClient(req(4, "wl_keyboard", "release", []))
    expect(t.conn.shadow.byClient(4)?.state).toBe(ObjectState.Zombie)
    // A keymap event (with its fd) for the released keyboard: dropped, fd closed.
    const before = t.client.output().length
    closed.length = 0
    t.fromHost([ev(4, "wl_keyboard", "keymap", [1, 77, 100])], [77])
    expect(t.client.output().length).toBe(before)
    expect(closed).toEqual([77])
    // Requests on a zombie are refused like libwayland-server does; but first delete_id frees it.
    t.fromHost([ev(1, "wl_display", "delete_id", [4])])
    expect(t.conn.shadow.byClient(4)).toBeUndefined()
    expect(t.fromClient(req(3, "wl_seat", "get_keyboard", [4]))).toBe(true)
  })

  it("creates server-side objects from events and maps object arguments", () => {
    const t = withGlobals()
    t.fromHost([ev(2, "wl_registry", "global", [10, "wl_data_device_manager", 3])])
    t.fromClient(
      req(2, "wl_registry", "bind", [4, { interface: "wl_seat", version: 5, id: 3 }]),
      req(2, "wl_registry", "bind", [10, { interface: "wl_data_device_manager", version: 3, id: 4 }]),
      req(4, "wl_data_device_manager", "get_data_device", [5, 3])
    )
    expect(t.fromHost([ev(5, "wl_data_device", "data_offer", [0xff000001])])).toBe(true)
    expect(t.conn.shadow.byHost(0xff000001)?.iface.name).toBe("wl_data_offer")
    expect(t.fromHost([ev(5, "wl_data_device", "selection", [0xff000001])])).toBe(true)
    // A destructor request on a server-created object frees it at once (no delete_id follows).
    expect(t.fromClient(req(0xff000001, "wl_data_offer", "destroy", []))).toBe(true)
    expect(t.conn.shadow.byClient(0xff000001)).toBeUndefined()
  })

  it("a host that breaks the protocol ends only this client, with an error naming the proxy", () => {
    const t = setup()
    t.fromClient(req(1, "wl_display", "get_registry", [2]))
    const bad = ev(2, "wl_registry", "global", [1, "wl_compositor", 4])
    bad[4] = 9 // unknown event opcode
    expect(t.fromHost([bad])).toBe(false)
    expect(t.ends[0]?._tag).toBe("HostViolation")
    expect(String(t.displayError()?.[2])).toContain("sommelier")
  })

  it("host EOF ends the client with an error; client EOF closes the host connection", () => {
    const t = setup()
    t.host.eof = true
    expect(t.conn.onHostReadable()).toBe(false)
    expect(t.ends[0]?._tag).toBe("HostClosed")
    expect(String(t.displayError()?.[2])).toContain("host compositor closed")
    const u = setup()
    u.client.eof = true
    expect(u.conn.onClientReadable()).toBe(false)
    expect(u.ends[0]?._tag).toBe("ClientClosed")
    expect(u.host.closed).toBe(true)
  })

  it("runs hand-written hooks: replace a request's fd and args, drop an event", () => {
    const shmCreatePool = iface("wl_shm").requests[0]!
    const keymap = iface("wl_keyboard").events[0]!
    const seen: number[][] = []
    const { client, host, conn } = hooked({
      requests: new Map([
        [shmCreatePool, (m) => {
          seen.push([...m.fds])
          closed.push(...m.fds)
          return { _tag: "Replace", messages: [{ objectId: m.entry.hostId, desc: m.desc, args: [m.args[0]!, 900, 8192] }] }
        }]
      ]),
      events: new Map([[keymap, () => ({ _tag: "Drop" })]])
    })
    client.feed(cat(req(1, "wl_display", "get_registry", [2])))
    conn.onClientReadable()
    host.feed(cat(ev(2, "wl_registry", "global", [1, "wl_shm", 1]), ev(2, "wl_registry", "global", [2, "wl_seat", 5])))
    conn.onHostReadable()
    client.feed(
      cat(
        req(2, "wl_registry", "bind", [1, { interface: "wl_shm", version: 1, id: 3 }]),
        req(2, "wl_registry", "bind", [2, { interface: "wl_seat", version: 5, id: 5 }]),
        req(5, "wl_seat", "get_keyboard", [6]),
        encodeMessage(3, shmCreatePool, [4, 50, 4096], [])
      ),
      [50]
    )
    expect(conn.onClientReadable()).toBe(true)
    expect(seen).toEqual([[50]])
    expect(host.sentFds).toEqual([900])
    const last = frames(host.output()).at(-1)!
    const decoded = decodeArgs(shmCreatePool, 3, last.frame, 8, last.frame.length - 8, [900])
    expect(decoded._tag === "Ok" && decoded.args).toEqual([4, 900, 8192])
    const before = client.output().length
    host.feed(ev(6, "wl_keyboard", "keymap", [1, 60, 10]), [60])
    expect(conn.onHostReadable()).toBe(true)
    expect(client.output().length).toBe(before)
  })

  it("a hook that ends the connection itself stops the batch's walk: one end, nothing more forwarded", () => {
    const sync = iface("wl_display").requests[0]!
    let calls = 0
    const { client, host, conn, ends } = hooked({
      requests: new Map([
        [sync, (m) => {
          calls++
          // As a transport hook does when its own write to the client fails (EPIPE).
          m.connection.end({ _tag: "ClientClosed" })
          return { _tag: "Forward" }
        }]
      ]),
      events: new Map()
    })
    client.feed(cat(req(1, "wl_display", "sync", [2]), req(1, "wl_display", "sync", [3])))
    expect(conn.onClientReadable()).toBe(false)
    expect(calls).toBe(1)
    expect(ends).toEqual([{ _tag: "ClientClosed" }])
    expect(host.output().length).toBe(0)
  })

  it("waits for the rest of a split message", () => {
    const t = setup()
    const m = req(1, "wl_display", "sync", [3])
    expect(t.fromClient(m.subarray(0, 5))).toBe(true)
    expect(t.host.output().length).toBe(0)
    expect(t.fromClient(m.subarray(5))).toBe(true)
    expect(t.host.output()).toEqual(m)
  })
})
