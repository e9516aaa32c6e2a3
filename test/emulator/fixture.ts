/**
 * Fixtures for the emulator tests: a real `sommelier emulate-host` process (the CLI, run with
 * tsx), a scripted "compositor" socket the test drives by hand (for pipes, memfds, EOF and errors
 * that a real compositor would not produce on demand), a minimal cross-domain guest over the
 * emulated VirtGpuDevice (the spec's guest steps, just enough to exercise the host), and Wayland
 * message helpers.
 *
 * Everything here is test code; the guest-side channel proper lives in src/transport/crossdomain.
 */
import { spawn, type ChildProcess } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import { sys, MSG_CMSG_CLOEXEC, MSG_DONTWAIT, MSG_NOSIGNAL } from "../../src/ffi/libc.js"
import { Errno } from "../../src/ffi/errno.js"
import { MsgIo } from "../../src/emulator/msg.js"
import { acceptUnix, listenUnix } from "../../src/transport/socket.js"
import { Scope, Exit } from "effect"
import {
  BLOB_FLAG_USE_MAPPABLE,
  BLOB_MEM_GUEST,
  CAPSET_CROSS_DOMAIN,
  type Mapping
} from "../../src/virtgpu/device.js"
import { EmulatedDevice } from "../../src/virtgpu/emulated.js"

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..")

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** Polls `f` every 5 ms until it returns a value other than undefined. */
export const until = async <A>(f: () => A | undefined, what: string, timeoutMs = 5000): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = f()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

// -------------------------------------------------------------------------------------------------
// The emulator process

export interface EmulatorProcess {
  readonly socketPath: string
  readonly process: ChildProcess
  readonly stderr: () => string
  readonly stop: () => Promise<void>
}

/** `sommelier emulate-host --listen DIR/vgpu.sock --host-display HOST`; resolves once it listens. */
export const startEmulatorProcess = async (hostDisplay: string): Promise<EmulatorProcess> => {
  const dir = mkdtempSync(join(tmpdir(), "sommelier-emu-"))
  const socketPath = join(dir, "vgpu.sock")
  const child = spawn(
    process.execPath,
    ["--import", "tsx", join(repoRoot, "src/cli/main.ts"), "emulate-host", "--listen", socketPath, "--host-display", hostDisplay],
    { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] }
  )
  let out = ""
  let err = ""
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()))
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()))
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  try {
    await until(() => (out.includes("listening ") ? true : child.exitCode !== null ? false : undefined), "emulate-host to listen", 30_000).then(
      (ok) => {
        if (!ok) throw new Error(`emulate-host exited: ${err}`)
      }
    )
  } catch (e) {
    child.kill("SIGKILL")
    rmSync(dir, { recursive: true, force: true })
    throw e
  }
  return {
    socketPath,
    process: child,
    stderr: () => err,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM")
        const t = setTimeout(() => child.kill("SIGKILL"), 3000)
        await exited
        clearTimeout(t)
      }
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

// -------------------------------------------------------------------------------------------------
// A scripted compositor: listens on a Unix stream socket in this process

export interface ScriptedCompositor {
  readonly path: string
  /** Waits for the emulator's connection (made at INIT). */
  accept(): Promise<ScriptedPeer>
  close(): Promise<void>
}

export interface ScriptedPeer {
  readonly fd: number
  /** Next message from the emulator: bytes and fds (owned by the caller). */
  recv(timeoutMs?: number): Promise<{ data: Uint8Array; fds: number[] }>
  send(data: Uint8Array, fds?: readonly number[]): void
  /** True once the emulator closed its end. */
  eof(): boolean
  close(): void
}

