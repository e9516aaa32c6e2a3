/**
 * Building `VirtGpuError`s: one place that turns (operation, errno) into a reason and a message
 * a user can act on. Shared by the kernel and emulated backends.
 */
import { describeErrno, Errno } from "../ffi/errno.js"
import { VirtGpuError } from "./device.js"

export type Reason = VirtGpuError["reason"]

/** `op` failed with `errno`; `detail` is appended. EACCES/EPERM ⇒ "Permission" unless told otherwise. */
export const virtGpuError = (op: string, errno: number, detail?: string, reason?: Reason): VirtGpuError => {
  const { code, message } = describeErrno(errno)
  const r: Reason = reason ?? (errno === Errno.EACCES || errno === Errno.EPERM ? "Permission" : "Ioctl")
  return new VirtGpuError({
    reason: r,
    op,
    errno,
    message: `${op}: ${message} (${code})${detail === undefined || detail === "" ? "" : `: ${detail}`}`
  })
}

/** Throw for a -errno result, return it otherwise (hot paths compare numbers first). */
export const orThrow = (op: string, result: number, detail?: string): number => {
  if (result < 0) throw virtGpuError(op, -result, detail)
  return result
}

export const closedError = (op: string, name: string): VirtGpuError =>
  new VirtGpuError({ reason: "Closed", op, errno: Errno.EBADF, message: `${op}: device ${name} is closed` })

/** Caps/context errors that mean "the host does not offer this", worded for the user. */
export const unsupportedCapset = (op: string, errno: number, capsetId: number, detail?: string): VirtGpuError =>
  virtGpuError(
    op,
    errno,
    `capset ${capsetId} is not offered by the VMM${detail === undefined ? "" : ` (${detail})`}; for cross-domain (5) start crosvm with --gpu context-types=cross-domain and --wayland-sock, or QEMU with -device virtio-gpu-rutabaga-pci,cross-domain=on,wayland-socket-path=…`,
    "Unsupported"
  )
