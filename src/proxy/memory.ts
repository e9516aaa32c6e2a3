/**
 * An in-memory `Endpoint`: input is fed by the caller, output is recorded. For benchmarks of the
 * data path without syscalls and for unit tests of one layer; never a stand-in for the real
 * transport in integration tests.
 */
import type { Endpoint } from "./connection.js"

export class MemoryEndpoint implements Endpoint {
  readonly fd = -1
  inBuf: Uint8Array = new Uint8Array(0)
  inStart = 0
  inEnd = 0
  readonly inFds: number[] = []
  /** Bytes written so far (kept only when `record` is true). */
  readonly chunks: Uint8Array[] = []
  readonly sentFds: number[] = []
  written = 0
  closed = false
  eof = false
  constructor(readonly record = false) {}
  fill(): "data" | "again" | "eof" {
    return this.eof ? "eof" : "data"
  }
  consume(n: number): void {
    this.inStart += n
  }
  write(data: Uint8Array, offset: number, length: number, fds: readonly number[]): "sent" | "queued" | "overflow" {
    this.written += length
    if (this.record) {
      this.chunks.push(data.slice(offset, offset + length))
      this.sentFds.push(...fds)
    }
    return "sent"
  }
  flush(): boolean {
    return true
  }
  readonly pendingBytes = 0
  close(): void {
    this.closed = true
  }
  /** Replaces the unread input with `buf` (unconsumed bytes are kept in front) and queues fds. */
  feed(buf: Uint8Array, fds: readonly number[] | number = []): void {
    if (this.inStart < this.inEnd) {
      const rest = this.inBuf.subarray(this.inStart, this.inEnd)
      const joined = new Uint8Array(rest.length + buf.length)
      joined.set(rest)
      joined.set(buf, rest.length)
      buf = joined
    }
    this.inBuf = buf
    this.inStart = 0
    this.inEnd = buf.length
    if (typeof fds === "number") for (let i = 0; i < fds; i++) this.inFds.push(1000 + i)
    else this.inFds.push(...fds)
  }
  /** Everything written, concatenated. */
  output(): Uint8Array {
    const out = new Uint8Array(this.chunks.reduce((n, c) => n + c.length, 0))
    let o = 0
    for (const c of this.chunks) {
      out.set(c, o)
      o += c.length
    }
    return out
  }
}
