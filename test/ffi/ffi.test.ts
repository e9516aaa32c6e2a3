import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { attempt, check, describeErrno, Errno, SyscallError, syscallError } from "../../src/ffi/errno.js"
import {
  addressOf,
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_EVENT_SIZE,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  F_GETFD,
  FD_CLOEXEC,
  MAP_SHARED,
  MFD_CLOEXEC,
  O_CLOEXEC,
  O_NONBLOCK,
  PROT_READ,
  PROT_WRITE,
  RLIMIT_NOFILE,
  SEEK_END,
  sys,
  viewOf
} from "../../src/ffi/libc.js"
import { type GroupPoll, pendingCloses, PollGroup, UV_READABLE } from "../../src/ffi/uv.js"
import { openFds, withNoFdLeak } from "../helpers/fds.js"

describe("errno", () => {
  it("names and describes the common codes", () => {
    const expected: Array<[number, string]> = [
      [11, "EAGAIN"],
      [4, "EINTR"],
      [9, "EBADF"],
      [32, "EPIPE"],
      [104, "ECONNRESET"],
      [111, "ECONNREFUSED"],
      [2, "ENOENT"],
      [13, "EACCES"],
      [1, "EPERM"],
      [17, "EEXIST"],
      [24, "EMFILE"],
      [23, "ENFILE"],
      [12, "ENOMEM"],
      [22, "EINVAL"],
      [98, "EADDRINUSE"],
      [88, "ENOTSOCK"],
      [107, "ENOTCONN"],
      [105, "ENOBUFS"],
      [110, "ETIMEDOUT"],
      [16, "EBUSY"],
      [38, "ENOSYS"],
      [19, "ENODEV"],
      [6, "ENXIO"],
      [29, "ESPIPE"],
      [36, "ENAMETOOLONG"]
    ]
    for (const [errno, code] of expected) {
      const d = describeErrno(errno)
      expect(d.code).toBe(code)
      expect(d.message).not.toMatch(/^Unknown/)
    }
    expect(describeErrno(4095)).toEqual({ code: "E#4095", message: "Unknown error 4095" })
  })

  it("SyscallError carries syscall, errno, code and a readable message", () => {
    const e = syscallError("connect", Errno.ECONNREFUSED, "/run/x")
    expect(e).toBeInstanceOf(SyscallError)
    expect(e._tag).toBe("SyscallError")
    expect(e.syscall).toBe("connect")
    expect(e.errno).toBe(111)
    expect(e.code).toBe("ECONNREFUSED")
    expect(e.message).toBe("connect: Connection refused (ECONNREFUSED): /run/x")
  })

  it("check throws on -errno, passes results through", () => {
    expect(check("close", 0)).toBe(0)
    expect(() => check("close", -9)).toThrow(SyscallError)
  })

  it.effect("attempt fails in the error channel", () =>
    Effect.gen(function* () {
      const ok = yield* attempt("x", () => 7)
      expect(ok).toBe(7)
      const exit = yield* Effect.exit(attempt("close", () => sys.close(1_000_000)))
      expect(Exit.isFailure(exit)).toBe(true)
      if (Exit.isFailure(exit) && exit.cause._tag === "Fail") expect(exit.cause.error.code).toBe("EBADF")
    })
  )
})

