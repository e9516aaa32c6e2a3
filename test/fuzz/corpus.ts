/**
 * Seed traffic for the fuzzers: the captured real sessions in test/golden/wire/ (wayland-info
 * and weston-simple-shm talking to weston) plus one synthetic session, built with the codec,
 * that carries fds both ways (keymap, clipboard pipes, shm pools) and destroys objects that
 * still receive events — paths the two captures barely touch.
 *
 * Each frame is annotated with the message it is (by replaying the session through a real
 * `Connection`), so that mutations can find string lengths, object ids and fd counts.
 * It does not mutate anything (mutate.ts) nor run cases (harness.ts).
 */
import { readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { defaultRegistry } from "../../src/protocol/registry.js"
import type { ArgValue, MessageDesc } from "../../src/protocol/types.js"
import { Connection, defaultLimits } from "../../src/proxy/connection.js"
import { MemoryEndpoint } from "../../src/proxy/memory.js"
import { encodeMessage, readU32 } from "../../src/wire/index.js"

export type Direction = "request" | "event"

export interface Frame {
  readonly direction: Direction
  readonly bytes: Uint8Array
  /** fds that travel with this frame (its fd arguments). */
  readonly fds: number
  /** The message it is, when the replay could tell (null for frames to unknown objects). */
  readonly desc: MessageDesc | null
  readonly iface: string | null
}

export interface Session {
  readonly name: string
  readonly frames: ReadonlyArray<Frame>
}

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
export const registry = defaultRegistry()

const loadCapture = (name: string): Array<{ direction: Direction; bytes: Uint8Array; fds: number }> =>
  (JSON.parse(readFileSync(join(root, "test", "golden", "wire", `${name}.json`), "utf8")) as Array<{ direction: Direction; hex: string; fds: number }>).map(
    (f) => ({ direction: f.direction, bytes: Uint8Array.from(Buffer.from(f.hex, "hex")), fds: f.fds })
  )

const iface = (name: string) => {
  const i = registry.get(name)
  if (i === undefined) throw new Error(`no interface ${name}`)
  return i
}
const request = (id: number, ifaceName: string, name: string, args: ArgValue[]): { direction: Direction; bytes: Uint8Array; fds: number } => {
  const desc = iface(ifaceName).requests.find((m) => m.name === name)!
  return { direction: "request", bytes: encodeMessage(id, desc, args, []), fds: desc.fdCount }
}
const event = (id: number, ifaceName: string, name: string, args: ArgValue[]): { direction: Direction; bytes: Uint8Array; fds: number } => {
  const desc = iface(ifaceName).events.find((m) => m.name === name)!
  return { direction: "event", bytes: encodeMessage(id, desc, args, []), fds: desc.fdCount }
}

/** Keyboard keymap, clipboard both ways, an shm pool, a zombie receiving an fd, a roundtrip. */
const synthetic = (): Array<{ direction: Direction; bytes: Uint8Array; fds: number }> => {
  const FD = 0 // placeholder: fd arguments take no bytes
  const offer = 0xff000001
  return [
    request(1, "wl_display", "get_registry", [2]),
    event(2, "wl_registry", "global", [1, "wl_compositor", 6]),
    event(2, "wl_registry", "global", [2, "wl_seat", 7]),
    event(2, "wl_registry", "global", [3, "wl_data_device_manager", 3]),
    event(2, "wl_registry", "global", [4, "wl_shm", 1]),
    event(2, "wl_registry", "global", [5, "ext_session_lock_manager_v1", 1]),
    request(2, "wl_registry", "bind", [2, { interface: "wl_seat", version: 7, id: 3 }]),
    request(2, "wl_registry", "bind", [3, { interface: "wl_data_device_manager", version: 3, id: 4 }]),
    request(2, "wl_registry", "bind", [4, { interface: "wl_shm", version: 1, id: 5 }]),
    request(2, "wl_registry", "bind", [1, { interface: "wl_compositor", version: 4, id: 6 }]),
    event(3, "wl_seat", "capabilities", [3]),
    event(3, "wl_seat", "name", ["seat0"]),
    request(3, "wl_seat", "get_keyboard", [7]),
    event(7, "wl_keyboard", "keymap", [1, FD, 4096]),
    event(7, "wl_keyboard", "repeat_info", [25, 600]),
    request(6, "wl_compositor", "create_surface", [8]),
    request(4, "wl_data_device_manager", "get_data_device", [9, 3]),
    request(4, "wl_data_device_manager", "create_data_source", [10]),
    request(10, "wl_data_source", "offer", ["text/plain;charset=utf-8"]),
    request(9, "wl_data_device", "set_selection", [10, 42]),
    event(10, "wl_data_source", "send", ["text/plain;charset=utf-8", FD]),
    event(9, "wl_data_device", "data_offer", [offer]),
    event(offer, "wl_data_offer", "offer", ["text/plain;charset=utf-8"]),
    event(9, "wl_data_device", "selection", [offer]),
    request(offer, "wl_data_offer", "receive", ["text/plain;charset=utf-8", FD]),
    request(offer, "wl_data_offer", "destroy", []),
    request(5, "wl_shm", "create_pool", [11, FD, 4096]),
    request(11, "wl_shm_pool", "create_buffer", [12, 0, 16, 16, 64, 0]),
    request(8, "wl_surface", "attach", [12, 0, 0]),
    request(8, "wl_surface", "damage", [0, 0, 16, 16]),
    request(8, "wl_surface", "commit", []),
    request(11, "wl_shm_pool", "destroy", []),
    event(12, "wl_buffer", "release", []),
    request(7, "wl_keyboard", "release", []),
    // The keyboard is a zombie now: this keymap and its fd are dropped by the proxy.
    event(7, "wl_keyboard", "keymap", [1, FD, 4096]),
    event(1, "wl_display", "delete_id", [11]),
    event(1, "wl_display", "delete_id", [7]),
    request(10, "wl_data_source", "destroy", []),
    event(1, "wl_display", "delete_id", [10]),
    request(1, "wl_display", "sync", [13]),
    event(13, "wl_callback", "done", [7]),
    event(1, "wl_display", "delete_id", [13])
  ]
}

/** Annotates each frame with its message by replaying the session through a real Connection. */
const annotate = (name: string, raw: ReadonlyArray<{ direction: Direction; bytes: Uint8Array; fds: number }>): Session => {
  const client = new MemoryEndpoint()
  const host = new MemoryEndpoint()
  let ended: string | null = null
  const conn = new Connection(client, host, {
    id: 0,
    registry,
    deniedGlobals: new Set(["ext_session_lock_manager_v1"]),
    limits: defaultLimits,
    trace: null,
    onBatch: null,
    onEnd: (r) => {
      ended = JSON.stringify(r)
    }
  })
  const frames: Frame[] = []
  let nextFd = 1_000_000
  for (const f of raw) {
    const sender = readU32(f.bytes, 0)
    const opcode = readU32(f.bytes, 4) & 0xffff
    const entry = f.direction === "request" ? conn.shadow.byClient(sender) : conn.shadow.byHost(sender)
    const desc = entry === undefined ? undefined : f.direction === "request" ? entry.iface.requests[opcode] : entry.iface.events[opcode]
    frames.push({ ...f, desc: desc ?? null, iface: entry?.iface.name ?? null })
    const fds = Array.from({ length: f.fds }, () => nextFd++)
    if (f.direction === "request") {
      client.feed(f.bytes, fds)
      conn.onClientReadable()
    } else {
      host.feed(f.bytes, fds)
      conn.onHostReadable()
    }
    if (ended !== null) throw new Error(`seed session ${name} does not replay cleanly: ${ended}`)
  }
  return { name, frames }
}

let cached: ReadonlyArray<Session> | null = null

/** Every seed session (captured ones first). */
export const sessions = (): ReadonlyArray<Session> =>
  (cached ??= [
    annotate("wayland-info", loadCapture("wayland-info")),
    annotate("weston-simple-shm", loadCapture("weston-simple-shm")),
    annotate("synthetic-fds", synthetic())
  ])

export const sessionByName = (name: string): Session => {
  const s = sessions().find((x) => x.name === name)
  if (s === undefined) throw new Error(`no seed session ${name}`)
  return s
}
