/**
 * systemd integration: the LISTEN_* and NOTIFY_SOCKET protocols in isolation, then the real
 * thing: `bin/sommelier serve` started the way systemd starts it (the pre-bound listening socket
 * as fd 3, LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, a notify datagram socket), a real client
 * getting the registry through it, READY=1 and STOPPING=1, the lock refusing a second server,
 * and the socket file left in place.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { lstatSync, existsSync, statSync } from "node:fs"
import { join } from "node:path"
import { AF_UNIX, SOCK_CLOEXEC, SOCK_STREAM, sys } from "../../src/ffi/libc.js"
import {
  ActivationError,
  boundPath,
  checkListeningStream,
  makeNotifier,
  notifyAddress,
  parseListenEnv,
  sendNotify,
  takeActivatedSocket
} from "../../src/proxy/activation.js"
import { closeFd, listenUnix, socketPair } from "../../src/transport/socket.js"
import { runClientOk } from "../helpers/clients.js"
import { headlessHost } from "../helpers/weston.js"
import { binPath, cleanEnv, datagramSocket, ensureBuilt, noFdLeak, runtimeDir, spawnProc, spawnSommelier } from "./helpers.js"

describe("LISTEN_* parsing", () => {
  it("is for us only when LISTEN_PID is our pid", () => {
    expect(parseListenEnv({}, 42)).toBeNull()
    expect(parseListenEnv({ LISTEN_PID: "41", LISTEN_FDS: "1" }, 42)).toBeNull()
    expect(parseListenEnv({ LISTEN_PID: "42", LISTEN_FDS: "1" }, 42)).toEqual({ count: 1, names: null })
    expect(parseListenEnv({ LISTEN_PID: "42", LISTEN_FDS: "2", LISTEN_FDNAMES: "a:b" }, 42)).toEqual({ count: 2, names: ["a", "b"] })
  })

  it("rejects malformed values", () => {
    for (const env of [
      { LISTEN_PID: "x", LISTEN_FDS: "1" },
      { LISTEN_PID: "42", LISTEN_FDS: "-1" },
      { LISTEN_PID: "42", LISTEN_FDS: "2", LISTEN_FDNAMES: "a" }
    ]) {
      expect(parseListenEnv(env, 42)).toBeInstanceOf(ActivationError)
    }
  })

  it.effect("always removes LISTEN_* from the environment, even when they are not ours", () =>
    Effect.gen(function* () {
      const env: NodeJS.ProcessEnv = { LISTEN_PID: "1", LISTEN_FDS: "1", LISTEN_FDNAMES: "x", OTHER: "kept" }
      expect(yield* takeActivatedSocket({ env, pid: 42 })).toBeNull()
      expect(env).toEqual({ OTHER: "kept" })
    })
  )

  it.effect("LISTEN_FDS=0 and unnamed multiple fds are errors", () =>
    Effect.gen(function* () {
      const zero = yield* Effect.flip(takeActivatedSocket({ env: { LISTEN_PID: "42", LISTEN_FDS: "0" }, pid: 42 }))
      expect(zero.reason).toBe("Environment")
      const many = yield* Effect.flip(takeActivatedSocket({ env: { LISTEN_PID: "42", LISTEN_FDS: "2" }, pid: 42 }))
      expect(many.message).toMatch(/2 fds without names/)
    })
  )
})

describe("socket checks", () => {
  it.scopedLive("accepts only a listening AF_UNIX stream socket", () =>
    noFdLeak(
      Effect.gen(function* () {
        const dir = yield* runtimeDir()
        const path = join(dir, "s")
        const listening = yield* listenUnix(path)
        expect(checkListeningStream(listening)).toBeNull()
        expect(boundPath(listening)).toBe(path)

        const [a, b] = socketPair()
        yield* Effect.addFinalizer(() => Effect.sync(() => (closeFd(a), closeFd(b))))
        expect(checkListeningStream(a)?.reason).toBe("WrongSocket")

        const unbound = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)
        yield* Effect.addFinalizer(() => Effect.sync(() => closeFd(unbound)))
        expect(checkListeningStream(unbound)?.message).toMatch(/not listening/)
        expect(boundPath(unbound)).toBeNull()

        const pipe = new Int32Array(2)
        expect(sys.pipe2(pipe, SOCK_CLOEXEC)).toBe(0)
        yield* Effect.addFinalizer(() => Effect.sync(() => (closeFd(pipe[0]!), closeFd(pipe[1]!))))
        expect(checkListeningStream(pipe[0]!)?.reason).toBe("NotSocket")
      })
    )
  )
})

describe("sd_notify", () => {
  it("encodes path and abstract addresses like sd_notify", () => {
    const p = notifyAddress("/run/user/1000/systemd/notify")
    if (p instanceof Error) throw p
    expect(p.len).toBe(2 + "/run/user/1000/systemd/notify".length)
    expect(Buffer.from(p.addr.subarray(2, p.len)).toString()).toBe("/run/user/1000/systemd/notify")
    const a = notifyAddress("@abc")
    if (a instanceof Error) throw a
    // sun_path = "\0abc", no terminating NUL: the length ends the name.
    expect(a.len).toBe(2 + 4)
    expect([...a.addr.subarray(2, 6)]).toEqual([0, 97, 98, 99])
    expect(notifyAddress("vsock:2:1234")).toBeInstanceOf(ActivationError)
  })

  it.scopedLive("sends datagrams to a path and to an abstract socket; removes NOTIFY_SOCKET from the environment", () =>
    noFdLeak(
      Effect.gen(function* () {
        const dir = yield* runtimeDir()
        const byPath = yield* datagramSocket(join(dir, "notify"))
        const abstractName = `@sommelier-test-${process.pid}-${Date.now()}`
        const byName = yield* datagramSocket(abstractName)
        const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: join(dir, "notify") }
        const n = makeNotifier(env)
        expect(env.NOTIFY_SOCKET).toBeUndefined()
        yield* n!.notify("READY=1")
        yield* sendNotify(abstractName, "STOPPING=1")
        yield* byPath.waitFor("READY=1")
        yield* byName.waitFor("STOPPING=1")
        expect(makeNotifier({})).toBeNull()
        const none = yield* Effect.flip(byPath.waitFor("NOPE", "200 millis"))
        expect(none.message).toMatch(/no datagram "NOPE"/)
        const missing = yield* Effect.flip(sendNotify(join(dir, "nobody"), "READY=1"))
        expect(missing.reason).toBe("Notify")
      })
    )
  )
})

describe("bin/sommelier serve under socket activation", () => {
  it.scopedLive(
    "serves the passed socket, says READY=1 and STOPPING=1, keeps the lock and leaves the socket file",
    () =>
      noFdLeak(
        Effect.gen(function* () {
          yield* ensureBuilt()
          const host = yield* headlessHost()
          const dir = yield* runtimeDir()
          const name = "wayland-act"
          const path = join(dir, name)
          // systemd's side: bind and listen (the .socket unit), a notify socket (the manager).
          const listenFd = yield* listenUnix(path)
          const inode = statSync(path).ino
          const notify = yield* datagramSocket(join(dir, "notify"))
          const env = cleanEnv({
            XDG_RUNTIME_DIR: dir,
            LISTEN_FDS: "1",
            LISTEN_FDNAMES: `sommelier@${name}.socket`,
            NOTIFY_SOCKET: join(dir, "notify")
          })
          const server = yield* spawnSommelier(["serve", name, "--host-display", host.socketPath], { env, fds: [listenFd], listenPid: true })
          yield* server.until("READY=1 on the notify socket", () => (notify.poll(), notify.received().includes("READY=1")), "90 seconds")
          expect(server.stderr()).toMatch(/serving the activated socket/)
          expect(existsSync(`${path}.lock`)).toBe(true)
          // The socket file was not replaced: it is still the one "systemd" bound.
          expect(statSync(path).ino).toBe(inode)

          // A real client gets the host's registry through the proxy.
          const info = yield* runClientOk("wayland-info", [], { env: cleanEnv({ XDG_RUNTIME_DIR: dir, WAYLAND_DISPLAY: name }), timeout: "60 seconds" })
          expect(info.stdout.toString()).toMatch(/interface: 'wl_compositor'/)
          expect(info.stdout.toString()).toMatch(/interface: 'xdg_wm_base'/)

          // A second server on the same name is refused by the lock.
          const second = yield* spawnSommelier(["serve", name, "--host-display", host.socketPath], { env: cleanEnv({ XDG_RUNTIME_DIR: dir }) })
          const secondExit = yield* second.exited()
          expect(secondExit.code).toBe(1)
          expect(second.stderr()).toMatch(/in use by another Wayland server/)
          expect(statSync(path).ino).toBe(inode)

          server.signal("SIGTERM")
          yield* notify.waitFor("STOPPING=1")
          const exit = yield* server.exited()
          expect(exit.code).toBe(0)
          expect(notify.received()).toEqual(["READY=1", "STOPPING=1"])
          // The socket belongs to systemd: still there. The lock is ours: gone.
          expect(lstatSync(path).isSocket()).toBe(true)
          expect(existsSync(`${path}.lock`)).toBe(false)
        })
      ),
    240_000
  )

  it.scopedLive(
    "under systemd's own systemd-socket-activate: the first client's connection starts the proxy and is served",
    () =>
      Effect.gen(function* () {
        yield* ensureBuilt()
        const host = yield* headlessHost()
        const dir = yield* runtimeDir()
        const name = "wayland-sa"
        const path = join(dir, name)
        // Without --accept it binds, waits for the first connection, then execs the command
        // (same pid) with LISTEN_FDS=1, LISTEN_PID and LISTEN_FDNAMES set, passing only -E vars.
        const activator = yield* spawnProc(
          "systemd-socket-activate",
          ["-l", path, `--fdname=sommelier@${name}.socket`, "-E", "PATH", "-E", "XDG_RUNTIME_DIR", binPath, "serve", name, "--mode", "local", "--host-display", host.socketPath],
          { env: cleanEnv({ XDG_RUNTIME_DIR: dir }) }
        )
        yield* activator.until("the socket", () => /Listening on/.test(activator.stderr()))
        const info = yield* runClientOk("wayland-info", [], { env: cleanEnv({ XDG_RUNTIME_DIR: dir, WAYLAND_DISPLAY: name }), timeout: "60 seconds" })
        expect(info.stdout.toString()).toMatch(/interface: 'wl_compositor'/)
        expect(activator.stderr()).toMatch(/serving the activated socket/)
        activator.signal("SIGTERM")
        const exit = yield* activator.exited()
        expect(exit.code, activator.stderr()).toBe(0)
      }),
    240_000
  )

  it.scopedLive("refuses an activated fd that is not a listening socket", () =>
    noFdLeak(
      Effect.gen(function* () {
        yield* ensureBuilt()
        const dir = yield* runtimeDir()
        const [a, b] = socketPair()
        yield* Effect.addFinalizer(() => Effect.sync(() => (closeFd(a), closeFd(b))))
        const env = cleanEnv({ XDG_RUNTIME_DIR: dir, LISTEN_FDS: "1" })
        const server = yield* spawnSommelier(["serve", "wayland-x", "--host-display", "/nonexistent"], { env, fds: [a], listenPid: true })
        const exit = yield* server.exited()
        expect(exit.code).toBe(1)
        expect(server.stderr()).toMatch(/activated fd 3 is not listening/)
      })
    ),
    240_000
  )
})
