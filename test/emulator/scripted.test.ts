/**
 * The cross-domain host of `sommelier emulate-host` against a scripted compositor socket that the
 * test drives by hand: read pipes (guest reads) and write pipes (guest writes) with hang-up, a
 * compositor memfd becoming a HOST3D blob (one-shot), the read-pipe id guess, SEND refusals,
 * the worker halting on an fd it cannot convert, EOF, and teardown on close. Every test checks
 * that the guest process leaked no fds.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { fstatSync, readSync } from "node:fs"
import { sys, F_ADD_SEALS, F_SEAL_GROW, F_SEAL_SHRINK, F_SEAL_WRITE, O_CLOEXEC, O_NONBLOCK } from "../../src/ffi/libc.js"
import { Errno } from "../../src/ffi/errno.js"
import { memfdCreate } from "../../src/transport/memfd.js"
import { BLOB_FLAG_USE_MAPPABLE, BLOB_FLAG_USE_SHAREABLE, BLOB_MEM_HOST3D, VirtGpuError } from "../../src/virtgpu/device.js"
import { checkFds, describeFd, openFds } from "../helpers/fds.js"
import {
  CD,
  initCmd,
  scriptedCompositor,
  sendCmd,
  sleep,
  startEmulatorProcess,
  TestGuest,
  until,
  writeCmd,
  type EmulatorProcess,
  type ScriptedCompositor,
  type ScriptedPeer
} from "./fixture.js"

let host: ScriptedCompositor
let emu: EmulatorProcess

beforeAll(async () => {
  host = await scriptedCompositor()
  emu = await startEmulatorProcess(host.path)
}, 60_000)

afterAll(async () => {
  await emu?.stop()
  await host?.close()
})

const text = (s: string): Uint8Array => new TextEncoder().encode(s)
const str = (b: Uint8Array): string => new TextDecoder().decode(b)

/** A guest context connected to a fresh compositor peer; both closed after `body`, then the fd check. */
const session = (body: (g: TestGuest, peer: ScriptedPeer) => Promise<void>) => async (): Promise<void> => {
  const before = openFds()
  const g = new TestGuest(emu.socketPath)
  const peer = await host.accept()
  try {
    await body(g, peer)
  } finally {
    g.close()
    peer.close()
  }
  await checkFds(before)
}

const pipe = (flags = O_CLOEXEC): [number, number] => {
  const p = new Int32Array(2)
  if (sys.pipe2(p, flags) < 0) throw new Error("pipe2")
  return [p[0]!, p[1]!]
}

const readAll = async (fd: number): Promise<string> => {
  let out = ""
  const buf = Buffer.alloc(4096)
  for (;;) {
    const n = await until(() => {
      const r = sys.read(fd, buf, buf.length)
      return r === -Errno.EAGAIN ? undefined : r
    }, "pipe data")
    if (n <= 0) return out
    out += buf.subarray(0, n).toString()
  }
}

