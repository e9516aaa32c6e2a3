/**
 * `CrossDomainEndpoint`: the connection's host side in cross-domain mode, over a
 * `CrossDomainChannel`. It has the shape of the socket endpoint (connection.ts `Endpoint`):
 * `fd` is the device's event fd (the reactor watches it for EPOLLIN instead of a socket);
 * `fill()` consumes the signalled fences, appending RECEIVE bytes to `inBuf` and their fds to
 * `inFds`; `write()` submits SENDs synchronously, so nothing is ever pending and EPOLLOUT is never
 * needed on this side; `settle()`, called by the connection after the events were forwarded,
 * re-arms the channel's POLL.
 *
 * Not here: Wayland-level translation of fds (hooks.ts), the device and ring protocol (channel.ts).
 */
import type { ConnectionEndReason } from "../../proxy/errors.js"
import { ProtocolViolation } from "../../proxy/errors.js"
import type { Endpoint } from "../../proxy/connection.js"
import { FdQueue, TransportError } from "../socket.js"
import { CrossDomainChannel, CrossDomainError } from "./channel.js"

const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))

export class CrossDomainEndpoint implements Endpoint {
  readonly fd: number
  /** Unconsumed RECEIVE bytes are `inBuf[inStart, inEnd)`; re-read after `fill()` (it grows on demand: one RECEIVE carries at most 3744 bytes). */
  inBuf: Uint8Array = new Uint8Array(8 * 1024)
  inStart = 0
  inEnd = 0
  readonly inFds = new FdQueue()
  readonly pendingBytes = 0
  /**
   * Set by whoever owns the connection: called when a write fails (the device failed, or an fd
   * no hook checked cannot cross). `write` then answers "overflow" so the connection stops.
   */
  onFatal: ((reason: ConnectionEndReason) => void) | null = null
  #closed = false
  readonly #append = (data: Uint8Array, fds: readonly number[]): void => {
    this.#makeRoom(data.length)
    this.inBuf.set(data, this.inEnd)
    this.inEnd += data.length
    for (const fd of fds) this.inFds.push(fd)
  }

  constructor(readonly channel: CrossDomainChannel) {
    this.fd = channel.eventFd
  }

  get closed(): boolean {
    return this.#closed
  }

  /** "data": RECEIVE bytes arrived; "again": nothing (or only pipe traffic); "eof": the compositor hung up. */
  fill(): "data" | "again" | "eof" {
    if (this.#closed) throw new TransportError({ reason: "Closed", message: "fill on a closed endpoint" })
    return this.channel.pump(this.#append)
  }

  #makeRoom(n: number): void {
    if (this.inStart === this.inEnd) this.inStart = this.inEnd = 0
    if (this.inBuf.length - this.inEnd >= n) return
    const pending = this.inEnd - this.inStart
    if (this.inStart > 0 && this.inBuf.length - pending >= n) {
      this.inBuf.copyWithin(0, this.inStart, this.inEnd)
    } else {
      let size = this.inBuf.length * 2
      while (size - pending < n) size *= 2
      const next = new Uint8Array(size)
      next.set(this.inBuf.subarray(this.inStart, this.inEnd))
      this.inBuf = next
    }
    this.inStart = 0
    this.inEnd = pending
  }

  consume(n: number): void {
    const next = this.inStart + n
    if (n < 0 || next > this.inEnd) throw new RangeError(`consume(${n}) with ${this.inEnd - this.inStart} bytes buffered`)
    if (next === this.inEnd) this.inStart = this.inEnd = 0
    else this.inStart = next
  }

  write(data: Uint8Array, offset: number, length: number, fds: readonly number[]): "sent" | "queued" | "overflow" {
    try {
      this.channel.send(data, offset, length, fds)
      return "sent"
    } catch (e) {
      const reason: ConnectionEndReason =
        e instanceof CrossDomainError && e.reason === "CannotCross"
          ? {
              _tag: "ClientViolation",
              violation: new ProtocolViolation({ objectId: 1, interface: "wl_display", code: 3, message: `sommelier: ${e.message}` })
            }
          : { _tag: "IoError", message: `cross-domain send failed: ${describe(e)}` }
      this.onFatal?.(reason)
      return "overflow"
    }
  }

  /**
   * The connection handled what `fill()` delivered: re-arm the channel's POLL, letting requests
   * already waiting (`readPending`) carry it (channel.ts, "settle"). Throws like `fill()`.
   */
  settle(readPending: () => void): void {
    if (this.#closed) return
    this.channel.settle(readPending)
  }

  flush(): boolean {
    return true
  }

  /** Idempotent: closes the channel (pipes, rings) and every received fd not yet taken. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.channel.close()
    this.inFds.closeAll()
    this.inStart = this.inEnd = 0
  }
}
