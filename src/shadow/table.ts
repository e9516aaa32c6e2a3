/**
 * The per-connection shadow table: every live Wayland object of one guest client, with its
 * interface and version, and the mapping between the id the client uses and the id the host
 * compositor uses, for both id ranges (client-created from 1, server-created from 0xff000000).
 *
 * It implements the object lifetime rules of libwayland (`wayland-server.c`, `wayland-client.c`):
 * - a client-created object destroyed by a destructor request, or by a destructor event, is a
 *   zombie until the server's `wl_display.delete_id` frees its id; events that still arrive for a
 *   zombie are dropped, but their fds are taken off the queue (the interface is kept for that);
 * - a server-created object destroyed by a destructor request is freed at once (the server sends
 *   no `delete_id` for ids ≥ 0xff000000).
 *
 * Two id modes for client-created objects. Identity (the default, zero cost): the host id is the
 * client id, which keeps both sides' allocators in step while the proxy creates nothing of its
 * own. Mapped (`mappedIds`): the table allocates host ids lowest-free itself, because once the
 * proxy creates objects on the host connection (`allocateHostOnly`), the client's ids no longer
 * fit: libwayland-server accepts a new client id only if it is free and at most one past the
 * highest slot (`wl_map_reserve_new`), so host ids must stay dense on their own. A host id is
 * reused only after the host's `delete_id`, so late events never reach the wrong object.
 *
 * It does not parse messages and does no I/O: the pipeline in `src/proxy/` calls it. The data path
 * mutates the table in place, synchronously, inside its one step per batch; Effect code reaches it
 * through the connection's `Ref` (see `makeShadowRef`).
 */
import { Effect, Ref } from "effect"
import type { InterfaceDesc } from "../protocol/types.js"

export const SERVER_ID_START = 0xff000000
/** libwayland's map refuses client ids at or above the server range. */
export const CLIENT_ID_MAX = SERVER_ID_START - 1

export const enum ObjectState {
  Live = 0,
  /** Destroyed by the client or by a destructor event; the id waits for `delete_id`. */
  Zombie = 1
}

export interface ObjectEntry {
  /** The id the guest client uses. */
  readonly clientId: number
  /** The id the host compositor uses. */
  readonly hostId: number
  readonly iface: InterfaceDesc
  readonly version: number
  state: ObjectState
}

/** Why a new id was refused; the pipeline turns it into `wl_display.error(invalid_object)`. */
export type NewIdRefusal = "OutOfRange" | "InUse"

/**
 * Id-indexed storage for one range: a dense JS array indexed by `id - base`. Wayland ids are
 * allocated lowest-free-first by both libwayland sides, so the arrays stay dense and small.
 */
class IdSpace {
  readonly entries: (ObjectEntry | undefined)[] = []
  count = 0
  constructor(readonly base: number) {}
  get(id: number): ObjectEntry | undefined {
    return this.entries[id - this.base]
  }
  set(id: number, entry: ObjectEntry): void {
    const i = id - this.base
    if (this.entries[i] === undefined) this.count++
    this.entries[i] = entry
  }
  delete(id: number): void {
    const i = id - this.base
    if (this.entries[i] !== undefined) {
      this.count--
      this.entries[i] = undefined
      // Keep the array short when the top ids go away (clients free in LIFO order often).
      while (this.entries.length > 0 && this.entries[this.entries.length - 1] === undefined) this.entries.pop()
    }
  }
}

export interface ShadowTableOptions {
  /** Allocate host ids of client-created objects lowest-free instead of using the client's id. */
  readonly mappedIds?: boolean
}

/** Free host ids below the allocation mark, smallest first (a binary min-heap). */
class FreeIds {
  private readonly heap: number[] = []
  get size(): number {
    return this.heap.length
  }
  push(id: number): void {
    const h = this.heap
    let i = h.length
    h.push(id)
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (h[parent]! <= id) break
      h[i] = h[parent]!
      i = parent
    }
    h[i] = id
  }
  pop(): number | undefined {
    const h = this.heap
    if (h.length === 0) return undefined
    const top = h[0]!
    const last = h.pop()!
    if (h.length > 0) {
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        if (l >= h.length) break
        const r = l + 1
        const c = r < h.length && h[r]! < h[l]! ? r : l
        if (h[c]! >= last) break
        h[i] = h[c]!
        i = c
      }
      h[i] = last
    }
    return top
  }
  /** Rare (explicit inserts below the mark): O(n) rebuild. */
  remove(id: number): void {
    if (!this.heap.includes(id)) return
    const rest = this.heap.splice(0).filter((x) => x !== id)
    for (const x of rest) this.push(x)
  }
}