export const scriptedCompositor = async (): Promise<ScriptedCompositor> => {
  const dir = mkdtempSync(join(tmpdir(), "sommelier-fakehost-"))
  const path = join(dir, "wayland-fake")
  const scope = Effect.runSync(Scope.make())
  const listenFd = await Effect.runPromise(Scope.extend(listenUnix(path), scope))
  const io = new MsgIo(64 * 1024)
  const peers: number[] = []
  return {
    path,
    accept: async () => {
      const fd = await until(() => {
        const c = acceptUnix(listenFd)
        return c >= 0 ? c : undefined
      }, "the emulator to connect to the compositor")
      peers.push(fd)
      let closed = false
      return {
        fd,
        recv: async (timeoutMs = 5000) =>
          until(
            () => {
              const n = io.recv(fd, MSG_DONTWAIT | MSG_CMSG_CLOEXEC)
              if (n === -Errno.EAGAIN) return undefined
              if (n < 0) throw new Error(`recvmsg: errno ${-n}`)
              return { data: io.inBuf.slice(0, n), fds: io.fds.splice(0) }
            },
            "a message from the emulator",
            timeoutMs
          ),
        send: (data, fds = []) => {
          io.ensureOut(data.length)
          io.outBuf.set(data)
          const n = io.send(fd, data.length, fds, MSG_NOSIGNAL)
          if (n !== data.length) throw new Error(`sendmsg: ${n}`)
        },
        eof: () => {
          const n = io.recv(fd, MSG_DONTWAIT | 0x2 /* MSG_PEEK */)
          return n === 0
        },
        close: () => {
          if (closed) return
          closed = true
          sys.close(fd)
          peers.splice(peers.indexOf(fd), 1)
        }
      }
    },
    close: async () => {
      for (const fd of peers.splice(0)) sys.close(fd)
      await Effect.runPromise(Scope.close(scope, Exit.void))
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

// -------------------------------------------------------------------------------------------------
// Cross-domain wire (spec §3) for the test guest

export const CD = {
  INIT: 1,
  GET_IMAGE_REQUIREMENTS: 2,
  POLL: 3,
  SEND: 4,
  RECEIVE: 5,
  READ: 6,
  WRITE: 7,
  ID_VIRTGPU_BLOB: 1,
  ID_READ_PIPE: 3,
  ID_WRITE_PIPE: 4
} as const

const header = (v: DataView, cmd: number, size: number): void => {
  v.setUint8(0, cmd)
  v.setUint8(1, 0)
  v.setUint16(2, size, true)
  v.setUint32(4, 0, true)
}

export const initCmd = (queryRing: number, channelRing: number, channelType = 1): Uint8Array => {
  const b = new Uint8Array(20)
  const v = new DataView(b.buffer)
  header(v, CD.INIT, 20)
  v.setUint32(8, queryRing, true)
  v.setUint32(12, channelRing, true)
  v.setUint32(16, channelType, true)
  return b
}

export const pollCmd = (): Uint8Array => {
  const b = new Uint8Array(16)
  header(new DataView(b.buffer), CD.POLL, 16)
  return b
}

export const sendCmd = (data: Uint8Array, ids: ReadonlyArray<readonly [id: number, type: number]> = []): Uint8Array => {
  const b = new Uint8Array(352 + data.length)
  const v = new DataView(b.buffer)
  header(v, CD.SEND, b.length)
  v.setUint32(8, ids.length, true)
  v.setUint32(12, data.length, true)
  ids.forEach(([id, type], i) => {
    v.setUint32(16 + 4 * i, id, true)
    v.setUint32(128 + 4 * i, type, true)
  })
  b.set(data, 352)
  return b
}

export const writeCmd = (id: number, data: Uint8Array, hangUp: boolean): Uint8Array => {
  const b = new Uint8Array(24 + data.length)
  const v = new DataView(b.buffer)
  header(v, CD.WRITE, b.length)
  v.setUint32(8, id, true)
  v.setUint32(12, hangUp ? 1 : 0, true)
  v.setUint32(16, data.length, true)
  b.set(data, 24)
  return b
}

export const imageReqCmd = (width: number, height: number, format: number, flags = 0x11): Uint8Array => {
  const b = new Uint8Array(24)
  const v = new DataView(b.buffer)
  header(v, CD.GET_IMAGE_REQUIREMENTS, 24)
  v.setUint32(8, width, true)
  v.setUint32(12, height, true)
  v.setUint32(16, format, true)
  v.setUint32(20, flags, true)
  return b
}

export type RingMessage =
  | { readonly cmd: 5; readonly ids: Array<{ id: number; type: number; size: number }>; readonly data: Uint8Array }
  | { readonly cmd: 6; readonly id: number; readonly hangUp: number; readonly data: Uint8Array }
  | { readonly cmd: number }

export const parseRing = (ring: Uint8Array): RingMessage => {
  const v = new DataView(ring.buffer, ring.byteOffset, ring.byteLength)
  const cmd = ring[0]!
  if (cmd === CD.RECEIVE) {
    const n = v.getUint32(8, true)
    const size = v.getUint32(12, true)
    const ids = Array.from({ length: n }, (_, i) => ({
      id: v.getUint32(16 + 4 * i, true),
      type: v.getUint32(128 + 4 * i, true),
      size: v.getUint32(240 + 4 * i, true)
    }))
    return { cmd, ids, data: ring.slice(352, 352 + size) }
  }
  if (cmd === CD.READ) return { cmd, id: v.getUint32(8, true), hangUp: v.getUint32(12, true), data: ring.slice(24, 24 + v.getUint32(16, true)) }
  return { cmd }
}

export interface ImageReqs {
  readonly strides: number[]
  readonly offsets: number[]
  readonly modifier: bigint
  readonly size: number
  readonly blobId: number
  readonly mapInfo: number
  readonly memoryIdx: number
  readonly physicalDeviceIdx: number
}

export const parseImageReqs = (ring: Uint8Array): ImageReqs => {
  const v = new DataView(ring.buffer, ring.byteOffset, 64)
  return {
    strides: [0, 1, 2, 3].map((k) => v.getUint32(4 * k, true)),
    offsets: [0, 1, 2, 3].map((k) => v.getUint32(16 + 4 * k, true)),
    modifier: v.getBigUint64(32, true),
    size: Number(v.getBigUint64(40, true)),
    blobId: v.getUint32(48, true),
    mapInfo: v.getUint32(52, true),
    memoryIdx: v.getInt32(56, true),
    physicalDeviceIdx: v.getInt32(60, true)
  }
}

/** A cross-domain guest context over the emulated device: the spec's setup steps 4–8. */
export class TestGuest {
  readonly dev: EmulatedDevice
  readonly query: { handle: number; resId: number; map: Mapping }
  readonly channel: { handle: number; resId: number; map: Mapping }

  constructor(socketPath: string, options: { init?: boolean } = {}) {
    this.dev = new EmulatedDevice(socketPath)
    this.dev.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b10)
    const ring = (): { handle: number; resId: number; map: Mapping } => {
      const b = this.dev.createBlob({ blobMem: BLOB_MEM_GUEST, blobFlags: BLOB_FLAG_USE_MAPPABLE, size: 4096, blobId: 0n })
      return { ...b, map: this.dev.map(b.handle, 4096) }
    }
    this.query = ring()
    this.channel = ring()
    if (options.init !== false) this.submit(initCmd(this.query.resId, this.channel.resId))
  }

  submit(cmd: Uint8Array, ringIdx?: number, boHandles?: number[]): void {
    this.dev.execbuffer({ command: cmd, ...(ringIdx !== undefined ? { ringIdx } : {}), ...(boHandles !== undefined ? { boHandles } : {}) })
  }

  poll(): void {
    this.submit(pollCmd(), 1)
  }

  /** Waits for one fence event and returns the channel ring's message. */
  async next(timeoutMs = 5000): Promise<RingMessage> {
    const events = await until(() => {
      const e = this.dev.readEvents()
      return e.length > 0 ? e : undefined
    }, "a fence event", timeoutMs)
    if (events.length !== 1) throw new Error(`expected one event, got ${events.length}`)
    return parseRing(this.channel.map.view)
  }

  /** True when no event arrives within `ms`. */
  async quiet(ms = 150): Promise<boolean> {
    await sleep(ms)
    return this.dev.readEvents().length === 0
  }

  imageRequirements(width: number, height: number, format: number): ImageReqs {
    this.query.map.view.fill(0, 0, 64)
    this.submit(imageReqCmd(width, height, format), 0, [this.query.handle])
    this.dev.wait(this.query.handle)
    return parseImageReqs(this.query.map.view)
  }

  close(): void {
    this.query.map.unmap()
    this.channel.map.unmap()
    this.dev.close()
  }
}

// -------------------------------------------------------------------------------------------------
// Wayland wire helpers (little-endian host)

export const wlMessage = (objectId: number, opcode: number, args: ReadonlyArray<number | string> = []): Uint8Array => {
  const parts: Uint8Array[] = args.map((a) => {
    if (typeof a === "number") {
      const p = new Uint8Array(4)
      new DataView(p.buffer).setUint32(0, a >>> 0, true)
      return p
    }
    const bytes = new TextEncoder().encode(a)
    const p = new Uint8Array(4 + ((bytes.length + 1 + 3) & ~3))
    new DataView(p.buffer).setUint32(0, bytes.length + 1, true)
    p.set(bytes, 4)
    return p
  })
  const size = 8 + parts.reduce((n, p) => n + p.length, 0)
  const b = new Uint8Array(size)
  const v = new DataView(b.buffer)
  v.setUint32(0, objectId, true)
  v.setUint32(4, (size << 16) | opcode, true)
  let off = 8
  for (const p of parts) {
    b.set(p, off)
    off += p.length
  }
  return b
}

export interface WlEvent {
  readonly objectId: number
  readonly opcode: number
  readonly body: Uint8Array
}

export const wlEvents = (data: Uint8Array): WlEvent[] => {
  const out: WlEvent[] = []
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength)
  for (let off = 0; off + 8 <= data.length; ) {
    const size = v.getUint32(off + 4, true) >>> 16
    if (size < 8) break
    out.push({ objectId: v.getUint32(off, true), opcode: v.getUint32(off + 4, true) & 0xffff, body: data.slice(off + 8, off + size) })
    off += size
  }
  return out
}

/** wl_registry.global body → name and interface. */
export const parseGlobal = (body: Uint8Array): { name: number; iface: string; version: number } => {
  const v = new DataView(body.buffer, body.byteOffset, body.byteLength)
  const name = v.getUint32(0, true)
  const len = v.getUint32(4, true)
  const iface = new TextDecoder().decode(body.subarray(8, 8 + len - 1))
  const version = v.getUint32(8 + ((len + 3) & ~3), true)
  return { name, iface, version }
}
