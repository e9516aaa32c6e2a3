import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { SyscallError } from "../../src/ffi/errno.js"
import { addressOf, F_GETFD, SEEK_END, sys } from "../../src/ffi/libc.js"
import { mapShared, mapSharedScoped, memfdCreate, memfdCreateScoped } from "../../src/transport/memfd.js"
import { expectNoFdLeak, withNoFdLeak } from "../helpers/fds.js"

describe("memfd", () => {
  it("creates a sized memfd; two mappings share pages; the view is zero-copy", () =>
    withNoFdLeak(() => {
      const fd = memfdCreate("shm-test", 65536)
      expect(sys.lseek(fd, 0, SEEK_END)).toBe(65536)
      const a = mapShared(fd, 65536)
      const b = mapShared(fd, 65536, { populate: true })
      expect(addressOf(a.view)).toBe(a.address)
      a.view[65535] = 0xab
      expect(b.view[65535]).toBe(0xab)
      // A write through the fd is visible in the mapping.
      expect(sys.lseek(fd, 100, 0)).toBe(100)
      expect(sys.write(fd, new Uint8Array([9, 8, 7]), 3)).toBe(3)
      expect(Array.from(a.view.subarray(100, 103))).toEqual([9, 8, 7])
      a.unmap()
      a.unmap()
      b.unmap()
      sys.close(fd)
    }))

  it("errors are SyscallErrors", () => {
    expect(() => mapShared(1_000_000, 4096)).toThrow(SyscallError)
    expect(() => mapShared(0, 0)).toThrow(SyscallError)
  })

  it.scoped("scoped variants close and unmap with the scope", () =>
    expectNoFdLeak(
      Effect.gen(function* () {
        const scope = yield* Scope.make()
        const fd = yield* Scope.extend(memfdCreateScoped("scoped", 4096), scope)
        const m = yield* Scope.extend(mapSharedScoped(fd, 4096, { readOnly: true }), scope)
        expect(m.view.length).toBe(4096)
        expect(m.view[0]).toBe(0)
        yield* Scope.close(scope, Exit.void)
        expect(sys.fcntl(fd, F_GETFD)).toBeLessThan(0)
      })
    )
  )
})
