/**
 * Cross-domain mode when the device goes away under a running proxy (the emulator process, i.e.
 * the VMM side, stops): a client connected and idle is told at once (the emulator's SHUTDOWN
 * notice wakes it), a new client is refused at once with a `wl_display.error` naming the
 * device, the proxy runs on, a device that opens but offers no Wayland channel is refused the
 * same way, once a working emulator listens on the same path again new clients are served, and
 * when that one is killed outright (SIGKILL: no notice) an idle client still ends at once (the
 * channel watches the device connection for a hang-up).
 * Failed set-ups leave no fd behind (they run in plain code from the accept callback:
 * `connectSync`, which must close what it opened on every error path).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Scope } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Protocols from "../../src/protocol/registry.js"
import { serve } from "../../src/proxy/listener.js"
import * as Reactor from "../../src/transport/reactor.js"
import { crossDomainConnector } from "../../src/transport/crossdomain/connector.js"
import { emulatedLayer } from "../../src/virtgpu/emulated.js"
import { connectRaw, decodeDisplayError, registryAndSync, syncDone, type RawMessage } from "../e2e/raw-client.js"
import { fdSnapshot } from "../helpers/proxy.js"
import { headlessHost } from "../helpers/weston.js"
import { until } from "../robustness/proxy.js"
import { startEmulatorProcess } from "./transport.js"

const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), prefix))),
    (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
  )

const displayErrors = (ms: ReadonlyArray<RawMessage>): string[] =>
  ms.filter((m) => m.objectId === 1 && m.opcode === 0).map((m) => decodeDisplayError(m).message)

/** A raw client that asks for the registry and a sync: its globals, or the error it was told. */
const registryThrough = (socketPath: string) =>
  Effect.scoped(
    Effect.gen(function* () {
      const c = yield* connectRaw(socketPath)
      c.send(registryAndSync())
      const r = yield* c.read((ms, eof) => eof || syncDone(ms), 10_000)
      return { globals: r.messages.filter((m) => m.objectId === 2 && m.opcode === 0).length, done: syncDone(r.messages), eof: r.eof, errors: displayErrors(r.messages) }
    })
  )

describe("cross-domain faults", () => {
  it.scopedLive("the device goes away: new clients are refused at once naming it, the proxy runs on, and serves again once the device is back", () =>
    Effect.gen(function* () {
      const host = yield* headlessHost()
      const dir = yield* tempDir("sommelier-xd-faults-")
      const emuPath = join(dir, "virtgpu-emu")
      const emulatorScope = yield* Scope.make()
      yield* startEmulatorProcess(emuPath, host.socketPath).pipe(Scope.extend(emulatorScope))
      const context = yield* Layer.build(Layer.mergeAll(Reactor.layer, Protocols.layer, emulatedLayer(emuPath)))
      const connector = yield* crossDomainConnector({ description: `cross-domain via emulated:${emuPath}` }).pipe(Effect.provide(context))
      // The plain set-up path is the one under test.
      expect(connector.connectSync).toBeDefined()
      const socketPath = join(dir, "wayland-proxy")
      const server = yield* serve({ socketPath, hostPath: connector.description, connector }).pipe(Effect.provide(context))

      const ok = yield* registryThrough(socketPath)
      expect(ok.errors).toEqual([])
      expect(ok.done).toBe(true)
      expect(ok.globals).toBeGreaterThan(5)
      yield* Effect.sleep("200 millis")
      const before = fdSnapshot()

      // A client connected and idle (nothing to send) when the device goes away.
      const idle = yield* connectRaw(socketPath)
      idle.send(registryAndSync())
      expect((yield* idle.read((ms) => syncDone(ms), 10_000)).eof).toBe(false)

      // The VMM side stops (SIGTERM): the idle client is told at once, the next client too.
      yield* Scope.close(emulatorScope, Exit.void)
      const cut = yield* idle.read((_, eof) => eof, 3000)
      expect(cut.eof).toBe(true)
      expect(displayErrors(cut.messages)).toEqual([expect.stringMatching(/the emulated device shut down \(sommelier emulate-host at .*virtgpu-emu stopped\)/)])
      yield* until("the idle client to be gone", () => server.activeClients() === 0)
      for (let i = 0; i < 3; i++) {
        const t0 = Date.now()
        const refused = yield* registryThrough(socketPath)
        expect(refused.eof).toBe(true)
        expect(refused.done).toBe(false)
        expect(refused.errors.length).toBe(1)
        expect(refused.errors[0]).toMatch(/cannot open the virtio-gpu device: .*no emulator at .*virtgpu-emu/)
        expect(Date.now() - t0).toBeLessThan(3000)
      }
      yield* Effect.sleep("300 millis")
      expect(server.activeClients()).toBe(0)
      const after = fdSnapshot()
      expect([...after.fds].filter(([fd, what]) => before.fds.get(fd) !== what)).toEqual([])

      // A device that opens but offers no Wayland channel: refused after the device was opened,
      // which the set-up closes again.
      const noChannel = yield* Scope.make()
      yield* startEmulatorProcess(emuPath, "-").pipe(Scope.extend(noChannel))
      // A new baseline: the emulator child's stdio pipes took fd numbers of the first one's.
      const beforeBare = fdSnapshot()
      const bare = yield* registryThrough(socketPath)
      expect(bare.eof).toBe(true)
      expect(bare.errors.length).toBe(1)
      expect(bare.errors[0]).toMatch(/cannot set up the cross-domain channel on emulated:.*offers no Wayland channel/)
      yield* Effect.sleep("300 millis")
      const afterBare = fdSnapshot()
      expect([...afterBare.fds].filter(([fd, what]) => beforeBare.fds.get(fd) !== what)).toEqual([])
      yield* Scope.close(noChannel, Exit.void)

      // The device is back on the same path: new clients work again.
      const back = yield* startEmulatorProcess(emuPath, host.socketPath)
      const again = yield* registryThrough(socketPath)
      expect(again.errors).toEqual([])
      expect(again.done).toBe(true)
      expect(again.globals).toBe(ok.globals)

      // Killed outright (no finalizer, no notice): an idle client still learns at once, from
      // the device connection's hang-up.
      const idle2 = yield* connectRaw(socketPath)
      idle2.send(registryAndSync())
      expect((yield* idle2.read((ms) => syncDone(ms), 10_000)).eof).toBe(false)
      back.kill("SIGKILL")
      const cut2 = yield* idle2.read((_, eof) => eof, 3000)
      expect(cut2.eof).toBe(true)
      expect(displayErrors(cut2.messages)).toEqual([expect.stringMatching(/emulated:.*virtgpu-emu: the device's host side hung up \(the emulator is gone\)/)])
      yield* until("the second idle client to be gone", () => server.activeClients() === 0)
    })
  )
})
