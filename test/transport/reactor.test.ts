import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { readFileSync } from "node:fs"
import { Errno, SyscallError } from "../../src/ffi/errno.js"
import { sys } from "../../src/ffi/libc.js"
import { pendingCloses } from "../../src/ffi/uv.js"
import * as Reactor from "../../src/transport/reactor.js"
import { socketPair } from "../../src/transport/socket.js"
import { expectNoFdLeak } from "../helpers/fds.js"
import { finished, firstLine, spawnFixture } from "./child.js"

const sockets = Effect.acquireRelease(Effect.sync(socketPair), ([a, b]) =>
  Effect.sync(() => {
    sys.close(a)
    sys.close(b)
  })
)

const one = new Uint8Array([1])
const drain = (fd: number): void => {
  const b = new Uint8Array(256)
  while (sys.read(fd, b, 256) > 0) {
    /* empty */
  }
}

/** Clock ticks of CPU (user + system) used so far by `pid`. */
const cpuTicks = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return Number(fields[11]) + Number(fields[12])
}

describe("Reactor", () => {
  it.scopedLive("delivers readiness through Node's loop; a fiber waiting on it resumes", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const reactor = yield* Reactor.make
          const [a, b] = yield* sockets
          const seen: number[] = []
          const start = Date.now()
          const events = yield* Effect.async<number>((resume) => {
            const w = reactor.watch(b, Reactor.EPOLLIN, (ev) => {
              seen.push(ev)
              drain(b)
              w.close()
              resume(Effect.succeed(ev))
            })
            expect(reactor.watches).toBe(1)
            // Written later from a timer: the wake-up must come from the loop, not from this call.
            setTimeout(() => sys.write(a, one, 1), 30)
          })
          expect(events & Reactor.EPOLLIN).toBe(Reactor.EPOLLIN)
          expect(seen).toHaveLength(1)
          expect(Date.now() - start).toBeLessThan(2000)
          expect(reactor.watches).toBe(0)
        })
      )
    )
  )

  it.scopedLive("setEvents switches interest; close() stops delivery but leaves the fd open", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const reactor = yield* Reactor.make
          const [a, b] = yield* sockets
          const seen: number[] = []
          const w = reactor.watch(a, Reactor.EPOLLOUT, (ev) => {
            seen.push(ev)
            w.setEvents(0) // writable stays true: level-triggered, so silence it
          })
          yield* Effect.sleep("30 millis")
          expect(seen).toEqual([Reactor.EPOLLOUT])
          w.setEvents(Reactor.EPOLLIN)
          sys.write(b, one, 1)
          yield* Effect.sleep("30 millis")
          // EPOLLIN arrives now; the handler silences again.
          expect(seen).toEqual([Reactor.EPOLLOUT, Reactor.EPOLLIN])
          w.close()
          w.close()
          sys.write(b, one, 1)
          yield* Effect.sleep("30 millis")
          expect(seen).toHaveLength(2)
          expect(sys.fcntl(a, 1)).toBeGreaterThanOrEqual(0)
          expect(reactor.watches).toBe(0)
        })
      )
    )
  )

  it.scopedLive("an exception in a handler reaches onError, closes only that watch", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const errors: Array<{ fd: number; error: unknown }> = []
          const reactor = yield* Reactor.makeWith({ onError: (fd, error) => errors.push({ fd, error }) })
          const [a, b] = yield* sockets
          const [c, d] = yield* sockets
          let good = 0
          let bad = 0
          reactor.watch(b, Reactor.EPOLLIN, () => {
            bad++
            throw new Error("handler bug")
          })
          const ok = reactor.watch(d, Reactor.EPOLLIN, () => {
            good++
            drain(d)
          })
          sys.write(a, one, 1)
          sys.write(c, one, 1)
          yield* Effect.sleep("30 millis")
          expect(bad).toBe(1) // level-triggered and never drained, yet called once: the watch was closed
          expect(errors).toHaveLength(1)
          expect(errors[0]!.fd).toBe(b)
          expect(String(errors[0]!.error)).toContain("handler bug")
          expect(reactor.watches).toBe(1)
          sys.write(c, one, 1)
          yield* Effect.sleep("30 millis")
          expect(good).toBe(2)
          ok.close()
        })
      )
    )
  )

  it.scopedLive("the default onError writes to stderr", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const reactor = yield* Reactor.make
        const [a, b] = yield* sockets
        const written: string[] = []
        const original = process.stderr.write.bind(process.stderr)
        process.stderr.write = ((chunk: string) => {
          written.push(String(chunk))
          return true
        }) as typeof process.stderr.write
        try {
          reactor.watch(b, Reactor.EPOLLIN, () => {
            throw new Error("visible")
          })
          sys.write(a, one, 1)
          yield* Effect.sleep("30 millis")
        } finally {
          process.stderr.write = original
        }
        expect(written.join("")).toContain("visible")
        expect(written.join("")).toContain(`fd ${b}`)
        expect(reactor.watches).toBe(0)
      })
    )
  )

  it.scopedLive("watching an fd twice fails with EEXIST; a closed-and-reused fd number can be watched again", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const reactor = yield* Reactor.make
          const [a, b] = socketPair()
          const first = reactor.watch(b, Reactor.EPOLLIN, () => {})
          let error: unknown
          try {
            reactor.watch(b, Reactor.EPOLLIN, () => {})
          } catch (e) {
            error = e
          }
          expect(error).toBeInstanceOf(SyscallError)
          expect((error as SyscallError).code).toBe("EEXIST")
          // Misuse: the fd is closed before its watch. The number is reused at once.
          sys.close(b)
          const [c, d] = socketPair()
          expect(c).toBe(b)
          let hits = 0
          const second = reactor.watch(c, Reactor.EPOLLIN, () => {
            hits++
            drain(c)
          })
          first.close() // must not remove the new registration
          sys.write(d, one, 1)
          yield* Effect.sleep("30 millis")
          expect(hits).toBe(1)
          second.close()
          for (const fd of [a, c, d]) sys.close(fd)
        })
      )
    )
  )

  it.scopedLive("a handler may close the reactor's own scope", () =>
    expectNoFdLeak(
      Effect.gen(function* () {
        const scope = yield* Scope.make()
        const reactor = yield* Scope.extend(Reactor.make, scope)
        const [a, b] = socketPair()
        let calls = 0
        yield* Effect.async<void>((resume) => {
          reactor.watch(b, Reactor.EPOLLIN, () => {
            calls++
            Effect.runSync(Scope.close(scope, Exit.void))
            resume(Effect.void)
          })
          sys.write(a, one, 1)
        })
        yield* Effect.sleep("30 millis")
        expect(calls).toBe(1)
        expect(pendingCloses()).toBe(0)
        let error: unknown
        try {
          reactor.watch(a, Reactor.EPOLLIN, () => {})
        } catch (e) {
          error = e
        }
        expect((error as SyscallError).errno).toBe(Errno.EBADF)
        sys.close(a)
        sys.close(b)
      })
    )
  )

  it.scopedLive("many watches and bursts: every ready fd is dispatched (more than 64 at once)", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const reactor = yield* Reactor.make
          const pairs = yield* Effect.forEach(Array.from({ length: 150 }), () => sockets)
          const hit = new Set<number>()
          yield* Effect.async<void>((resume) => {
            for (const [, b] of pairs)
              reactor.watch(b, Reactor.EPOLLIN, () => {
                drain(b)
                hit.add(b)
                if (hit.size === pairs.length) resume(Effect.void)
              })
            for (const [a] of pairs) sys.write(a, one, 1)
          })
          expect(hit.size).toBe(150)
        })
      )
    )
  )
})

