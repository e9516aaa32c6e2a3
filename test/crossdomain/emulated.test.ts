/**
 * The channel against the real emulated host (emulator child process: emulated kernel + VMM +
 * rutabaga-style cross-domain host), with this test playing the compositor on a Unix socket of
 * its own, so every fd kind can be exercised without a client that needs wl_shm:
 * bytes + a memfd (blob: CREATE_BLOB HOST3D + export), a compositor write pipe (WRITE_PIPE: the
 * guest writes, WRITE commands carry it, hang-up becomes EOF), a guest read pipe (READ_PIPE with
 * a guest-chosen id the host checks; READ data; hang-up), and the compositor hanging up.
 */
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { Effect, Layer, type Scope } from "effect"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { sys } from "../../src/ffi/libc.js"
import * as Reactor from "../../src/transport/reactor.js"
import { acceptUnix, listenUnix, SocketEndpoint } from "../../src/transport/socket.js"
import { memfdCreate } from "../../src/transport/memfd.js"
import { CrossDomainChannel } from "../../src/transport/crossdomain/channel.js"
import { CrossDomainEndpoint } from "../../src/transport/crossdomain/endpoint.js"
import { openEmulatedDevice } from "../../src/virtgpu/emulated.js"
import { checkFds, openFds } from "../helpers/fds.js"
import { startEmulatorProcess } from "./transport.js"

let before: number[] = []
beforeEach(() => {
  before = openFds()
})
afterEach(() => checkFds(before, 3000))

const text = (s: string) => new TextEncoder().encode(s)
const str = (b: Uint8Array) => new TextDecoder().decode(b)

/** Polls `cond` every 10 ms (the reactor runs in between) for up to `ms`. */
const until = (what: string, cond: () => boolean, ms = 5000): Effect.Effect<void, Error> =>
  Effect.gen(function* () {
    const end = Date.now() + ms
    while (!cond()) {
      if (Date.now() > end) return yield* Effect.fail(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep("10 millis")
    }
  })

const pipe = (): [number, number] => {
  const ends = new Int32Array(2)
  if (sys.pipe2(ends, 0o2000000 | 0o4000) < 0) throw new Error("pipe2")
  return [ends[0]!, ends[1]!]
}

/** Reads everything `fd` (non-blocking) has until EOF, within `ms`. */
const readToEof = (fd: number, ms = 5000): Effect.Effect<string, Error> =>
  Effect.gen(function* () {
    const chunks: Uint8Array[] = []
    const buf = new Uint8Array(65536)
    const end = Date.now() + ms
    for (;;) {
      const n = sys.read(fd, buf, buf.length)
      if (n > 0) chunks.push(buf.slice(0, n))
      else if (n === 0) return str(Buffer.concat(chunks))
      else if (Date.now() > end) return yield* Effect.fail(new Error(`no EOF within ${ms} ms (got ${chunks.length} chunks)`))
      else yield* Effect.sleep("10 millis")
    }
  })

interface Rig {
  readonly compositor: SocketEndpoint
  readonly guest: CrossDomainEndpoint
  readonly received: { data: string; fds: number[]; eof: boolean }
}

const rig = (): Effect.Effect<Rig, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(join(tmpdir(), "sommelier-xdemu-"))),
      (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
    )
    const compositorPath = join(dir, "compositor")
    const listenFd = yield* listenUnix(compositorPath)
    yield* startEmulatorProcess(join(dir, "emu"), compositorPath)
    const reactor = yield* Layer.build(Reactor.layer).pipe(Effect.map((ctx) => ctx.unsafeMap.get(Reactor.Reactor.key) as Reactor.ReactorService))
    const device = yield* Effect.acquireRelease(
      Effect.sync(() => openEmulatedDevice(join(dir, "emu"))),
      (d) => Effect.sync(() => d.close())
    )
    const guest = yield* Effect.acquireRelease(
      Effect.sync(() => new CrossDomainEndpoint(CrossDomainChannel.open(device, { reactor }))),
      (ep) => Effect.sync(() => ep.close())
    )
    const received = { data: "", fds: [] as number[], eof: false }
    const watch = yield* Effect.acquireRelease(
      Effect.sync(() =>
        reactor.watch(guest.fd, Reactor.EPOLLIN, () => {
          const r = guest.fill()
          received.data += str(guest.inBuf.subarray(guest.inStart, guest.inEnd))
          guest.consume(guest.inEnd - guest.inStart)
          for (let fd = guest.inFds.shift(); fd !== undefined; fd = guest.inFds.shift()) received.fds.push(fd)
          if (r === "eof") {
            received.eof = true
            watch.close()
          }
        })
      ),
      (w) => Effect.sync(() => w.close())
    )
    // INIT made the emulator connect to "the compositor".
    let fd = -1
    yield* until("the emulator to connect to the compositor", () => (fd = acceptUnix(listenFd)) >= 0)
    const compositor = yield* Effect.acquireRelease(
      Effect.sync(() => new SocketEndpoint(fd)),
      (ep) => Effect.sync(() => ep.close())
    )
    yield* Effect.addFinalizer(() => Effect.sync(() => received.fds.forEach((f) => sys.close(f))))
    return { compositor, guest, received }
  })

