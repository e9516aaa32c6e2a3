/**
 * Faults around the proxy:
 * - the compositor crashes (SIGKILL) or exits (SIGTERM): its clients get a `wl_display.error`
 *   and EOF, real clients exit non-zero; the proxy keeps running; new clients fail fast (an error
 *   within a second, wayland-info exits non-zero, nothing hangs); once weston is started again on
 *   the same socket path new clients work; no fd is left behind;
 * - the proxy as a child process: its socket is 0700 beside its lock; EMFILE (its fd limit
 *   lowered with prlimit): new clients are refused with an error and a log line, the connected
 *   client is unaffected, the proxy does not spin, and clients are accepted again once fds are
 *   free; then SIGTERM in the middle of traffic: exit status 0, clients disconnected, socket
 *   and lock removed;
 * - a client process killed in the middle of a message that carried 29 fds: the proxy closes
 *   every one of them (in-process proxy: back to the fd snapshot).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { spawn } from "node:child_process"
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { connectRaw, decodeDisplayError, message, registryAndSync, syncDone } from "../e2e/raw-client.js"
import { buildClient, runClient, spawnClient } from "../helpers/clients.js"
import { fdSnapshot } from "../helpers/proxy.js"
import { headlessHost } from "../helpers/weston.js"
import { cpuSecondsOf, fixedWeston, limitLeaving, spawnSommelier } from "./child.js"
import { startProxy, until } from "./proxy.js"
import { connectFdClient, displayErrors, type FdClient } from "./raw.js"

const here = dirname(fileURLToPath(import.meta.url))

const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), prefix))),
    (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
  )

const roundtrip = (c: FdClient, id: number) =>
  Effect.gen(function* () {
    c.send(message(1, 0, [id]))
    const ok = yield* c.waitFor(() => c.messages.some((m) => m.objectId === id && m.opcode === 0))
    if (!ok) return yield* Effect.fail(new Error(`roundtrip ${id} failed (eof=${c.eof})`))
  })

/** The last message is the only wl_display.error; returns its text. */
const lastError = (c: { messages: ReadonlyArray<import("../e2e/raw-client.js").RawMessage> }): string => {
  const errors = displayErrors(c.messages)
  expect(errors.length).toBe(1)
  expect(c.messages[c.messages.length - 1]).toBe(errors[0])
  return decodeDisplayError(errors[0]!).message
}

