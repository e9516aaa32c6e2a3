/**
 * The shadow table's mapped-ids mode (host ids allocated by the table, proxy-owned host-only
 * objects), and that identity mode is unchanged. The last test runs it through the real data
 * path (Connection over in-memory endpoints) with the `hostOnlyIds` hook module.
 */
import { describe, expect, it } from "@effect/vitest"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { ArgValue } from "../../src/protocol/types.js"
import { Connection, defaultDeniedGlobals, defaultLimits, setFdCloser } from "../../src/proxy/connection.js"
import { MemoryEndpoint } from "../../src/proxy/memory.js"
import { ObjectState, ShadowTable } from "../../src/shadow/table.js"
import { hostOnlyIds } from "../../src/transport/crossdomain/hooks.js"
import type { HookTable } from "../../src/transport/crossdomain/module.js"
import { encodeMessage, readU32 } from "../../src/wire/index.js"

const registry = defaultRegistry()
const iface = (n: string) => registry.get(n)!

describe("shadow table, identity mode", () => {
  it("host id = client id, and a host id still in use refuses the client id", () => {
    const t = new ShadowTable()
    expect(t.mappedIds).toBe(false)
    const e = t.createByClient(5, iface("wl_surface"), 1)
    expect(e).toMatchObject({ clientId: 5, hostId: 5 })
    expect(() => t.allocateHostOnly(iface("wl_buffer"), 1)).toThrow(/mapped/)
  })
})