export class ShadowTable {
  private readonly clientLow = new IdSpace(0)
  private readonly clientHigh = new IdSpace(SERVER_ID_START)
  private readonly hostLow = new IdSpace(0)
  private readonly hostHigh = new IdSpace(SERVER_ID_START)
  /** True in mapped mode (see the module comment). */
  readonly mappedIds: boolean
  // Mapped mode: host ids below `nextHost` are in use unless in `freeHost`; 0 is never an id.
  private nextHost = 1
  private readonly freeHost = new FreeIds()
  private hostOnlyCount = 0

  constructor(options?: ShadowTableOptions) {
    this.mappedIds = options?.mappedIds === true
  }

  private allocHost(): number {
    return this.freeHost.pop() ?? this.nextHost++
  }

  /** Mapped mode: `id` is taken by an explicitly inserted entry. */
  private reserveHost(id: number): void {
    if (id >= this.nextHost) {
      for (let i = this.nextHost; i < id; i++) this.freeHost.push(i)
      this.nextHost = id + 1
    } else {
      this.freeHost.remove(id)
    }
  }

  /** The object a client id names, live or zombie. */
  byClient(id: number): ObjectEntry | undefined {
    return id >= SERVER_ID_START ? this.clientHigh.get(id) : this.clientLow.get(id)
  }

  /** The object a host id names, live or zombie. */
  byHost(id: number): ObjectEntry | undefined {
    return id >= SERVER_ID_START ? this.hostHigh.get(id) : this.hostLow.get(id)
  }

  /** Objects currently tracked (live and zombie). */
  get size(): number {
    return this.clientLow.count + this.clientHigh.count
  }

  /**
   * A new object created by the client (a `new_id` in a request). Identity mode: the host id is
   * the client id (the proxy creates no objects of its own on the host connection, so both sides'
   * allocators stay in step). Mapped mode: the lowest free host id.
   */
  createByClient(clientId: number, iface: InterfaceDesc, version: number): ObjectEntry | NewIdRefusal {
    if (clientId === 0 || clientId > CLIENT_ID_MAX) return "OutOfRange"
    const old = this.clientLow.get(clientId)
    // libwayland-server: a new id must not be in use; a zombie's id is in use until delete_id.
    if (old !== undefined) return "InUse"
    if (this.mappedIds) {
      const mapped: ObjectEntry = { clientId, hostId: this.allocHost(), iface, version, state: ObjectState.Live }
      this.clientLow.set(clientId, mapped)
      this.hostLow.set(mapped.hostId, mapped)
      return mapped
    }
    if (this.hostLow.get(clientId) !== undefined) return "InUse"
    const entry: ObjectEntry = { clientId, hostId: clientId, iface, version, state: ObjectState.Live }
    this.clientLow.set(clientId, entry)
    this.hostLow.set(clientId, entry)
    return entry
  }

  /**
   * A new object created by the server (a `new_id` in an event). Returns undefined when the id is
   * outside the server range or still in use: the host compositor broke the protocol.
   */
  createByHost(hostId: number, iface: InterfaceDesc, version: number): ObjectEntry | undefined {
    if (hostId < SERVER_ID_START) return undefined
    if (this.hostHigh.get(hostId) !== undefined) return undefined
    const entry: ObjectEntry = { clientId: hostId, hostId, iface, version, state: ObjectState.Live }
    this.hostHigh.set(hostId, entry)
    this.clientHigh.set(hostId, entry)
    return entry
  }

