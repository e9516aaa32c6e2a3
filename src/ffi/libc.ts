/**
 * libc bindings through koffi (Linux, LP64). The only koffi-facing libc module.
 *
 * Convention (see `errno.ts`): every function in `sys` returns the call's result when it
 * succeeded and `-errno` when it failed; nothing here throws or allocates on the hot path.
 * Setup code turns negatives into `SyscallError` with `check`/`attempt` from `errno.ts`.
 *
 * Pointer arguments are `void *`: pass a Buffer/TypedArray (koffi passes its data address,
 * no copy), `null`, or a plain number address (user-space addresses fit in 2^53).
 * Pointer results (`mmap`) are declared `intptr_t`, so they come back as numbers and
 * MAP_FAILED is -1 (the same bits as 0xffffffffffffffff).
 *
 * Not here: struct layouts of msghdr/cmsg (built by `src/transport/socket.ts` over raw
 * buffers), libuv (`uv.ts`).
 */
import koffi from "koffi"

const lib = (() => {
  try {
    return koffi.load("libc.so.6")
  } catch {
    // Non-glibc systems: the node binary itself links libc.
    return koffi.load(null)
  }
})()

type Fn = (...args: Array<unknown>) => number

const fn = (decl: string): Fn => lib.func(decl) as unknown as Fn

const raw = {
  socket: fn("int socket(int domain, int type, int protocol)"),
  socketpair: fn("int socketpair(int domain, int type, int protocol, void *sv)"),
  bind: fn("int bind(int fd, const void *addr, uint32_t len)"),
  listen: fn("int listen(int fd, int backlog)"),
  accept4: fn("int accept4(int fd, void *addr, void *len, int flags)"),
  connect: fn("int connect(int fd, const void *addr, uint32_t len)"),
  sendmsg: fn("intptr_t sendmsg(int fd, const void *msg, int flags)"),
  recvmsg: fn("intptr_t recvmsg(int fd, void *msg, int flags)"),
  // The same calls taking the msghdr's address as a number: koffi then skips looking up a
  // typed array's backing store on every call (measured 0.2–0.5 µs per send+recv pair).
  sendmsgAt: fn("intptr_t sendmsg(int fd, intptr_t msg, int flags)"),
  recvmsgAt: fn("intptr_t recvmsg(int fd, intptr_t msg, int flags)"),
  sendto: fn("intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)"),
  getsockname: fn("int getsockname(int fd, void *addr, void *len)"),
  setsockopt: fn("int setsockopt(int fd, int level, int name, const void *value, uint32_t len)"),
  getsockopt: fn("int getsockopt(int fd, int level, int name, void *value, void *len)"),
  read: fn("intptr_t read(int fd, void *buf, size_t count)"),
  write: fn("intptr_t write(int fd, const void *buf, size_t count)"),
  close: fn("int close(int fd)"),
  shutdown: fn("int shutdown(int fd, int how)"),
  // Variadic in C; a fixed third integer argument is ABI-compatible on x86-64 and aarch64 Linux.
  fcntl: fn("int fcntl(int fd, int cmd, intptr_t arg)"),
  flock: fn("int flock(int fd, int op)"),
  open: fn("int open(const char *path, int flags, uint32_t mode)"),
  unlink: fn("int unlink(const char *path)"),
  chmod: fn("int chmod(const char *path, uint32_t mode)"),
  epoll_create1: fn("int epoll_create1(int flags)"),
  epoll_ctl: fn("int epoll_ctl(int epfd, int op, int fd, void *event)"),
  epoll_wait: fn("int epoll_wait(int epfd, void *events, int maxevents, int timeout)"),
  eventfd: fn("int eventfd(unsigned int initval, int flags)"),
  memfd_create: fn("int memfd_create(const char *name, unsigned int flags)"),
  mmap: fn("intptr_t mmap(intptr_t addr, size_t length, int prot, int flags, int fd, int64_t offset)"),
  munmap: fn("int munmap(intptr_t addr, size_t length)"),
  ftruncate: fn("int ftruncate(int fd, int64_t length)"),
  fstat: fn("int fstat(int fd, void *statbuf)"),
  lseek: fn("int64_t lseek(int fd, int64_t offset, int whence)"),
  pipe2: fn("int pipe2(void *fds, int flags)"),
  getpid: fn("int getpid(void)"),
  // Variadic in C (`...`); DRM and friends always pass one pointer.
  ioctl: fn("int ioctl(int fd, unsigned long request, void *arg)"),
  getrlimit: fn("int getrlimit(int resource, void *rlim)"),
  setrlimit: fn("int setrlimit(int resource, const void *rlim)")
}

