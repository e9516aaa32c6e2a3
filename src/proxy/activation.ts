/**
 * systemd integration, without libsystemd: socket activation (the `sd_listen_fds` protocol:
 * `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, fds from 3) and readiness notification (the
 * `sd_notify` protocol: one datagram per state change to `NOTIFY_SOCKET`).
 *
 * It takes the socket systemd passed, checks that it is a listening AF_UNIX stream socket and
 * makes it non-blocking and close-on-exec; it does not accept on it (the listener does), does not
 * take the lock file and does not know the CLI.
 */
import { Data, Effect } from "effect"
import { describeErrno, Errno } from "../ffi/errno.js"
import {
  AF_UNIX,
  FD_CLOEXEC,
  F_GETFL,
  F_SETFD,
  F_SETFL,
  MSG_NOSIGNAL,
  O_NONBLOCK,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_STREAM,
  SOL_SOCKET,
  SO_ACCEPTCONN,
  SO_DOMAIN,
  SO_TYPE,
  sys
} from "../ffi/libc.js"

export class ActivationError extends Data.TaggedError("ActivationError")<{
  readonly reason: "Environment" | "NotSocket" | "WrongSocket" | "Name" | "Notify"
  readonly message: string
}> {}

/** The first passed fd (SD_LISTEN_FDS_START). */
export const LISTEN_FDS_START = 3

export interface ListenEnv {
  /** How many fds were passed, from fd 3 on. */
  readonly count: number
  /** `LISTEN_FDNAMES` split at ':', or null when unset. */
  readonly names: ReadonlyArray<string> | null
}

/**
 * What `LISTEN_*` say to process `pid`. null when they are not for it: unset, or `LISTEN_PID`
 * names another process (an ancestor was activated and leaked its environment).
 */
export const parseListenEnv = (env: NodeJS.ProcessEnv, pid: number): ListenEnv | null | ActivationError => {
  const pidText = env.LISTEN_PID
  const fdsText = env.LISTEN_FDS
  if (pidText === undefined || pidText === "" || fdsText === undefined) return null
  if (!/^[1-9][0-9]*$/.test(pidText)) return new ActivationError({ reason: "Environment", message: `LISTEN_PID=${pidText} is not a process id` })
  if (Number(pidText) !== pid) return null
  if (!/^[0-9]+$/.test(fdsText)) return new ActivationError({ reason: "Environment", message: `LISTEN_FDS=${fdsText} is not a count` })
  const count = Number(fdsText)
  const namesText = env.LISTEN_FDNAMES
  const names = namesText === undefined ? null : namesText.split(":")
  if (names !== null && names.length !== count) {
    return new ActivationError({ reason: "Environment", message: `LISTEN_FDNAMES names ${names.length} fds but LISTEN_FDS=${count}` })
  }
  return { count, names }
}

export interface ActivatedSocket {
  /** The listening socket, now non-blocking and close-on-exec; the caller owns it. */
  readonly fd: number
  /** Its `LISTEN_FDNAMES` entry, or null. */
  readonly name: string | null
  /** The path it is bound to (abstract names start with '@'), or null when unnamed. */
  readonly path: string | null
}

export interface TakeOptions {
  /**
   * Names accepted when `LISTEN_FDNAMES` is set (systemd names each fd after its socket unit,
   * e.g. `sommelier@wayland-0.socket`, unless `FileDescriptorName=` says otherwise). With several
   * fds the one with an accepted name is taken; without names exactly one fd must be passed.
   */
  readonly acceptNames?: ReadonlyArray<string>
  /** Default `process.env`; the `LISTEN_*` variables are removed from it. */
  readonly env?: NodeJS.ProcessEnv
  /** Default `process.pid`. */
  readonly pid?: number
}

/**
 * Takes the socket systemd passed, or returns null when the process was not socket-activated.
 * Like `sd_listen_fds(1)` it always removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from
 * the environment (children must not think the fds are theirs) and marks every passed fd
 * close-on-exec.
 */
export const takeActivatedSocket = (options: TakeOptions = {}): Effect.Effect<ActivatedSocket | null, ActivationError> =>
  Effect.suspend(() => {
    const env = options.env ?? process.env
    const parsed = parseListenEnv(env, options.pid ?? process.pid)
    delete env.LISTEN_PID
    delete env.LISTEN_FDS
    delete env.LISTEN_FDNAMES
    if (parsed === null) return Effect.succeed(null)
    if (parsed instanceof ActivationError) return Effect.fail(parsed)
    if (parsed.count === 0) return Effect.fail(new ActivationError({ reason: "Environment", message: "LISTEN_FDS=0: socket activation passed no socket" }))
    for (let i = 0; i < parsed.count; i++) sys.fcntl(LISTEN_FDS_START + i, F_SETFD, FD_CLOEXEC)

    let index = 0
    const accept = options.acceptNames ?? []
    if (parsed.names !== null && accept.length > 0) {
      index = parsed.names.findIndex((n) => accept.includes(n))
      if (index < 0) {
        return Effect.fail(
          new ActivationError({
            reason: "Name",
            message: `socket activation passed ${parsed.names.map((n) => JSON.stringify(n)).join(", ")}; expected one named ${accept.map((n) => JSON.stringify(n)).join(" or ")}`
          })
        )
      }
    } else if (parsed.count !== 1) {
      return Effect.fail(
        new ActivationError({ reason: "Environment", message: `socket activation passed ${parsed.count} fds without names to choose by; expected one listening socket` })
      )
    }
    const fd = LISTEN_FDS_START + index
    const bad = checkListeningStream(fd)
    if (bad !== null) return Effect.fail(bad)
    const fl = sys.fcntl(fd, F_GETFL)
    if (fl < 0 || sys.fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
      return Effect.fail(new ActivationError({ reason: "NotSocket", message: `cannot make the activated socket (fd ${fd}) non-blocking` }))
    }
    return Effect.succeed({ fd, name: parsed.names?.[index] ?? null, path: boundPath(fd) })
  })

