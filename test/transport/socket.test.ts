import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Errno, SyscallError } from "../../src/ffi/errno.js"
import {
  EFD_CLOEXEC,
  F_GETFD,
  FD_CLOEXEC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  SCM_RIGHTS,
  SOL_SOCKET,
  addressOf,
  sys
} from "../../src/ffi/libc.js"
import * as Reactor from "../../src/transport/reactor.js"
import {
  acceptUnix,
  connectUnix,
  FdQueue,
  listenUnix,
  lockFile,
  MAX_FDS_PER_SENDMSG,
  SocketEndpoint,
  socketPair,
  TransportError
} from "../../src/transport/socket.js"
import { mapShared, memfdCreate } from "../../src/transport/memfd.js"
import { expectNoFdLeak } from "../helpers/fds.js"
import { finished, spawnFixture } from "./child.js"

const enc = new TextEncoder()
const dec = new TextDecoder()

/** Two endpoints over a socketpair, closed with the scope. */
const pair = (options?: ConstructorParameters<typeof SocketEndpoint>[1]) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const [a, b] = socketPair()
      return [new SocketEndpoint(a, options), new SocketEndpoint(b, options)] as const
    }),
    ([a, b]) =>
      Effect.sync(() => {
        a.close()
        b.close()
      })
  )

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "sommelier-sock-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

const received = (ep: SocketEndpoint): Uint8Array => ep.inBuf.slice(ep.inStart, ep.inEnd)

const isOpen = (fd: number): boolean => sys.fcntl(fd, F_GETFD) >= 0

/** An eventfd whose counter identifies it: reading it returns `value`. */
const taggedFd = (value: number): number => sys.eventfd(value, EFD_CLOEXEC)
const readTag = (fd: number): number => {
  const b = new BigUint64Array(1)
  expect(sys.read(fd, b, 8)).toBe(8)
  return Number(b[0])
}

/** Fill until `want` bytes are buffered (the peer already wrote them). */
const fillUntil = (ep: SocketEndpoint, want: number): void => {
  for (let i = 0; i < 10_000 && ep.inEnd - ep.inStart < want; i++) {
    const r = ep.fill()
    if (r === "eof") throw new Error("unexpected eof")
  }
}

describe("FdQueue", () => {
  it("is FIFO across growth and closes what it holds", () => {
    const q = new FdQueue()
    for (let i = 0; i < 40; i++) q.push(1000 + i)
    expect(q.length).toBe(40)
    for (let i = 0; i < 10; i++) expect(q.shift()).toBe(1000 + i)
    for (let i = 40; i < 70; i++) q.push(1000 + i)
    const out: number[] = []
    for (let fd = q.shift(); fd !== undefined; fd = q.shift()) out.push(fd)
    expect(out).toEqual(Array.from({ length: 60 }, (_, i) => 1010 + i))
    const fd = taggedFd(1)
    q.push(fd)
    q.closeAll()
    expect(q.length).toBe(0)
    expect(isOpen(fd)).toBe(false)
  })
})