/** A buffer this size holds struct stat on x86-64 (144 B) and aarch64 (128 B). */
export const STAT_SIZE = 144

/** errno of the last koffi call on this thread; read it right after the failing call. */
export const lastErrno = (): number => koffi.errno()

const ret = (r: number): number => (r < 0 ? -koffi.errno() : r)

export type Ptr = Uint8Array | Uint32Array | Int32Array | BigUint64Array | ArrayBufferView | number | null

/** Raw syscalls: result ≥ 0, or -errno. */
export const sys = {
  socket: (domain: number, type: number, protocol: number): number => ret(raw.socket(domain, type, protocol)),
  socketpair: (domain: number, type: number, protocol: number, sv: Int32Array): number =>
    ret(raw.socketpair(domain, type, protocol, sv)),
  bind: (fd: number, addr: Ptr, len: number): number => ret(raw.bind(fd, addr, len)),
  listen: (fd: number, backlog: number): number => ret(raw.listen(fd, backlog)),
  accept4: (fd: number, flags: number): number => ret(raw.accept4(fd, null, null, flags)),
  connect: (fd: number, addr: Ptr, len: number): number => ret(raw.connect(fd, addr, len)),
  sendmsg: (fd: number, msg: Ptr, flags: number): number => ret(raw.sendmsg(fd, msg, flags)),
  recvmsg: (fd: number, msg: Ptr, flags: number): number => ret(raw.recvmsg(fd, msg, flags)),
  /** `msg`: the address of a msghdr in memory the caller keeps alive and unmoved (off-heap ArrayBuffer). */
  sendmsgAt: (fd: number, msg: number, flags: number): number => ret(raw.sendmsgAt(fd, msg, flags)),
  recvmsgAt: (fd: number, msg: number, flags: number): number => ret(raw.recvmsgAt(fd, msg, flags)),
  sendto: (fd: number, buf: Ptr, len: number, flags: number, addr: Ptr, addrlen: number): number =>
    ret(raw.sendto(fd, buf, len, flags, addr, addrlen)),
  /** len: Uint32Array(1), in: the size of addr, out: the address's length. */
  getsockname: (fd: number, addr: Ptr, len: Uint32Array): number => ret(raw.getsockname(fd, addr, len)),
  setsockopt: (fd: number, level: number, name: number, value: Ptr, len: number): number =>
    ret(raw.setsockopt(fd, level, name, value, len)),
  getsockopt: (fd: number, level: number, name: number, value: Ptr, len: Uint32Array): number =>
    ret(raw.getsockopt(fd, level, name, value, len)),
  read: (fd: number, buf: Ptr, count: number): number => ret(raw.read(fd, buf, count)),
  write: (fd: number, buf: Ptr, count: number): number => ret(raw.write(fd, buf, count)),
  close: (fd: number): number => ret(raw.close(fd)),
  /** statbuf: STAT_SIZE bytes; st_dev (u64) at 0 and st_ino (u64) at 8 on both architectures. */
  fstat: (fd: number, statbuf: Ptr): number => ret(raw.fstat(fd, statbuf)),
  shutdown: (fd: number, how: number): number => ret(raw.shutdown(fd, how)),
  fcntl: (fd: number, cmd: number, arg = 0): number => ret(raw.fcntl(fd, cmd, arg)),
  flock: (fd: number, op: number): number => ret(raw.flock(fd, op)),
  open: (path: string, flags: number, mode = 0): number => ret(raw.open(path, flags, mode)),
  unlink: (path: string): number => ret(raw.unlink(path)),
  chmod: (path: string, mode: number): number => ret(raw.chmod(path, mode)),
  epoll_create1: (flags: number): number => ret(raw.epoll_create1(flags)),
  epoll_ctl: (epfd: number, op: number, fd: number, event: Ptr): number => ret(raw.epoll_ctl(epfd, op, fd, event)),
  epoll_wait: (epfd: number, events: Ptr, maxevents: number, timeout: number): number =>
    ret(raw.epoll_wait(epfd, events, maxevents, timeout)),
  eventfd: (initval: number, flags: number): number => ret(raw.eventfd(initval, flags)),
  memfd_create: (name: string, flags: number): number => ret(raw.memfd_create(name, flags)),
  /** Address as a number, or -errno (never MAP_FAILED: that is -1 and is turned into -errno). */
  mmap: (addr: number, length: number, prot: number, flags: number, fd: number, offset: number): number =>
    ret(raw.mmap(addr, length, prot, flags, fd, offset)),
  munmap: (addr: number, length: number): number => ret(raw.munmap(addr, length)),
  ftruncate: (fd: number, length: number): number => ret(raw.ftruncate(fd, length)),
  lseek: (fd: number, offset: number, whence: number): number => ret(raw.lseek(fd, offset, whence)),
  pipe2: (fds: Int32Array, flags: number): number => ret(raw.pipe2(fds, flags)),
  getpid: (): number => raw.getpid(),
  ioctl: (fd: number, request: number, arg: Ptr): number => ret(raw.ioctl(fd, request, arg)),
  /** rlim: BigUint64Array(2) = [cur, max]. */
  getrlimit: (resource: number, rlim: BigUint64Array): number => ret(raw.getrlimit(resource, rlim)),
  setrlimit: (resource: number, rlim: BigUint64Array): number => ret(raw.setrlimit(resource, rlim))
}