  /** Insert an entry with explicit ids on both sides (objects the proxy itself creates). */
  insert(entry: ObjectEntry): void {
    if (entry.clientId >= SERVER_ID_START) this.clientHigh.set(entry.clientId, entry)
    else if (entry.clientId !== 0) this.clientLow.set(entry.clientId, entry)
    if (entry.hostId >= SERVER_ID_START) this.hostHigh.set(entry.hostId, entry)
    else if (entry.hostId !== 0) {
      if (this.mappedIds) this.reserveHost(entry.hostId)
      this.hostLow.set(entry.hostId, entry)
    }
  }

  /**
   * Mapped mode only: a host-side object the proxy creates for itself (e.g. a `wl_shm_pool` of a
   * shm copy), with a fresh host id and no client counterpart (`clientId` 0). The client can never
   * name it; events the host sends to it must be handled by a hook (the connection would forward
   * them to object 0), and its `delete_id` is dropped by the `hostOnlyIds` hook module.
   * The proxy sends its destructor itself and calls `destroyedByRequest` like for any object.
   */
  allocateHostOnly(iface: InterfaceDesc, version: number): ObjectEntry {
    if (!this.mappedIds) throw new Error("allocateHostOnly needs a shadow table in mapped mode")
    const entry: ObjectEntry = { clientId: 0, hostId: this.allocHost(), iface, version, state: ObjectState.Live }
    this.hostLow.set(entry.hostId, entry)
    this.hostOnlyCount++
    return entry
  }

  /** Proxy-owned objects currently tracked (live and zombie). */
  get hostOnly(): number {
    return this.hostOnlyCount
  }

  /** A destructor request was forwarded for this object. */
  destroyedByRequest(entry: ObjectEntry): void {
    if (entry.clientId >= SERVER_ID_START) {
      // Server-created: libwayland-server frees it at once and sends no delete_id.
      this.remove(entry)
    } else {
      entry.state = ObjectState.Zombie
    }
  }

  /** A destructor event (e.g. `wl_callback.done`) was forwarded for this object. */
  destroyedByEvent(entry: ObjectEntry): void {
    if (entry.clientId >= SERVER_ID_START) this.remove(entry)
    else entry.state = ObjectState.Zombie
  }

  /**
   * `wl_display.delete_id(id)` from the host: the id (a host id, client range) is free again.
   * Returns the entry that was freed so the pipeline can forward the client's id.
   */
  deleteId(hostId: number): ObjectEntry | undefined {
    const entry = this.byHost(hostId)
    if (entry !== undefined) this.remove(entry)
    return entry
  }

  /**
   * Drops an entry at once, with no `delete_id` from the host: for an object the host never
   * knew (mapped mode, host id 0: e.g. a guest `wl_shm_pool` the proxy keeps to itself). The
   * caller sends the client its `delete_id`.
   */
  forget(entry: ObjectEntry): void {
    if (this.byClient(entry.clientId) === entry) this.remove(entry)
  }

  private remove(entry: ObjectEntry): void {
    if (entry.clientId >= SERVER_ID_START) this.clientHigh.delete(entry.clientId)
    else if (entry.clientId !== 0) this.clientLow.delete(entry.clientId)
    else this.hostOnlyCount--
    if (entry.hostId >= SERVER_ID_START) this.hostHigh.delete(entry.hostId)
    else {
      this.hostLow.delete(entry.hostId)
      if (this.mappedIds && entry.hostId !== 0) this.freeHost.push(entry.hostId)
    }
  }

  /** Every tracked entry, for diagnostics and tests (not for the data path). */
  entries(): ObjectEntry[] {
    const out: ObjectEntry[] = []
    for (const e of this.clientLow.entries) if (e !== undefined) out.push(e)
    for (const e of this.clientHigh.entries) if (e !== undefined) out.push(e)
    if (this.hostOnlyCount > 0) for (const e of this.hostLow.entries) if (e !== undefined && e.clientId === 0) out.push(e)
    return out
  }
}

/**
 * The connection's shadow table behind a `Ref`, as Effect code sees it. The Ref holds one
 * mutable table for the connection's lifetime; the data path mutates it in place (copying a table
 * per batch would cost more than forwarding the batch), so `Ref.get` gives the live table.
 */
export const makeShadowRef: Effect.Effect<Ref.Ref<ShadowTable>> = Effect.suspend(() => Ref.make(new ShadowTable()))