describe("SocketEndpoint", () => {
  it.scoped("moves bytes over a socketpair both ways", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const [a, b] = yield* pair()
          expect(b.fill()).toBe("again")
          expect(a.write(enc.encode("ping"), 0, 4, [])).toBe("sent")
          expect(b.fill()).toBe("data")
          expect(dec.decode(received(b))).toBe("ping")
          b.consume(4)
          expect(b.inStart).toBe(b.inEnd)
          expect(b.fill()).toBe("again")
          const msg = enc.encode("xxpongxx")
          expect(b.write(msg, 2, 4, [])).toBe("sent")
          expect(a.fill()).toBe("data")
          expect(dec.decode(received(a))).toBe("pong")
          expect(() => a.consume(5)).toThrow(RangeError)
        })
      )
    )
  )

  it.scoped("passes a memfd with its content; received fds are close-on-exec", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const [a, b] = yield* pair()
          const fd = memfdCreate("payload", 4096)
          const m = mapShared(fd, 4096)
          m.view.set(enc.encode("known content"))
          m.unmap()
          expect(a.write(enc.encode("M"), 0, 1, [fd])).toBe("sent")
          expect(isOpen(fd)).toBe(false) // ownership: closed once sent
          expect(b.fill()).toBe("data")
          expect(b.inFds.length).toBe(1)
          const got = b.inFds.shift()!
          expect(sys.fcntl(got, F_GETFD) & FD_CLOEXEC).toBe(FD_CLOEXEC)
          const r = mapShared(got, 4096, { readOnly: true })
          expect(dec.decode(r.view.subarray(0, 13))).toBe("known content")
          r.unmap()
          sys.close(got)
        })
      )
    )
  )

  it.scoped("splits more than 28 fds over several sendmsg calls; all arrive in order with the data", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const [a, b] = yield* pair()
          const count = 70 // 28 + 28 + 14
          const fds = Array.from({ length: count }, (_, i) => taggedFd(i + 1))
          const data = Uint8Array.from({ length: 100 }, (_, i) => i)
          expect(a.write(data, 0, 100, fds)).toBe("sent")
          for (const fd of fds) expect(isOpen(fd)).toBe(false)
          fillUntil(b, 100)
          expect(Array.from(received(b))).toEqual(Array.from(data))
          expect(b.inFds.length).toBe(count)
          for (let i = 0; i < count; i++) {
            const fd = b.inFds.shift()!
            expect(readTag(fd)).toBe(i + 1)
            sys.close(fd)
          }
        })
      )
    )
  )

  it.scoped("rejects more fd batches than bytes and out-of-range slices, closing the fds", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const [a] = yield* pair()
          const fds = Array.from({ length: MAX_FDS_PER_SENDMSG + 1 }, (_, i) => taggedFd(i + 1))
          expect(() => a.write(new Uint8Array(1), 0, 1, fds)).toThrow(TransportError)
          for (const fd of fds) expect(isOpen(fd)).toBe(false)
          // Out-of-range slices never reach the kernel (it would read past the buffer).
          const fd = taggedFd(1)
          expect(() => a.write(new Uint8Array(8), 4, 5, [fd])).toThrow(RangeError)
          expect(isOpen(fd)).toBe(false)
          expect(() => a.write(new Uint8Array(8), -1, 2, [])).toThrow(RangeError)
        })
      )
    )
  )

  it.scoped("queues on EAGAIN and drains on EPOLLOUT through the reactor", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const reactor = yield* Reactor.make
          const [a, b] = yield* pair({ maxPendingBytes: 64 * 1024 * 1024 })
          const chunk = new Uint8Array(16 * 1024)
          let written = 0
          let results: string[] = []
          // The peer does not read: the socket buffer fills and writes start queueing.
          for (let i = 0; i < 200; i++) {
            for (let j = 0; j < chunk.length; j++) chunk[j] = (written + j) & 0xff
            const r = a.write(chunk, 0, chunk.length, [])
            results.push(r)
            written += chunk.length
            if (r === "queued" && a.pendingBytes > 256 * 1024) break
          }
          expect(results).toContain("queued")
          expect(a.pendingBytes).toBeGreaterThan(0)
          expect(a.flush()).toBe(false)
          // Fds written while queued stay owned by the endpoint until sent.
          const fds = [taggedFd(7), taggedFd(8)]
          for (let j = 0; j < 10; j++) chunk[j] = (written + j) & 0xff
          expect(a.write(chunk, 0, 10, fds)).toBe("queued")
          written += 10
          const fdsAt = written - 10

          let receivedBytes = 0
          let bad = -1
          const got: Array<{ at: number; fd: number }> = []
          yield* Effect.async<void>((resume) => {
            let flushed = false
            let writeWatch: Reactor.Watch | undefined
            const readWatch = reactor.watch(b.fd, Reactor.EPOLLIN, () => {
              b.fill()
              for (let i = b.inStart; i < b.inEnd; i++) if (bad < 0 && b.inBuf[i] !== ((receivedBytes + i - b.inStart) & 0xff)) bad = receivedBytes + i - b.inStart
              for (let fd = b.inFds.shift(); fd !== undefined; fd = b.inFds.shift()) got.push({ at: receivedBytes, fd })
              receivedBytes += b.inEnd - b.inStart
              b.consume(b.inEnd - b.inStart)
              if (flushed && receivedBytes === written) {
                readWatch.close()
                resume(Effect.void)
              }
            })
            writeWatch = reactor.watch(a.fd, Reactor.EPOLLOUT, () => {
              if (a.flush()) {
                flushed = true
                writeWatch?.close()
              }
            })
          })
          expect(bad).toBe(-1)
          expect(receivedBytes).toBe(written)
          expect(got.map((g) => readTag(g.fd))).toEqual([7, 8])
          // The fds arrive with the first byte of the write that carried them.
          expect(got[0]!.at).toBeLessThanOrEqual(fdsAt)
          for (const g of got) sys.close(g.fd)
          expect(reactor.watches).toBe(0)
        })
      )
    )
  )

  it.scoped("overflow: nothing sent or queued, fds closed, stream intact", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const [a, b] = yield* pair({ maxPendingBytes: 100_000 })
          const chunk = new Uint8Array(8192).fill(1)
          let accepted = 0
          for (;;) {
            const before = a.pendingBytes
            const fd = taggedFd(3)
            const r = a.write(chunk, 0, chunk.length, [fd])
            if (r === "overflow") {
              expect(isOpen(fd)).toBe(false)
              expect(a.pendingBytes).toBe(before)
              break
            }
            accepted += chunk.length
          }
          expect(a.pendingBytes).toBeGreaterThan(100_000 - 8192)
          // A write too large for the queue overflows even when it would fit later.
          expect(a.write(new Uint8Array(200_000), 0, 200_000, [])).toBe("overflow")
          // Drain: exactly the accepted bytes arrive, with one fd per accepted write.
          let total = 0
          let fdCount = 0
          for (let i = 0; i < 10_000 && total < accepted; i++) {
            a.flush()
            b.fill()
            total += b.inEnd - b.inStart
            b.consume(b.inEnd - b.inStart)
            for (let fd = b.inFds.shift(); fd !== undefined; fd = b.inFds.shift()) {
              fdCount++
              sys.close(fd)
            }
          }
          expect(a.flush()).toBe(true)
          expect(total).toBe(accepted)
          expect(fdCount).toBe(accepted / 8192)
        })
      )
    )
  )

  it.scoped("close() releases queued output fds and received fds", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const [a, b] = socketPair()
          const ea = new SocketEndpoint(a, { maxPendingBytes: 1 << 30 })
          const eb = new SocketEndpoint(b)
          // Received but never shifted.
          expect(ea.write(new Uint8Array(1), 0, 1, [taggedFd(1)])).toBe("sent")
          eb.fill()
          expect(eb.inFds.length).toBe(1)
          // Queued for output behind a full socket.
          const big = new Uint8Array(1 << 20)
          let r = ea.write(big, 0, big.length, [])
          for (let i = 0; i < 8 && r === "sent"; i++) r = ea.write(big, 0, big.length, [])
          expect(r).toBe("queued")
          const queued = [taggedFd(2), taggedFd(3)]
          expect(ea.write(big, 0, 4, queued)).toBe("queued")
          ea.close()
          ea.close()
          eb.close()
          expect(ea.closed).toBe(true)
          for (const fd of queued) expect(isOpen(fd)).toBe(false)
          // After close: write closes its fds and throws, fill throws.
          const late = taggedFd(4)
          expect(() => ea.write(big, 0, 1, [late])).toThrow(TransportError)
          expect(isOpen(late)).toBe(false)
          expect(() => ea.fill()).toThrow(TransportError)
        })
      )
    )
  )

  it.scoped("eof after the peer closes, after any last data", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const [a, b] = socketPair()
          const ea = new SocketEndpoint(a)
          const eb = new SocketEndpoint(b)
          expect(eb.write(enc.encode("bye"), 0, 3, [])).toBe("sent")
          eb.close()
          expect(ea.fill()).toBe("data")
          expect(dec.decode(received(ea))).toBe("bye")
          expect(ea.fill()).toBe("eof")
          ea.consume(3)
          expect(ea.fill()).toBe("eof")
          // Writing to a closed peer: EPIPE (MSG_NOSIGNAL: no SIGPIPE), unsent fds closed.
          const fd = taggedFd(1)
          let error: unknown
          try {
            ea.write(enc.encode("x"), 0, 1, [fd])
          } catch (e) {
            error = e
          }
          expect(error).toBeInstanceOf(SyscallError)
          expect((error as SyscallError).code).toBe("EPIPE")
          expect(isOpen(fd)).toBe(false)
          ea.close()
        })
      )
    )
  )

  it.scoped("grows the input buffer when a message does not fit", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const [a, b] = yield* pair({ inputCapacity: 16 })
          const data = Uint8Array.from({ length: 1000 }, (_, i) => i * 7)
          expect(a.write(data, 0, data.length, [])).toBe("sent")
          fillUntil(b, 1000)
          expect(b.inBuf.length).toBeGreaterThanOrEqual(1000)
          expect(Array.from(received(b))).toEqual(Array.from(data))
          // Compaction keeps a partial message at the front.
          b.consume(997)
          expect(a.write(data, 0, 20, [])).toBe("sent")
          fillUntil(b, 23)
          expect(Array.from(received(b))).toEqual([...Array.from(data.subarray(997)), ...Array.from(data.subarray(0, 20))])
        })
      )
    )
  )

  it.scoped("MSG_CTRUNC (a peer sending over 28 fds at once) fails with Truncated; what arrived is owned", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const [a, b] = yield* pair()
          // Hand-built sendmsg with 40 fds in one SCM_RIGHTS message.
          const n = 40
          const fds = Array.from({ length: n }, (_, i) => taggedFd(i + 1))
          const mem = new ArrayBuffer(512)
          const w = new Uint32Array(mem)
          const base = addressOf(w)
          const dataOff = 64
          const iovOff = 80
          const ctlOff = 96
          new Uint8Array(mem)[dataOff] = 0x41
          w[iovOff / 4] = (base + dataOff) % 2 ** 32
          w[iovOff / 4 + 1] = Math.floor((base + dataOff) / 2 ** 32)
          w[iovOff / 4 + 2] = 1
          w[ctlOff / 4] = 16 + 4 * n
          w[ctlOff / 4 + 2] = SOL_SOCKET
          w[ctlOff / 4 + 3] = SCM_RIGHTS
          for (let i = 0; i < n; i++) w[ctlOff / 4 + 4 + i] = fds[i]!
          w[4] = (base + iovOff) % 2 ** 32
          w[5] = Math.floor((base + iovOff) / 2 ** 32)
          w[6] = 1
          w[8] = (base + ctlOff) % 2 ** 32
          w[9] = Math.floor((base + ctlOff) / 2 ** 32)
          w[10] = 16 + 4 * n
          expect(sys.sendmsg(a.fd, w, MSG_DONTWAIT | MSG_NOSIGNAL)).toBe(1)
          for (const fd of fds) sys.close(fd)
          let error: unknown
          try {
            b.fill()
          } catch (e) {
            error = e
          }
          expect(error).toBeInstanceOf(TransportError)
          expect((error as TransportError).reason).toBe("Truncated")
          expect(b.inFds.length).toBe(MAX_FDS_PER_SENDMSG)
          expect(b.inEnd - b.inStart).toBe(1)
          // The endpoint's close() (scope) releases the 28 that arrived.
        })
      )
    )
  )
})

