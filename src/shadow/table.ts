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

export class ShadowTable {
  private readonly clientLow = new IdSpace(0)
  private readonly clientHigh = new IdSpace(SERVER_ID_START)
  private readonly hostLow = new IdSpace(0)
  private readonly hostHigh = new IdSpace(SERVER_ID_START)

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
   * A new object created by the client (a `new_id` in a request). The host id is the client id:
   * the proxy creates no objects of its own on the host connection in local mode, so identity
   * keeps both sides' allocators in step; the table still maps both ways so that a transport that
   * injects objects can allocate host ids of its own (see `insert`).
   */
  createByClient(clientId: number, iface: InterfaceDesc, version: number): ObjectEntry | NewIdRefusal {
    if (clientId === 0 || clientId > CLIENT_ID_MAX) return "OutOfRange"
    const old = this.clientLow.get(clientId)
    // libwayland-server: a new id must not be in use; a zombie's id is in use until delete_id.
    if (old !== undefined) return "InUse"
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
    else if (entry.hostId !== 0) this.hostLow.set(entry.hostId, entry)
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

  private remove(entry: ObjectEntry): void {
    if (entry.clientId >= SERVER_ID_START) this.clientHigh.delete(entry.clientId)
    else this.clientLow.delete(entry.clientId)
    if (entry.hostId >= SERVER_ID_START) this.hostHigh.delete(entry.hostId)
    else this.hostLow.delete(entry.hostId)
  }

  /** Every tracked entry, for diagnostics and tests (not for the data path). */
  entries(): ObjectEntry[] {
    const out: ObjectEntry[] = []
    for (const e of this.clientLow.entries) if (e !== undefined) out.push(e)
    for (const e of this.clientHigh.entries) if (e !== undefined) out.push(e)
    return out
  }
}

/**
 * The connection's shadow table behind a `Ref`, as Effect code sees it. The Ref holds one
 * mutable table for the connection's lifetime; the data path mutates it in place (copying a table
 * per batch would cost more than forwarding the batch), so `Ref.get` gives the live table.
 */
export const makeShadowRef: Effect.Effect<Ref.Ref<ShadowTable>> = Effect.suspend(() => Ref.make(new ShadowTable()))