/** What the compositor received so far: bytes and fds. */
const compositorRead = (c: SocketEndpoint): { data: string; fds: number[] } => {
  c.fill()
  const data = str(c.inBuf.subarray(c.inStart, c.inEnd))
  c.consume(c.inEnd - c.inStart)
  const fds: number[] = []
  for (let fd = c.inFds.shift(); fd !== undefined; fd = c.inFds.shift()) fds.push(fd)
  return { data, fds }
}

describe("channel ↔ emulated host (this test is the compositor)", () => {
  it.scopedLive(
    "bytes both ways, a blob, a write pipe, a read pipe, then the compositor hangs up",
    () =>
      Effect.gen(function* () {
        const { compositor, guest, received } = yield* rig()

        // Guest → compositor: plain bytes, more than one SEND's worth.
        const big = "x".repeat(10_000)
        expect(guest.write(text(big), 0, big.length, [])).toBe("sent")
        let got = ""
        yield* until("10000 bytes at the compositor", () => (got += compositorRead(compositor).data).length >= 10_000)
        expect(got).toBe(big)

        // Compositor → guest: bytes + a memfd (a keymap, say) ⇒ a blob fd with the same bytes.
        const keymap = memfdCreate("keymap", 0)
        writeFileSync(`/proc/self/fd/${keymap}`, "xkb_keymap { ... };")
        compositor.write(text("keymap!!"), 0, 8, [keymap])
        yield* until("the keymap message", () => received.data.includes("keymap!!") && received.fds.length === 1)
        expect(readFileSync(`/proc/self/fd/${received.fds[0]}`).subarray(0, 19).toString()).toBe("xkb_keymap { ... };")

        // Compositor → guest: a write pipe (wl_data_source.send): the guest writes, the compositor reads to EOF.
        const [hostRead, hostWrite] = pipe()
        compositor.write(text("send!!!!"), 0, 8, [hostWrite])
        yield* until("the send message", () => received.data.includes("send!!!!") && received.fds.length === 2)
        const clientWriteEnd = received.fds.pop()!
        const paste = "pasted into the host ".repeat(500)
        writeFileSync(`/proc/self/fd/${clientWriteEnd}`, paste)
        sys.close(clientWriteEnd)
        expect(yield* readToEof(hostRead)).toBe(paste)
        sys.close(hostRead)

        // Guest → compositor: a read pipe (wl_data_offer.receive): the compositor writes, the client reads to EOF.
        const [clientRead, clientWrite] = pipe()
        guest.channel.adoptReadPipe(clientWrite)
        expect(guest.write(text("receive!"), 0, 8, [clientWrite])).toBe("sent")
        let pipeFds: number[] = []
        yield* until("the receive message with the host's pipe", () => {
          const r = compositorRead(compositor)
          pipeFds = pipeFds.concat(r.fds)
          return pipeFds.length === 1
        })
        const copy = "copied from the host ".repeat(700)
        writeFileSync(`/proc/self/fd/${pipeFds[0]}`, copy)
        sys.close(pipeFds[0]!)
        expect(yield* readToEof(clientRead)).toBe(copy)
        sys.close(clientRead)
        expect(guest.channel.pipes).toEqual({ read: 0, write: 0, pendingRead: 0 })

        // The compositor hangs up: an empty RECEIVE, i.e. EOF for the connection.
        compositor.close()
        yield* until("EOF at the guest", () => received.eof)
        expect(guest.channel.hostEof).toBe(true)
      }),
    60_000
  )
})