describe("unix socket helpers", () => {
  it.scoped("listen, connect, accept; socket file is 0700; scope close unlinks", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const dir = yield* tempDir
          const path = join(dir, "wayland-test")
          const inner = yield* Scope.make()
          const listenFd = yield* Scope.extend(listenUnix(path), inner)
          expect(statSync(path).mode & 0o777).toBe(0o700)
          expect(statSync(path).isSocket()).toBe(true)
          expect(acceptUnix(listenFd)).toBe(-1)
          const c = yield* connectUnix(path)
          expect(sys.fcntl(c, F_GETFD) & FD_CLOEXEC).toBe(FD_CLOEXEC)
          const s = acceptUnix(listenFd)
          expect(s).toBeGreaterThan(2)
          expect(acceptUnix(listenFd)).toBe(-1)
          const client = new SocketEndpoint(c)
          const server = new SocketEndpoint(s)
          expect(client.write(enc.encode("hi"), 0, 2, [])).toBe("sent")
          expect(server.fill()).toBe("data")
          expect(dec.decode(received(server))).toBe("hi")
          client.close()
          server.close()
          // Binding an existing path fails.
          const again = yield* Effect.exit(Effect.scoped(listenUnix(path)))
          expect(Exit.isFailure(again)).toBe(true)
          yield* Scope.close(inner, Exit.void)
          expect(existsSync(path)).toBe(false)
        })
      )
    )
  )

  it.effect("connect errors are SyscallErrors with codes", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const dir = yield* tempDir
          const missing = yield* Effect.flip(connectUnix(join(dir, "nope")))
          expect(missing.code).toBe("ENOENT")
          expect(missing.syscall).toBe("connect")
        })
      )
    )
  )

  it.effect("a socket path longer than sun_path gives a clear error", () =>
    expectNoFdLeak(
      Effect.gen(function* () {
        const long = "/tmp/" + "x".repeat(120)
        const e1 = yield* Effect.flip(connectUnix(long))
        expect(e1.code).toBe("ENAMETOOLONG")
        expect(e1.message).toContain("at most 107")
        const e2 = yield* Effect.flip(Effect.scoped(listenUnix(long)))
        expect(e2.code).toBe("ENAMETOOLONG")
        // 107 bytes is the longest accepted (fails later only because the directory is missing).
        const e3 = yield* Effect.flip(connectUnix("/" + "y".repeat(106)))
        expect(e3.code).toBe("ENOENT")
      })
    )
  )

  it.scoped("lockFile: a second lock fails with EAGAIN; release unlinks", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const dir = yield* tempDir
          const path = join(dir, "wayland-0.lock")
          const inner = yield* Scope.make()
          yield* Scope.extend(lockFile(path), inner)
          expect(existsSync(path)).toBe(true)
          const second = yield* Effect.flip(Effect.scoped(lockFile(path)))
          expect(second.code).toBe("EAGAIN")
          expect(second.errno).toBe(Errno.EAGAIN)
          expect(existsSync(path)).toBe(true)
          yield* Scope.close(inner, Exit.void)
          expect(existsSync(path)).toBe(false)
          yield* Effect.scoped(lockFile(path))
        })
      )
    )
  )

  it.scoped("EMFILE from accept is a SyscallError with code EMFILE (child with a low RLIMIT_NOFILE)", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const child = spawnFixture("emfile.ts", [join(dir, "s")])
      const out = yield* Effect.promise(() => finished(child))
      expect(out.stderr).toBe("")
      expect(out.code).toBe(0)
      expect(JSON.parse(out.stdout)).toEqual({ tag: "SyscallError", code: "EMFILE", errno: 24, syscall: "accept4", afterFree: true })
    })
  )
})
