/**
 * errno → `SyscallError`: the one place that names and describes Linux error numbers.
 *
 * Convention used by every binding in `src/ffi/`: a raw call returns its result when it
 * succeeded and `-errno` when it failed (the kernel's own convention), so hot paths compare
 * numbers and never allocate. Setup paths turn a negative result into a `SyscallError`
 * with `check` (throws) or `attempt` (Effect failure).
 *
 * Does not import koffi; reading errno after a call is `libc.ts`'s job.
 */
import { Data, Effect } from "effect"

export class SyscallError extends Data.TaggedError("SyscallError")<{
  readonly syscall: string
  readonly errno: number
  /** Symbolic name, e.g. "EAGAIN" (EWOULDBLOCK is the same number on Linux). */
  readonly code: string
  readonly message: string
}> {}

/** Linux (asm-generic) errno values used by name in this project. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  ENOEXEC: 8,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EMLINK: 31,
  EPIPE: 32,
  ERANGE: 34,
  EDEADLK: 35,
  ENAMETOOLONG: 36,
  ENOLCK: 37,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  ETIME: 62,
  EPROTO: 71,
  EOVERFLOW: 75,
  EBADFD: 77,
  ENOTSOCK: 88,
  EDESTADDRREQ: 89,
  EMSGSIZE: 90,
  EPROTOTYPE: 91,
  ENOPROTOOPT: 92,
  EPROTONOSUPPORT: 93,
  EOPNOTSUPP: 95,
  EAFNOSUPPORT: 97,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ENETDOWN: 100,
  ENETUNREACH: 101,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOBUFS: 105,
  EISCONN: 106,
  ENOTCONN: 107,
  ESHUTDOWN: 108,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EHOSTUNREACH: 113,
  EALREADY: 114,
  EINPROGRESS: 115,
  ECANCELED: 125,
  EOWNERDEAD: 130
} as const

/** Same number as EAGAIN on Linux; kept for readability at call sites (flock, accept). */
export const EWOULDBLOCK = Errno.EAGAIN

const messages: Record<number, string> = {
  1: "Operation not permitted",
  2: "No such file or directory",
  3: "No such process",
  4: "Interrupted system call",
  5: "Input/output error",
  6: "No such device or address",
  7: "Argument list too long",
  8: "Exec format error",
  9: "Bad file descriptor",
  10: "No child processes",
  11: "Resource temporarily unavailable",
  12: "Cannot allocate memory",
  13: "Permission denied",
  14: "Bad address",
  16: "Device or resource busy",
  17: "File exists",
  18: "Invalid cross-device link",
  19: "No such device",
  20: "Not a directory",
  21: "Is a directory",
  22: "Invalid argument",
  23: "Too many open files in system",
  24: "Too many open files",
  25: "Inappropriate ioctl for device",
  26: "Text file busy",
  27: "File too large",
  28: "No space left on device",
  29: "Illegal seek",
  30: "Read-only file system",
  31: "Too many links",
  32: "Broken pipe",
  34: "Numerical result out of range",
  35: "Resource deadlock avoided",
  36: "File name too long",
  37: "No locks available",
  38: "Function not implemented",
  39: "Directory not empty",
  40: "Too many levels of symbolic links",
  61: "No data available",
  62: "Timer expired",
  71: "Protocol error",
  75: "Value too large for defined data type",
  77: "File descriptor in bad state",
  88: "Socket operation on non-socket",
  89: "Destination address required",
  90: "Message too long",
  91: "Protocol wrong type for socket",
  92: "Protocol not available",
  93: "Protocol not supported",
  95: "Operation not supported",
  97: "Address family not supported by protocol",
  98: "Address already in use",
  99: "Cannot assign requested address",
  100: "Network is down",
  101: "Network is unreachable",
  103: "Software caused connection abort",
  104: "Connection reset by peer",
  105: "No buffer space available",
  106: "Transport endpoint is already connected",
  107: "Transport endpoint is not connected",
  108: "Cannot send after transport endpoint shutdown",
  110: "Connection timed out",
  111: "Connection refused",
  113: "No route to host",
  114: "Operation already in progress",
  115: "Operation now in progress",
  125: "Operation canceled",
  130: "Owner died"
}

const names: Record<number, string> = Object.fromEntries(
  Object.entries(Errno).map(([name, value]) => [value, name])
)

/** The one errno mapping: number → symbolic code and strerror-style text. */
export const describeErrno = (errno: number): { readonly code: string; readonly message: string } => ({
  code: names[errno] ?? `E#${errno}`,
  message: messages[errno] ?? `Unknown error ${errno}`
})

/** Build a `SyscallError`; `detail` (e.g. a path) is appended to the message. */
export const syscallError = (syscall: string, errno: number, detail?: string): SyscallError => {
  const { code, message } = describeErrno(errno)
  return new SyscallError({
    syscall,
    errno,
    code,
    message: `${syscall}: ${message} (${code})${detail === undefined ? "" : `: ${detail}`}`
  })
}

/** Throw a `SyscallError` when `result` is `-errno`; otherwise return it. */
export const check = (syscall: string, result: number, detail?: string): number => {
  if (result < 0) throw syscallError(syscall, -result, detail)
  return result
}

/** Effect form of `check` for setup paths: the thunk runs a raw binding. */
export const attempt = (
  syscall: string,
  call: () => number,
  detail?: string
): Effect.Effect<number, SyscallError> =>
  Effect.suspend(() => {
    const result = call()
    return result < 0 ? Effect.fail(syscallError(syscall, -result, detail)) : Effect.succeed(result)
  })
