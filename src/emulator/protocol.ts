/**
 * The wire protocol between the guest-side emulated backend (src/virtgpu/emulated.ts) and the
 * `sommelier emulate-host` process: one Unix SOCK_SEQPACKET connection per opened device file
 * (= one DRM file = one context), one datagram per request and one per reply, synchronous like an
 * ioctl — except EXECBUFFER, which is one-way (a VMM processes the virtqueue asynchronously too):
 * the guest does not wait, and requests are still handled in the order they were sent. Fence
 * events do not use the socket: OPEN's reply carries an eventfd that the emulator increments once
 * per `drm_event{FENCE_SIGNALED, 8}` it would queue, so the guest polls it the way it polls a DRM fd.
 *
 * An EXECBUFFER the emulator refuses (what the guest kernel would have refused in the ioctl, and
 * the guest side did not catch) fails the device file for good: the emulator logs it, drops every
 * later EXECBUFFER of that file, sends an EXECBUFFER_FAILED notice (a reply-shaped datagram with op
 * EXECBUFFER, which never gets a normal reply) and adds `EVENT_ERROR_MARK` to the eventfd, so the
 * guest learns of it on its next wake-up (the counter is ≥ the mark) or its next request.
 * When the emulator shuts down it does the same with a SHUTDOWN notice (status -ESHUTDOWN, op
 * SHUTDOWN, nothing after) to every open file, so idle guests learn of it at once too.
 *
 * Request: op u32 @0, reserved u32 @4, arguments @8 (little-endian, per op below).
 * Reply:   status i32 @0 (0 or -errno), op u32 @4, results @8; fds as SCM_RIGHTS.
 *
 * | op | request @8… | reply @8… | fds |
 * |---|---|---|---|
 * | OPEN 1 | version u32 | version u32 | reply: eventfd |
 * | VERSION 2 | – | major, minor, patch i32; name/date/desc lengths u32; the three strings | |
 * | GET_PARAM 3 | param u64 | value i32 | |
 * | GET_CAPS 4 | id, version, size u32 | caps bytes (size) | |
 * | CONTEXT_INIT 5 | count u32, pad, {param u64, value u64}[count] | – | |
 * | CREATE_BLOB 6 | mem, flags u32, size u64, blob_id u64 | handle, res_id u32 | |
 * | MAP 7 | handle u32 | size u64 | reply: the blob's memfd |
 * | EXECBUFFER 8 | flags, ring_idx, num_bo, size u32, bo u32[num_bo], command | none; on failure a notice: status -errno, seq, flags, ring_idx u32 | |
 * | WAIT 9 | handle, flags u32 | – (deferred until idle, EBUSY after 15 s) | |
 * | RESOURCE_INFO 10 | handle u32 | res_id, size, blob_mem u32 | |
 * | PRIME_HANDLE_TO_FD 11 | handle, flags u32 | – | reply: the blob's memfd |
 * | PRIME_FD_TO_HANDLE 12 | – | handle u32 | request: the fd |
 * | GEM_CLOSE 13 | handle u32 | – | |
 * | DEBUG_READ 0x100 | res_id, offset, length u32 | the host's view of those bytes | |
 * | DEBUG_STATE 0x101 | – | JSON (UTF-8) of the emulator's state | |
 * | DEBUG_FAIL_SUBMISSION 0x102 | errno u32 | – (this file's next EXECBUFFER is refused with it) | |
 * | SHUTDOWN 0x200 | (never sent by the guest) | a notice: status -ESHUTDOWN | |
 */

export const PROTOCOL_VERSION = 3

export const Op = {
  OPEN: 1,
  VERSION: 2,
  GET_PARAM: 3,
  GET_CAPS: 4,
  CONTEXT_INIT: 5,
  CREATE_BLOB: 6,
  MAP: 7,
  EXECBUFFER: 8,
  WAIT: 9,
  RESOURCE_INFO: 10,
  PRIME_HANDLE_TO_FD: 11,
  PRIME_FD_TO_HANDLE: 12,
  GEM_CLOSE: 13,
  DEBUG_READ: 0x100,
  DEBUG_STATE: 0x101,
  DEBUG_FAIL_SUBMISSION: 0x102,
  SHUTDOWN: 0x200
} as const

export type OpCode = (typeof Op)[keyof typeof Op]

/** Names used in error messages (the ioctl each op stands for). */
export const opName: Record<number, string> = {
  [Op.OPEN]: "open",
  [Op.VERSION]: "DRM_IOCTL_VERSION",
  [Op.GET_PARAM]: "VIRTGPU_GETPARAM",
  [Op.GET_CAPS]: "VIRTGPU_GET_CAPS",
  [Op.CONTEXT_INIT]: "VIRTGPU_CONTEXT_INIT",
  [Op.CREATE_BLOB]: "VIRTGPU_RESOURCE_CREATE_BLOB",
  [Op.MAP]: "VIRTGPU_MAP",
  [Op.EXECBUFFER]: "VIRTGPU_EXECBUFFER",
  [Op.WAIT]: "VIRTGPU_WAIT",
  [Op.RESOURCE_INFO]: "VIRTGPU_RESOURCE_INFO",
  [Op.PRIME_HANDLE_TO_FD]: "PRIME_HANDLE_TO_FD",
  [Op.PRIME_FD_TO_HANDLE]: "PRIME_FD_TO_HANDLE",
  [Op.GEM_CLOSE]: "GEM_CLOSE",
  [Op.DEBUG_READ]: "DEBUG_READ",
  [Op.DEBUG_STATE]: "DEBUG_STATE",
  [Op.DEBUG_FAIL_SUBMISSION]: "DEBUG_FAIL_SUBMISSION",
  [Op.SHUTDOWN]: "SHUTDOWN"
}

export const HEADER_SIZE = 8
/** Largest request (an EXECBUFFER with its command bytes and handles). */
export const MAX_REQUEST = 128 * 1024
/** Largest reply (DEBUG_READ / DEBUG_STATE payloads are capped to fit). */
export const MAX_REPLY = 128 * 1024
export const EXECBUFFER_FIXED = HEADER_SIZE + 16

/** Added to a file's eventfd with an EXECBUFFER_FAILED notice; fence events never reach it. */
export const EVENT_ERROR_MARK = 2n ** 32n
/** EXECBUFFER_FAILED notice: -errno @0, op EXECBUFFER @4, then the failed submission's 1-based sequence number, flags, ring. */
export const NOTICE_SIZE = HEADER_SIZE + 12