describe("libc", () => {
  it("returns -errno on failure", () => {
    expect(sys.close(1_000_000)).toBe(-Errno.EBADF)
    expect(sys.open("/nonexistent/sommelier", 0)).toBe(-Errno.ENOENT)
    expect(sys.lseek(sys.getpid() > 0 ? 1_000_000 : 0, 0, 0)).toBe(-Errno.EBADF)
    expect(sys.ioctl(1_000_000, 0x6400, null)).toBe(-Errno.EBADF)
  })

  it("getpid is a real syscall", () => {
    expect(sys.getpid()).toBe(process.pid)
  })

  it("pipe2 with O_CLOEXEC sets FD_CLOEXEC; read/write move bytes", () =>
    withNoFdLeak(() => {
      const p = new Int32Array(2)
      expect(sys.pipe2(p, O_CLOEXEC | O_NONBLOCK)).toBe(0)
      expect(sys.fcntl(p[0]!, F_GETFD) & FD_CLOEXEC).toBe(FD_CLOEXEC)
      expect(sys.write(p[1]!, new Uint8Array([1, 2, 3]), 3)).toBe(3)
      const b = new Uint8Array(8)
      expect(sys.read(p[0]!, b, 8)).toBe(3)
      expect(Array.from(b.subarray(0, 3))).toEqual([1, 2, 3])
      expect(sys.read(p[0]!, b, 8)).toBe(-Errno.EAGAIN)
      sys.close(p[0]!)
      sys.close(p[1]!)
    }))

  it("mmap failure is -errno, never MAP_FAILED; a mapping is a zero-copy view", () =>
    withNoFdLeak(() => {
      expect(sys.mmap(0, 4096, PROT_READ, MAP_SHARED, 1_000_000, 0)).toBe(-Errno.EBADF)
      const fd = sys.memfd_create("ffi-test", MFD_CLOEXEC)
      expect(fd).toBeGreaterThan(2)
      expect(sys.ftruncate(fd, 8192)).toBe(0)
      expect(sys.lseek(fd, 0, SEEK_END)).toBe(8192)
      const a = sys.mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
      const b = sys.mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
      expect(a).toBeGreaterThan(0)
      const va = new Uint8Array(viewOf(a, 8192))
      const vb = new Uint8Array(viewOf(b, 8192))
      expect(addressOf(va)).toBe(a)
      va[8191] = 0x5a
      expect(vb[8191]).toBe(0x5a)
      expect(sys.munmap(a, 8192)).toBe(0)
      expect(sys.munmap(b, 8192)).toBe(0)
      sys.close(fd)
    }))

  it("epoll_event is laid out by hand (packed on x86-64)", () =>
    withNoFdLeak(() => {
      const ep = sys.epoll_create1(EPOLL_CLOEXEC)
      const efd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
      const ev = new Uint32Array(new ArrayBuffer(16))
      const dataWord = EPOLL_EVENT_SIZE === 12 ? 1 : 2
      ev[0] = 1
      ev[dataWord] = 0xdeadbeef
      ev[dataWord + 1] = 0x12345678
      expect(sys.epoll_ctl(ep, EPOLL_CTL_ADD, efd, ev)).toBe(0)
      expect(sys.epoll_wait(ep, new Uint32Array(new ArrayBuffer(64 * 16)), 64, 0)).toBe(0)
      const one = new BigUint64Array([1n])
      expect(sys.write(efd, one, 8)).toBe(8)
      const out = new Uint32Array(new ArrayBuffer(64 * 16))
      expect(sys.epoll_wait(ep, out, 64, 0)).toBe(1)
      expect(out[0]).toBe(1)
      expect(out[dataWord]).toBe(0xdeadbeef)
      expect(out[dataWord + 1]).toBe(0x12345678)
      sys.close(efd)
      sys.close(ep)
    }))

  it("getrlimit reads RLIMIT_NOFILE", () => {
    const rl = new BigUint64Array(2)
    expect(sys.getrlimit(RLIMIT_NOFILE, rl)).toBe(0)
    expect(rl[0]! > 16n).toBe(true)
    expect(rl[1]! >= rl[0]!).toBe(true)
  })
})

describe("uv_poll", () => {
  it("delivers readiness through Node's loop, routes exceptions, releases on close", async () => {
    const before = openFds()
    const p = new Int32Array(2)
    expect(sys.pipe2(p, O_CLOEXEC | O_NONBLOCK)).toBe(0)
    const errors: unknown[] = []
    let calls = 0
    const buf = new Uint8Array(16)
    let handle: GroupPoll | undefined
    const group = new PollGroup((e) => errors.push(e))
    const done = new Promise<void>((resolve) => {
      handle = group.open(p[0]!, (status) => {
        expect(status).toBe(0)
        sys.read(p[0]!, buf, 16)
        calls++
        if (calls === 1) throw new Error("boom")
        handle?.close()
        resolve()
      })
      expect(handle.start(UV_READABLE)).toBe(0)
    })
    sys.write(p[1]!, new Uint8Array([1]), 1)
    setTimeout(() => sys.write(p[1]!, new Uint8Array([2]), 1), 20)
    await done
    expect(calls).toBe(2)
    expect(errors).toHaveLength(1)
    expect(String(errors[0])).toContain("boom")
    expect(handle?.closed).toBe(true)
    group.dispose()
    // The close callback runs on a later loop iteration and releases the handle memory.
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(pendingCloses()).toBe(0)
    sys.close(p[0]!)
    sys.close(p[1]!)
    expect(openFds()).toEqual(before)
  })
})