describe("Reactor process lifetime and idle cost", () => {
  it("the process exits by itself once the scope has closed", async () => {
    const child = spawnFixture("lifetime.ts", ["exit"])
    const out = await finished(child, 15_000)
    expect(out.stderr).toBe("")
    expect(out.stdout).toBe("closed\n")
    expect(out.code).toBe(0)
  })

  it("an open reactor with no watch does not hold the process", async () => {
    const child = spawnFixture("lifetime.ts", ["idle-reactor"])
    const out = await finished(child, 15_000)
    expect(out.stderr).toBe("")
    expect(out.stdout).toBe("started\n")
    expect(out.code).toBe(0)
  })

  it("a watch keeps the process alive, idle at ~0 CPU, until its event", async () => {
    const child = spawnFixture("lifetime.ts", ["stdin"])
    const done = finished(child, 20_000)
    expect(await firstLine(child)).toBe("ready")
    // Let start-up work (JIT, GC) settle, then measure one idle second.
    await new Promise((r) => setTimeout(r, 500))
    const t0 = cpuTicks(child.pid!)
    await new Promise((r) => setTimeout(r, 1000))
    const used = cpuTicks(child.pid!) - t0
    expect(child.exitCode).toBe(null) // still alive: nothing but the watch holds it
    expect(used).toBeLessThanOrEqual(2) // ≤ 20 ms of CPU in 1 s (USER_HZ = 100)
    child.stdin!.write("go\n")
    const out = await done
    expect(out.stderr).toBe("")
    expect(out.stdout).toBe("ready\nclosed\n")
    expect(out.code).toBe(0)
  })
})