/** Address of a buffer's first byte (its view offset included), as a number. */
export const addressOf = (view: ArrayBufferView): number => Number(koffi.address(view))

/**
 * An ArrayBuffer over native memory (no copy, no finalizer: it does not own the memory).
 * Touching it after the memory is unmapped crashes the process.
 */
export const viewOf = (address: number, length: number): ArrayBuffer => koffi.view(address, length)

// Linux constants (x86-64 and aarch64 agree on all of these).
export const AF_UNIX = 1
export const SOCK_STREAM = 1
export const SOCK_DGRAM = 2
export const SOCK_NONBLOCK = 0o4000
export const SOCK_CLOEXEC = 0o2000000
export const SOL_SOCKET = 1
export const SO_TYPE = 3
export const SO_SNDBUF = 7
export const SO_RCVBUF = 8
export const SO_ACCEPTCONN = 30
export const SO_DOMAIN = 39
export const SCM_RIGHTS = 1
export const MSG_CTRUNC = 0x8
export const MSG_DONTWAIT = 0x40
export const MSG_NOSIGNAL = 0x4000
export const MSG_CMSG_CLOEXEC = 0x40000000
export const SHUT_RD = 0
export const SHUT_WR = 1
export const SHUT_RDWR = 2

export const O_RDONLY = 0
export const O_WRONLY = 1
export const O_RDWR = 2
export const O_CREAT = 0o100
export const O_EXCL = 0o200
export const O_NONBLOCK = 0o4000
export const O_CLOEXEC = 0o2000000

export const F_GETFD = 1
export const F_SETFD = 2
export const F_GETFL = 3
export const F_SETFL = 4
export const FD_CLOEXEC = 1
export const F_DUPFD_CLOEXEC = 1030
export const F_ADD_SEALS = 1033
export const F_GET_SEALS = 1034
export const F_SEAL_SEAL = 1
export const F_SEAL_SHRINK = 2
export const F_SEAL_GROW = 4
export const F_SEAL_WRITE = 8

export const LOCK_SH = 1
export const LOCK_EX = 2
export const LOCK_NB = 4
export const LOCK_UN = 8

export const EPOLL_CLOEXEC = 0o2000000
export const EPOLL_CTL_ADD = 1
export const EPOLL_CTL_DEL = 2
export const EPOLL_CTL_MOD = 3
/** struct epoll_event is packed (12 bytes, data at offset 4) only on x86-64. */
export const EPOLL_EVENT_SIZE = process.arch === "x64" ? 12 : 16
export const EPOLL_EVENT_DATA_OFFSET = process.arch === "x64" ? 4 : 8

export const EFD_CLOEXEC = 0o2000000
export const EFD_NONBLOCK = 0o4000
export const MFD_CLOEXEC = 1
export const MFD_ALLOW_SEALING = 2

export const PROT_READ = 1
export const PROT_WRITE = 2
export const MAP_SHARED = 1
export const MAP_PRIVATE = 2
export const MAP_POPULATE = 0x8000
/** (void *)-1 as the unsigned 64-bit value koffi would give for a `void *` result. */
export const MAP_FAILED = 0xffffffffffffffffn

export const SEEK_SET = 0
export const SEEK_END = 2

export const RLIMIT_NOFILE = 7