describe("cross-domain host against a scripted compositor", () => {
  it(
    "SEND reaches the compositor byte for byte; RECEIVE carries its reply; one message per POLL",
    session(async (g, peer) => {
      g.submit(sendCmd(text("hello compositor")))
      const m = await peer.recv()
      expect(str(m.data)).toBe("hello compositor")
      expect(m.fds).toEqual([])
      peer.send(text("first"))
      await sleep(20)
      peer.send(text("second"))
      await sleep(20)
      g.poll()
      const r1 = await g.next()
      expect(r1).toEqual({ cmd: CD.RECEIVE, ids: [], data: text("firstsecond") })
      expect(await g.quiet()).toBe(true)
      peer.send(text("third"))
      expect(await g.quiet()).toBe(true)
      g.poll()
      expect(await g.next()).toEqual({ cmd: CD.RECEIVE, ids: [], data: text("third") })
    })
  )

  it(
    "read pipe (guest reads): the guest's id is checked, the compositor writes, READs then hang_up",
    session(async (g, peer) => {
      // A wrong guess is refused: nothing reaches the compositor, and the host's counter moved.
      g.submit(sendCmd(text("receive-1"), [[0x80000005, CD.ID_READ_PIPE]]))
      g.submit(sendCmd(text("receive-2"), [[0x80000002, CD.ID_READ_PIPE]]))
      const m = await peer.recv()
      expect(str(m.data)).toBe("receive-2")
      expect(m.fds.length).toBe(1)
      const w = m.fds[0]!
      expect(sys.fcntl(w, 3 /* F_GETFL */) & 3).toBe(1) // the write end
      expect(sys.write(w, text("clipboard data"), 14)).toBe(14)
      g.poll()
      const r1 = await g.next()
      expect(r1).toEqual({ cmd: CD.READ, id: 0x80000002, hangUp: 0, data: text("clipboard data") })
      sys.close(w)
      g.poll()
      expect(await g.next()).toEqual({ cmd: CD.READ, id: 0x80000002, hangUp: 1, data: new Uint8Array(0) })
      // The id is gone: nothing more from that pipe.
      g.poll()
      expect(await g.quiet()).toBe(true)
      await until(() => (/read pipe id 2147483653 does not match the host's 2147483649/.test(emu.stderr()) ? true : undefined), "the host's log")
    })
  )

  it(
    "write pipe (guest writes): RECEIVE names it WRITE_PIPE; WRITE data arrives, hang_up closes it",
    session(async (g, peer) => {
      const [r, w] = pipe(O_CLOEXEC | O_NONBLOCK)
      peer.send(text("send(mime, fd)"), [w])
      sys.close(w)
      g.poll()
      const m = await g.next()
      if (!("ids" in m)) throw new Error("expected RECEIVE")
      expect(str(m.data)).toBe("send(mime, fd)")
      expect(m.ids).toEqual([{ id: 2, type: CD.ID_WRITE_PIPE, size: 0 }])
      g.submit(writeCmd(2, text("pasted "), false))
      g.submit(writeCmd(2, text("text"), false))
      g.submit(writeCmd(2, new Uint8Array(0), true))
      expect(await readAll(r)).toBe("pasted text")
      sys.close(r)
      // After hang_up the id is unknown: a WRITE to it is an error on the host only.
      g.submit(writeCmd(2, text("late"), false))
      await until(() => (/WRITE: no item 2/.test(emu.stderr()) ? true : undefined), "the host to log the stale WRITE")
    })
  )

  it(
    "a compositor memfd becomes a VIRTGPU_BLOB identifier with its size; CREATE_BLOB(HOST3D) maps it, once",
    session(async (g, peer) => {
      const keymap = "xkb_keymap { sommelier test };"
      const fd = memfdCreate("keymap", keymap.length)
      sys.write(fd, text(keymap), keymap.length)
      sys.fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW)
      peer.send(text("keymap"), [fd])
      sys.close(fd)
      g.poll()
      const m = await g.next()
      if (!("ids" in m)) throw new Error("expected RECEIVE")
      expect(m.ids).toHaveLength(1)
      const id = m.ids[0]!
      expect(id.type).toBe(CD.ID_VIRTGPU_BLOB)
      expect(id.size).toBe(keymap.length)
      const flags = BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE
      const blob = g.dev.createBlob({ blobMem: BLOB_MEM_HOST3D, blobFlags: flags, size: id.size, blobId: BigInt(id.id) })
      expect(g.dev.resourceInfo(blob.handle).size).toBe(4096)
      // Write-sealed memfd: the shared mapping is refused, the private fallback still reads it.
      const map = g.dev.map(blob.handle, 4096)
      expect(str(map.view.subarray(0, keymap.length))).toBe(keymap)
      map.unmap()
      const exported = g.dev.primeHandleToFd(blob.handle)
      expect(describeFd(exported)).toMatch(/^\/memfd:keymap/)
      const back = Buffer.alloc(keymap.length)
      readSync(exported, back, 0, keymap.length, 0)
      expect(back.toString()).toBe(keymap)
      expect(fstatSync(exported).size).toBe(keymap.length)
      sys.close(exported)
      g.dev.gemClose(blob.handle)
      // One-shot: the same blob_id is gone (the host fails; mapping shows it).
      const again = g.dev.createBlob({ blobMem: BLOB_MEM_HOST3D, blobFlags: flags, size: id.size, blobId: BigInt(id.id) })
      expect(() => g.dev.map(again.handle, 4096)).toThrow(VirtGpuError)
    })
  )

  it(
    "SEND is refused (nothing sent) for guest-memory blobs, unknown resources, unknown types and > 28 identifiers",
    session(async (g, peer) => {
      g.submit(sendCmd(text("ring"), [[g.channel.resId, CD.ID_VIRTGPU_BLOB]]))
      g.submit(sendCmd(text("unknown"), [[999, CD.ID_VIRTGPU_BLOB]]))
      g.submit(sendCmd(text("type 9"), [[1, 9]]))
      const many = Array.from({ length: 29 }, () => [g.channel.resId, CD.ID_VIRTGPU_BLOB] as const)
      g.submit(sendCmd(text("too many"), many))
      g.submit(sendCmd(text("ok")))
      const m = await peer.recv()
      expect(str(m.data)).toBe("ok")
      // stderr arrives asynchronously from the child.
      await until(() => (/29 identifiers/.test(emu.stderr()) ? true : undefined), "the host's log")
      const log = emu.stderr()
      expect(log).toMatch(/has no host memory handle/)
      expect(log).toMatch(/resource 999 is not attached/)
      expect(log).toMatch(/identifier type 9 is not supported/)
      expect(log).toMatch(/29 identifiers, at most 28/)
    })
  )

  it(
    "an fd the host cannot convert (a read-only pipe end) halts the worker: no ring-1 fence signals again",
    session(async (g, peer) => {
      const [r, w] = pipe()
      peer.send(text("bad fd"), [r])
      sys.close(r)
      sys.close(w)
      g.poll()
      expect(await g.quiet(300)).toBe(true)
      peer.send(text("more"))
      g.poll()
      expect(await g.quiet(200)).toBe(true)
      const state = g.dev.debugState().files.find((f) => f.id === g.dev.debugState().file)
      expect(state?.context?.crossDomain?.["halted"]).toBe(true)
      await until(() => (/worker halting due to: received fd of unsupported kind/.test(emu.stderr()) ? true : undefined), "the host's log")
      // SEND still works (it does not go through the worker).
      g.submit(sendCmd(text("still sending")))
      expect(str((await peer.recv()).data)).toBe("still sending")
    })
  )

  it(
    "compositor EOF: an empty RECEIVE for this POLL and every later one",
    session(async (g, peer) => {
      peer.close()
      for (let i = 0; i < 3; i++) {
        g.poll()
        expect(await g.next()).toEqual({ cmd: CD.RECEIVE, ids: [], data: new Uint8Array(0) })
      }
    })
  )

  it(
    "a ring-1 fence before INIT is dropped; INIT twice fails (channel paths are consumed)",
    async () => {
      const before = openFds()
      const g = new TestGuest(emu.socketPath, { init: false })
      try {
        g.poll()
        expect(await g.quiet(150)).toBe(true)
        g.submit(new Uint8Array(0))
        g.submit(initCmd(g.query.resId, g.channel.resId))
        const peer = await host.accept()
        g.submit(initCmd(g.query.resId, g.channel.resId))
        await until(() => (/channel already initialized/.test(emu.stderr()) ? true : undefined), "the second INIT to be refused")
        peer.send(text("x"))
        g.poll()
        expect(await g.next()).toEqual({ cmd: CD.RECEIVE, ids: [], data: text("x") })
        peer.close()
      } finally {
        g.close()
      }
      await checkFds(before)
    }
  )

  it("closing the guest device closes the host's compositor connection", async () => {
    const before = openFds()
    const g = new TestGuest(emu.socketPath)
    const peer = await host.accept()
    try {
      expect(peer.eof()).toBe(false)
      g.close()
      await until(() => (peer.eof() ? true : undefined), "EOF on the compositor side")
    } finally {
      g.close()
      peer.close()
    }
    await checkFds(before)
  })
})
