import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Reactor from "../../src/transport/reactor.js"
import { acceptUnix, closeFd, listenUnix, SocketEndpoint } from "../../src/transport/socket.js"
import { mapShared, mapSharedScoped, memfdCreate } from "../../src/transport/memfd.js"
import { expectNoFdLeak } from "../helpers/fds.js"
import { finished, spawnFixture } from "./child.js"

const enc = new TextEncoder()
const text = (view: Uint8Array): string => new TextDecoder().decode(view.subarray(0, view.indexOf(0)))

describe("fd passing between two processes", () => {
  it.scopedLive("a memfd goes to a child and back, and the child's own memfd comes back, verified by content", () =>
    expectNoFdLeak(
      Effect.scoped(
        Effect.gen(function* () {
          const dir = yield* Effect.acquireRelease(
            Effect.sync(() => mkdtempSync(join(tmpdir(), "sommelier-fdpass-"))),
            (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
          )
          const path = join(dir, "s")
          const reactor = yield* Reactor.make
          const listenFd = yield* listenUnix(path)
          const ours = memfdCreate("parent", 4096)
          // Our mapping stays valid after the fd itself is sent (and closed by write()).
          const oursMap = yield* mapSharedScoped(ours, 4096)
          oursMap.view.set(enc.encode("parent-data\0"))

          const child = spawnFixture("fd-peer.ts", [path])
          const exited = finished(child)

          const reply = yield* Effect.async<{ childText: string; backText: string }, Error>((resume) => {
            let ep: SocketEndpoint | undefined
            let connWatch: Reactor.Watch | undefined
            const listenWatch = reactor.watch(listenFd, Reactor.EPOLLIN, () => {
              const fd = acceptUnix(listenFd)
              if (fd < 0) return
              listenWatch.close()
              ep = new SocketEndpoint(fd)
              expect(ep.write(enc.encode("P"), 0, 1, [ours])).toBe("sent")
              connWatch = reactor.watch(fd, Reactor.EPOLLIN, () => {
                const r = ep!.fill()
                if (r === "eof") {
                  resume(Effect.fail(new Error("child hung up early")))
                  return
                }
                if (ep!.inEnd - ep!.inStart < 1 || ep!.inFds.length < 2) return
                const childFd = ep!.inFds.shift()!
                const backFd = ep!.inFds.shift()!
                ep!.consume(1)
                const c = mapShared(childFd, 4096, { readOnly: true })
                const b = mapShared(backFd, 4096, { readOnly: true })
                const result = { childText: text(c.view), backText: text(b.view) }
                c.unmap()
                b.unmap()
                closeFd(childFd)
                closeFd(backFd)
                connWatch!.close()
                // Hang up: the child sees eof and exits.
                ep!.close()
                resume(Effect.succeed(result))
              })
            })
          })
          expect(reply.childText).toBe("child saw: parent-data")
          // Our memfd came back and is the same object: the child's write is visible in our mapping.
          expect(reply.backText).toBe("parent-data")
          expect(text(oursMap.view.subarray(2048))).toBe("child wrote here")
          const out = yield* Effect.promise(() => exited)
          expect(out.stderr).toContain('child: received memfd with "parent-data"')
          expect(out.code).toBe(0)
        })
      )
    )
  )
})
