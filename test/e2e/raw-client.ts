/**
 * A raw Wayland client over node:net for the end-to-end tests: hand-encoded requests, a minimal
 * event parser, and the `wl_display.error` decoder. It carries no fds (node's net cannot), which
 * is all the garbage and connect/disconnect tests need. Deliberately independent of src/wire, so
 * a codec bug cannot hide itself.
 */
import { Effect, type Scope } from "effect"
import { createConnection, type Socket } from "node:net"

export interface RawMessage {
  readonly objectId: number
  readonly opcode: number
  readonly size: number
  readonly body: Buffer
}

/** One message: header (id, size << 16 | opcode) then the given 32-bit words. */
export const message = (objectId: number, opcode: number, words: ReadonlyArray<number> = [], size?: number): Buffer => {
  const b = Buffer.alloc(8 + words.length * 4)
  b.writeUInt32LE(objectId >>> 0, 0)
  b.writeUInt32LE((((size ?? b.length) << 16) | opcode) >>> 0, 4)
  words.forEach((w, i) => b.writeUInt32LE(w >>> 0, 8 + i * 4))
  return b
}

/** Splits complete messages off the front of `buf`; returns them and the leftover bytes. */
export const parseMessages = (buf: Buffer): { messages: RawMessage[]; rest: Buffer } => {
  const messages: RawMessage[] = []
  let off = 0
  while (buf.length - off >= 8) {
    const objectId = buf.readUInt32LE(off)
    const w = buf.readUInt32LE(off + 4)
    const size = w >>> 16
    if (size < 8 || buf.length - off < size) break
    messages.push({ objectId, opcode: w & 0xffff, size, body: buf.subarray(off + 8, off + size) })
    off += size
  }
  return { messages, rest: buf.subarray(off) }
}

const readString = (body: Buffer, off: number): { value: string | null; next: number } => {
  const len = body.readUInt32LE(off)
  if (len === 0) return { value: null, next: off + 4 }
  if (off + 4 + len > body.length) throw new Error(`string of ${len} bytes overruns a ${body.length}-byte body`)
  if (body[off + 4 + len - 1] !== 0) throw new Error("string is not NUL-terminated")
  return { value: body.toString("utf8", off + 4, off + 4 + len - 1), next: off + 4 + ((len + 3) & ~3) }
}

export interface DisplayError {
  readonly objectId: number
  readonly code: number
  readonly message: string
}

/** `wl_display.error(object_id: object, code: uint, message: string)`: object 1, opcode 0. */
export const decodeDisplayError = (m: RawMessage): DisplayError => {
  if (m.objectId !== 1 || m.opcode !== 0) throw new Error(`not a wl_display.error: object ${m.objectId} opcode ${m.opcode}`)
  const objectId = m.body.readUInt32LE(0)
  const code = m.body.readUInt32LE(4)
  const s = readString(m.body, 8)
  if (s.next !== m.body.length) throw new Error(`wl_display.error has ${m.body.length - s.next} trailing bytes`)
  return { objectId, code, message: s.value ?? "" }
}

/** `wl_registry.global(name: uint, interface: string, version: uint)`. */
export const decodeGlobal = (m: RawMessage): { name: number; iface: string; version: number } => {
  const name = m.body.readUInt32LE(0)
  const s = readString(m.body, 4)
  return { name, iface: s.value ?? "", version: m.body.readUInt32LE(s.next) }
}

export interface RawConnection {
  readonly socket: Socket
  readonly send: (bytes: Buffer) => void
  /** Waits until `until(all messages so far, eof)` holds; fails on timeout with what arrived. */
  readonly read: (until: (messages: ReadonlyArray<RawMessage>, eof: boolean) => boolean, timeoutMs?: number) => Effect.Effect<{ messages: ReadonlyArray<RawMessage>; eof: boolean }, Error>
  readonly close: () => Effect.Effect<void>
}

/** Connects to a Unix socket; the socket is destroyed (and awaited) when the scope closes. */
export const connectRaw = (path: string): Effect.Effect<RawConnection, Error, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<RawConnection, Error>((resume) => {
      const socket = createConnection({ path })
      let buf = Buffer.alloc(0)
      const messages: RawMessage[] = []
      let eof = false
      let closed = false
      const listeners = new Set<() => void>()
      const wake = (): void => {
        for (const l of [...listeners]) l()
      }
      socket.on("data", (d: Buffer) => {
        const r = parseMessages(Buffer.concat([buf, d]))
        messages.push(...r.messages)
        buf = Buffer.from(r.rest)
        wake()
      })
      socket.on("end", () => {
        eof = true
        wake()
      })
      socket.on("close", () => {
        eof = true
        closed = true
        wake()
      })
      // ECONNRESET/EPIPE after the peer cut us are expected in the garbage tests: treat as EOF.
      socket.on("error", () => {
        eof = true
        wake()
      })
      const conn: RawConnection = {
        socket,
        send: (bytes) => {
          socket.write(bytes)
        },
        read: (until, timeoutMs = 5000) =>
          Effect.async((done) => {
            const check = (): boolean => {
              if (!until(messages, eof)) return false
              done(Effect.succeed({ messages: [...messages], eof }))
              return true
            }
            if (check()) return
            const l = (): void => {
              if (check()) {
                listeners.delete(l)
                clearTimeout(t)
              }
            }
            const t = setTimeout(() => {
              listeners.delete(l)
              done(
                Effect.fail(
                  new Error(
                    `raw client: condition not met within ${timeoutMs} ms; eof=${eof}; got ${messages.length} message(s): ${messages
                      .slice(-5)
                      .map((m) => `${m.objectId}/${m.opcode}/${m.size}`)
                      .join(" ")}`
                  )
                )
              )
            }, timeoutMs)
            listeners.add(l)
            return Effect.sync(() => {
              listeners.delete(l)
              clearTimeout(t)
            })
          }),
        close: () =>
          Effect.async<void>((done) => {
            if (closed) return done(Effect.void)
            const l = (): void => {
              if (closed) {
                listeners.delete(l)
                done(Effect.void)
              }
            }
            listeners.add(l)
            socket.destroy()
          })
      }
      socket.once("connect", () => resume(Effect.succeed(conn)))
      socket.once("error", (e) => resume(Effect.fail(new Error(`cannot connect to ${path}: ${e.message}`))))
    }),
    (c) => c.close()
  )

/** `wl_display.get_registry(new_id 2)` + `wl_display.sync(new_id 3)`, as one write. */
export const registryAndSync = (): Buffer => Buffer.concat([message(1, 1, [2]), message(1, 0, [3])])

/** True once `wl_callback@3.done` arrived. */
export const syncDone = (ms: ReadonlyArray<RawMessage>): boolean => ms.some((m) => m.objectId === 3 && m.opcode === 0)
