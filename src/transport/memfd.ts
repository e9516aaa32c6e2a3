/**
 * memfd + shared mappings: anonymous files to pass as fds (tests, later shm pools) and
 * zero-copy views over them.
 *
 * One view per mapping (koffi.view's cost grows with size). The view does not own the memory:
 * touching it after `unmap()` crashes the process, so unmap only when no view can still be used
 * (the scoped variants unmap in the finalizer).
 *
 * Not here: buffer pools, sealing policy, DRM.
 */
import { Effect, Scope } from "effect"
import { SyscallError, syscallError, Errno } from "../ffi/errno.js"
import { sys, viewOf, MFD_CLOEXEC, MFD_ALLOW_SEALING, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_POPULATE } from "../ffi/libc.js"

/** memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING) + ftruncate. Throws SyscallError. */
export const memfdCreate = (name: string, size: number): number => {
  const fd = sys.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)
  if (fd < 0) throw syscallError("memfd_create", -fd, name)
  const r = sys.ftruncate(fd, size)
  if (r < 0) {
    sys.close(fd)
    throw syscallError("ftruncate", -r, name)
  }
  return fd
}

export interface SharedMapping {
  readonly address: number
  readonly size: number
  /** Invalid (and deadly to touch) after unmap(). */
  readonly view: Uint8Array
  /** Idempotent. */
  unmap(): void
}

export interface MapOptions {
  /** PROT_READ only. */
  readonly readOnly?: boolean
  /** MAP_POPULATE: pay the page faults now instead of on first touch. */
  readonly populate?: boolean
}

/** mmap(MAP_SHARED) of `fd`'s first `size` bytes. Throws SyscallError. */
export const mapShared = (fd: number, size: number, options?: MapOptions): SharedMapping => {
  if (!(size > 0)) throw syscallError("mmap", Errno.EINVAL, `size ${size}`)
  const prot = options?.readOnly === true ? PROT_READ : PROT_READ | PROT_WRITE
  const flags = MAP_SHARED | (options?.populate === true ? MAP_POPULATE : 0)
  const address = sys.mmap(0, size, prot, flags, fd, 0)
  if (address < 0) throw syscallError("mmap", -address, `fd ${fd}, ${size} bytes`)
  const view = new Uint8Array(viewOf(address, size))
  let mapped = true
  return {
    address,
    size,
    view,
    unmap: () => {
      if (!mapped) return
      mapped = false
      sys.munmap(address, size)
    }
  }
}

const trySync = <A>(f: () => A): Effect.Effect<A, SyscallError> =>
  Effect.try({
    try: f,
    catch: (e) => (e instanceof SyscallError ? e : syscallError("unknown", Errno.EINVAL, String(e)))
  })

/** Scoped memfd: closed when the scope closes. */
export const memfdCreateScoped = (name: string, size: number): Effect.Effect<number, SyscallError, Scope.Scope> =>
  Effect.acquireRelease(trySync(() => memfdCreate(name, size)), (fd) => Effect.sync(() => void sys.close(fd)))

/** Scoped mapping: unmapped when the scope closes. */
export const mapSharedScoped = (
  fd: number,
  size: number,
  options?: MapOptions
): Effect.Effect<SharedMapping, SyscallError, Scope.Scope> =>
  Effect.acquireRelease(trySync(() => mapShared(fd, size, options)), (m) => Effect.sync(() => m.unmap()))