const intOption = (fd: number, name: number): number => {
  const value = new Int32Array(1)
  const len = new Uint32Array([4])
  const r = sys.getsockopt(fd, SOL_SOCKET, name, value, len)
  return r < 0 ? r : value[0]!
}

/** null when `fd` is a listening AF_UNIX stream socket, else why not. */
export const checkListeningStream = (fd: number): ActivationError | null => {
  const domain = intOption(fd, SO_DOMAIN)
  if (domain === -Errno.ENOTSOCK || domain === -Errno.EBADF) {
    return new ActivationError({ reason: "NotSocket", message: `activated fd ${fd} is ${domain === -Errno.EBADF ? "not open" : "not a socket"}` })
  }
  const type = intOption(fd, SO_TYPE)
  const listening = intOption(fd, SO_ACCEPTCONN)
  if (domain !== AF_UNIX || type !== SOCK_STREAM) {
    return new ActivationError({
      reason: "WrongSocket",
      message: `activated fd ${fd} is not a Unix stream socket (domain ${domain}, type ${type}); use ListenStream= with a path in the .socket unit`
    })
  }
  if (listening !== 1) {
    return new ActivationError({ reason: "WrongSocket", message: `activated fd ${fd} is not listening (Accept=yes is not supported: use Accept=no)` })
  }
  return null
}

/** getsockname's sun_path: a path, '@name' for the abstract namespace, or null when unnamed. */
export const boundPath = (fd: number): string | null => {
  const addr = new Uint8Array(2 + 108)
  const len = new Uint32Array([addr.length])
  if (sys.getsockname(fd, addr, len) < 0 || len[0]! <= 2) return null
  const bytes = addr.subarray(2, Math.min(len[0]!, addr.length))
  if (bytes[0] === 0) return "@" + Buffer.from(bytes.subarray(1)).toString("utf8")
  const nul = bytes.indexOf(0)
  return Buffer.from(nul < 0 ? bytes : bytes.subarray(0, nul)).toString("utf8")
}

// ---------------------------------------------------------------------------------------------
// sd_notify

/** `sockaddr_un` for a `NOTIFY_SOCKET` value: a path, or '@name' in the abstract namespace. */
export const notifyAddress = (socket: string): { readonly addr: Uint8Array; readonly len: number } | ActivationError => {
  if (!socket.startsWith("/") && !socket.startsWith("@")) {
    return new ActivationError({ reason: "Notify", message: `NOTIFY_SOCKET=${socket}: only a path or an abstract @name is supported` })
  }
  const abstract = socket.startsWith("@")
  const bytes = Buffer.from(abstract ? socket.slice(1) : socket, "utf8")
  // Abstract names have no terminating NUL: the length says where they end.
  const pathLen = abstract ? 1 + bytes.length : bytes.length + 1
  if (pathLen > 108 || bytes.length === 0) return new ActivationError({ reason: "Notify", message: `NOTIFY_SOCKET=${socket}: not a usable socket address` })
  const addr = new Uint8Array(2 + 108)
  addr[0] = AF_UNIX
  addr.set(bytes, abstract ? 3 : 2)
  return { addr, len: 2 + (abstract ? 1 + bytes.length : bytes.length) }
}

export interface Notifier {
  /** The `NOTIFY_SOCKET` it sends to. */
  readonly socket: string
  /** Sends one state datagram, e.g. "READY=1" or "STOPPING=1". */
  readonly notify: (state: string) => Effect.Effect<void, ActivationError>
}

/**
 * The service manager's notification socket, or null when there is none. Like `sd_notify(1, …)`
 * the variable is removed from the environment, so that children do not talk for us.
 */
export const makeNotifier = (env: NodeJS.ProcessEnv = process.env): Notifier | null => {
  const socket = env.NOTIFY_SOCKET
  delete env.NOTIFY_SOCKET
  if (socket === undefined || socket === "") return null
  return { socket, notify: (state) => sendNotify(socket, state) }
}

/** One datagram to `socket` over a fresh AF_UNIX SOCK_DGRAM socket (what sd_notify does). */
export const sendNotify = (socket: string, state: string): Effect.Effect<void, ActivationError> =>
  Effect.suspend(() => {
    const sa = notifyAddress(socket)
    if (sa instanceof ActivationError) return Effect.fail(sa)
    const fd = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)
    if (fd < 0) return Effect.fail(new ActivationError({ reason: "Notify", message: `socket(AF_UNIX, SOCK_DGRAM) failed: ${describeErrno(-fd).message}` }))
    const msg = Buffer.from(state, "utf8")
    let r: number
    do r = sys.sendto(fd, msg, msg.length, MSG_NOSIGNAL, sa.addr, sa.len)
    while (r === -Errno.EINTR)
    sys.close(fd)
    if (r < 0) return Effect.fail(new ActivationError({ reason: "Notify", message: `sd_notify ${state} to ${socket} failed: ${describeErrno(-r).message}` }))
    return Effect.void
  })