describe("shadow table, mapped mode", () => {
  it("allocates host ids lowest-free, independent of the client's ids", () => {
    const t = new ShadowTable({ mappedIds: true })
    t.insert({ clientId: 1, hostId: 1, iface: iface("wl_display"), version: 1, state: ObjectState.Live })
    const a = t.createByClient(2, iface("wl_registry"), 1) as { hostId: number }
    const pool = t.allocateHostOnly(iface("wl_shm_pool"), 1)
    const b = t.createByClient(3, iface("wl_compositor"), 4) as { hostId: number }
    // A client that skips ids (legal for it, fatal for wl_map_reserve_new if forwarded as is).
    const c = t.createByClient(40, iface("wl_surface"), 4) as { hostId: number }
    expect([a.hostId, pool.hostId, b.hostId, c.hostId]).toEqual([2, 3, 4, 5])
    expect(pool.clientId).toBe(0)
    expect(t.byHost(3)).toBe(pool)
    expect(t.byClient(0)).toBeUndefined()
    expect(t.byClient(40)).toBe(c)
    expect(t.byHost(40)).toBeUndefined()
    expect(t.hostOnly).toBe(1)
    expect(t.size).toBe(4) // client-visible: display, registry, compositor, surface
    expect(t.entries()).toContain(pool)
  })

  it("a host id is reused only after delete_id, lowest first", () => {
    const t = new ShadowTable({ mappedIds: true })
    t.insert({ clientId: 1, hostId: 1, iface: iface("wl_display"), version: 1, state: ObjectState.Live })
    const s = [2, 3, 4, 5].map((id) => t.createByClient(id, iface("wl_callback"), 1) as import("../../src/shadow/table.js").ObjectEntry)
    t.destroyedByEvent(s[2]!) // host 4
    t.destroyedByEvent(s[0]!) // host 2
    // Zombies keep their ids: new objects get fresh ones.
    expect((t.createByClient(6, iface("wl_callback"), 1) as { hostId: number }).hostId).toBe(6)
    expect(t.deleteId(4)?.clientId).toBe(4)
    expect(t.deleteId(2)?.clientId).toBe(2)
    // The client may reuse its id 2 now; it gets host id 2 (lowest free), then 4.
    expect((t.createByClient(2, iface("wl_callback"), 1) as { hostId: number }).hostId).toBe(2)
    expect((t.createByClient(9, iface("wl_callback"), 1) as { hostId: number }).hostId).toBe(4)
    expect((t.createByClient(10, iface("wl_callback"), 1) as { hostId: number }).hostId).toBe(7)
  })

  it("a zombie's client id stays in use until delete_id; host-only objects free their id too", () => {
    const t = new ShadowTable({ mappedIds: true })
    t.insert({ clientId: 1, hostId: 1, iface: iface("wl_display"), version: 1, state: ObjectState.Live })
    const pool = t.allocateHostOnly(iface("wl_shm_pool"), 1)
    const s = t.createByClient(2, iface("wl_surface"), 1) as import("../../src/shadow/table.js").ObjectEntry
    t.destroyedByRequest(s)
    expect(t.createByClient(2, iface("wl_surface"), 1)).toBe("InUse")
    t.destroyedByRequest(pool)
    expect(pool.state).toBe(ObjectState.Zombie)
    expect(t.deleteId(pool.hostId)).toBe(pool)
    expect(t.hostOnly).toBe(0)
    expect(t.allocateHostOnly(iface("wl_buffer"), 1).hostId).toBe(pool.hostId)
  })

  it("explicit inserts reserve their host ids", () => {
    const t = new ShadowTable({ mappedIds: true })
    t.insert({ clientId: 1, hostId: 1, iface: iface("wl_display"), version: 1, state: ObjectState.Live })
    t.insert({ clientId: 7, hostId: 4, iface: iface("wl_surface"), version: 1, state: ObjectState.Live })
    const got = [2, 3, 5].map((id) => (t.createByClient(id, iface("wl_callback"), 1) as { hostId: number }).hostId)
    expect(got).toEqual([2, 3, 5])
  })

  it("through the data path: requests get dense host ids, events map back, a host-only delete_id never reaches the client", () => {
    setFdCloser(() => {})
    const client = new MemoryEndpoint(true)
    const host = new MemoryEndpoint(true)
    const table: HookTable = { requests: new Map(), events: new Map() }
    hostOnlyIds.install({ channel: null as never, registry, mappedIds: true, warn: () => {} }, table)
    const conn = new Connection(client, host, {
      id: 1,
      registry,
      deniedGlobals: defaultDeniedGlobals,
      limits: defaultLimits,
      trace: null,
      onBatch: null,
      onEnd: () => {},
      hooks: table
    })
    // Connection builds an identity table; swap in a mapped one the way a connection in mapped
    // mode would start (display inserted first).
    const mapped = new ShadowTable({ mappedIds: true })
    mapped.insert({ clientId: 1, hostId: 1, iface: iface("wl_display"), version: 1, state: ObjectState.Live })
    Object.defineProperty(conn, "shadow", { value: mapped })
    const pool = mapped.allocateHostOnly(iface("wl_shm_pool"), 1) // host id 2
    const req = (id: number, i: string, name: string, args: ArgValue[]) => encodeMessage(id, iface(i).requests.find((m) => m.name === name)!, args, [])
    const ev = (id: number, i: string, name: string, args: ArgValue[]) => encodeMessage(id, iface(i).events.find((m) => m.name === name)!, args, [])
    client.feed(req(1, "wl_display", "sync", [2]))
    expect(conn.onClientReadable()).toBe(true)
    const sent = host.output()
    expect(readU32(sent, 8)).toBe(3) // client's callback 2 is host 3
    mapped.destroyedByRequest(pool)
    host.feed(new Uint8Array([...ev(3, "wl_callback", "done", [77]), ...ev(1, "wl_display", "delete_id", [3]), ...ev(1, "wl_display", "delete_id", [2])]))
    expect(conn.onHostReadable()).toBe(true)
    const got = client.output()
    // done on client id 2, delete_id(2); the pool's delete_id(host 2) was dropped.
    expect(got.length).toBe(24)
    expect([readU32(got, 0), readU32(got, 8)]).toEqual([2, 77])
    expect([readU32(got, 12), readU32(got, 20)]).toEqual([1, 2])
    expect(mapped.hostOnly).toBe(0)
  })
})