describe("faults", () => {
  it.scopedLive("the compositor crashes or exits: clients told, new clients fail fast, and connect again once it is back", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir("sommelier-faults-")
      const weston = yield* fixedWeston(join(dir, "host"))
      yield* weston.start
      const proxy = yield* startProxy(weston.socketPath)
      const solid = yield* buildClient("solid")
      const before = fdSnapshot()
      for (const signal of ["SIGKILL", "SIGTERM"] as const) {
        yield* Effect.scoped(
          Effect.gen(function* () {
            const a = yield* connectFdClient(proxy.socketPath, proxy.reactor)
            yield* roundtrip(a, 2)
            const app = yield* spawnClient(solid, ["30", "20", "0xff112233"], { env: proxy.env })
            yield* app.waitForStdout(/^mapped$/m, "20 seconds")

            yield* weston.stop(signal)
            expect(yield* a.waitFor(() => a.eof, 3000), `${signal}: the raw client is cut`).toBe(true)
            expect(lastError(a)).toMatch(/host compositor closed the connection/)
            const exited = yield* app.wait("5 seconds")
            expect(exited.code, `${signal}: solid exits with an error`).not.toBe(0)
            yield* until("the dead compositor's clients to be gone", () => proxy.server.activeClients() === 0)

            // The proxy runs on; new clients fail fast.
            const t0 = Date.now()
            const b = yield* connectRaw(proxy.socketPath)
            b.send(registryAndSync())
            const rb = yield* b.read((_, eof) => eof, 2000)
            expect(rb.eof).toBe(true)
            expect(lastError(rb)).toMatch(/cannot reach the host compositor/)
            // wayland-info exits 0 whatever happens; libwayland-client prints the error.
            const info = yield* runClient("wayland-info", [], { env: proxy.env, timeout: "5 seconds" })
            expect(info.stderr).toMatch(/error 3: sommelier: cannot reach the host compositor/)
            expect(info.stdout.toString()).not.toMatch(/wl_compositor/)
            expect(Date.now() - t0, "new clients fail within 3 s").toBeLessThan(3000)

            // Back on the same path: new clients work.
            yield* weston.start
            const c = yield* connectFdClient(proxy.socketPath, proxy.reactor)
            yield* roundtrip(c, 2)
            const info2 = yield* runClient("wayland-info", [], { env: proxy.env, timeout: "10 seconds" })
            expect(info2.code, info2.stderr).toBe(0)
            expect(info2.stdout.toString()).toMatch(/wl_compositor/)
          })
        )
      }
      yield* until("no client left", () => proxy.server.activeClients() === 0)
      const after = fdSnapshot()
      expect([...after.fds].filter(([fd, w]) => before.fds.get(fd) !== w)).toEqual([])
      expect(proxy.internalErrors()).toEqual([])
    })
  )

  // One child proxy for both (a child's start is the slow part).
  it.scopedLive("the proxy as a child: out of fds (EMFILE) new clients are refused with an error and a log line, connected ones unaffected, no busy loop; then SIGTERM mid-traffic exits 0 and removes socket and lock", () =>
    Effect.gen(function* () {
      const host = yield* headlessHost()
      const dir = yield* tempDir("sommelier-child-")
      const socket = join(dir, "proxy")
      const proxy = yield* spawnSommelier(["serve", socket, "--mode", "local", "--host-display", host.socketPath], { ...process.env, XDG_RUNTIME_DIR: dir })
      yield* proxy.waitForStderr(/listening on/, "90 seconds")
      const st = statSync(socket)
      expect(st.isSocket() && (st.mode & 0o777) === 0o700, `socket mode ${(st.mode & 0o777).toString(8)}`).toBe(true)
      expect(existsSync(`${socket}.lock`)).toBe(true)

      // --- EMFILE
      const a = yield* connectRaw(socket)
      a.send(registryAndSync())
      yield* a.read((ms) => syncDone(ms))
      // Room for exactly one more client (its socket and its compositor socket).
      const limit = limitLeaving(proxy.pid, 2)
      const pl = spawn("prlimit", ["--pid", String(proxy.pid), `--nofile=${limit}:${limit}`], { stdio: "ignore" })
      yield* Effect.async<void>((resume) => void pl.once("exit", () => resume(Effect.void)))

      const clients: Array<{ refused: boolean; error: string }> = []
      const accepted: Array<{ close: () => Effect.Effect<void> }> = []
      for (let i = 0; i < 4; i++) {
        const c = yield* connectRaw(socket)
        c.send(registryAndSync())
        const r = yield* c.read((ms, eof) => eof || syncDone(ms), 3000)
        const errors = displayErrors(r.messages)
        clients.push({ refused: r.eof, error: errors.length > 0 ? decodeDisplayError(errors[0]!).message : "" })
        if (!r.eof) accepted.push(c)
      }
      expect(clients[0]?.refused, JSON.stringify(clients)).toBe(false)
      const refused = clients.filter((c) => c.refused)
      expect(refused.length, JSON.stringify(clients)).toBeGreaterThan(0)
      for (const r of refused) expect(r.error).toMatch(/out of file descriptors/)
      yield* proxy.waitForStderr(/refused: the proxy is out of file descriptors/)

      // The connected client does not notice; the proxy does not spin on its listening socket.
      a.send(message(1, 0, [4]))
      yield* a.read((ms) => ms.some((m) => m.objectId === 4 && m.opcode === 0))
      const cpu0 = cpuSecondsOf(proxy.pid)
      yield* Effect.sleep("1 second")
      const cpu = cpuSecondsOf(proxy.pid) - cpu0
      expect(cpu, "CPU seconds used by the idle proxy in 1 s").toBeLessThan(0.3)
      expect(proxy.alive()).toBe(true)

      // Once fds are free again, new clients are served.
      for (const c of accepted) yield* c.close()
      yield* Effect.sleep("200 millis")
      const d = yield* connectRaw(socket)
      d.send(registryAndSync())
      const rd = yield* d.read((ms, eof) => eof || syncDone(ms), 3000)
      expect(rd.eof).toBe(false)
      yield* d.close()
      const raise = spawn("prlimit", ["--pid", String(proxy.pid), "--nofile=4096:4096"], { stdio: "ignore" })
      yield* Effect.async<void>((resume) => void raise.once("exit", () => resume(Effect.void)))

      // --- SIGTERM while a client floods syncs (reading its answers) and wayland-info runs.
      const c = yield* connectRaw(socket)
      let id = 2
      const flood = setInterval(() => {
        const burst: Buffer[] = []
        for (let i = 0; i < 200; i++) burst.push(message(1, 0, [id++]))
        c.send(Buffer.concat(burst))
      }, 5)
      yield* Effect.addFinalizer(() => Effect.sync(() => clearInterval(flood)))
      const env = { ...process.env, XDG_RUNTIME_DIR: dir, WAYLAND_DISPLAY: socket }
      const info = yield* spawnClient("wayland-info", [], { env })
      yield* c.read((ms) => ms.length > 2000, 20_000)
      proxy.process.kill("SIGTERM")
      const exit = yield* proxy.wait("10 seconds")
      clearInterval(flood)
      expect(exit.code, exit.stderr).toBe(0)
      expect(existsSync(socket), "socket removed").toBe(false)
      expect(existsSync(`${socket}.lock`), "lock removed").toBe(false)
      // The flooding client is disconnected; told why when its queue let the error through
      // (a full queue is dropped at close, the error behind it too).
      const r = yield* c.read((_, eof) => eof, 5000)
      expect(r.eof).toBe(true)
      for (const e of displayErrors(r.messages)) expect(decodeDisplayError(e).message).toMatch(/shutting down/)
      yield* info.kill("SIGKILL")
    }),
    240_000
  )

  it.scopedLive("a client killed in the middle of a message carrying 29 fds leaves no fd behind", () =>
    Effect.gen(function* () {
      const host = yield* headlessHost()
      const proxy = yield* startProxy(host.socketPath)
      const bystander = yield* connectFdClient(proxy.socketPath, proxy.reactor)
      yield* roundtrip(bystander, 2)
      const before = fdSnapshot()
      const child = yield* spawnClient(process.execPath, ["--import", "tsx", join(here, "fixtures", "partial-client.ts"), proxy.socketPath], { env: process.env })
      yield* child.waitForStdout(/^sent$/m, "60 seconds")
      const held = (): number => [...fdSnapshot().fds.values()].filter((w) => w.includes("memfd:partial-client")).length
      yield* until("the proxy to hold the 29 fds", () => held() === 29)
      yield* child.kill("SIGKILL")
      yield* until("the killed client's connection to end", () => proxy.server.activeClients() === 1)
      yield* until("the proxy's fds to return to the snapshot", () => fdSnapshot().fds.size === before.fds.size)
      const after = fdSnapshot()
      expect([...after.fds].filter(([fd, w]) => before.fds.get(fd) !== w)).toEqual([])
      expect(held()).toBe(0)
      yield* roundtrip(bystander, 3)
    })
  )
})
