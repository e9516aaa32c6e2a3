/**
 * Runs one fuzz case in memory: a fresh `Connection` between two tracked in-memory endpoints,
 * the seed session's prefix replayed unchanged, then the case's steps, then the client's EOF.
 * Returns every broken invariant (empty = pass):
 *
 * - nothing throws;
 * - the connection ends once, with an expected reason; when it cuts the client for a reason
 *   (violation, limit, compositor gone) the last thing written to the client is a decodable
 *   `wl_display.error` naming an object the client knows — unless the client's own backlog is
 *   what overflowed;
 * - both output streams are well framed, and in local mode the requests forwarded to the
 *   compositor are byte for byte a prefix of what the client sent (ids map to themselves);
 * - every fd handed to the proxy is forwarded or closed exactly once, nothing else is closed,
 *   the compositor gets the client's fds in order;
 * - the case's oracle, if any (valid traffic survives; a bad header or unknown sender is cut
 *   with the code libwayland-server uses).
 *
 * fds are fake numbers: `setFdCloser` routes the proxy's closes to the tracker. Not for real
 * sockets (test/robustness/ does those).
 */
import { Connection, defaultDeniedGlobals, defaultLimits, setFdCloser, type ConnectionLimits, type Endpoint } from "../../src/proxy/connection.js"
import type { ConnectionEndReason } from "../../src/proxy/errors.js"
import { ObjectState } from "../../src/shadow/table.js"
import { decodeArgs, readU32 } from "../../src/wire/index.js"
import { registry, sessionByName, type Direction } from "./corpus.js"
import type { CaseSpec, Step } from "./mutate.js"

/** Ownership of the fake fds of one case. */
export class FdTracker {
  readonly state = new Map<number, "held" | "sent" | "closed">()
  readonly problems: string[] = []
  /** Request fds in the order the client sent them; event fds in the order the compositor did. */
  readonly fromClient: number[] = []
  readonly fromHost: number[] = []
  /** fds in the order they were sent to each side. */
  readonly sentTo = new Map<string, number[]>()
  private next = 10_000

  give(n: number, side: "client" | "host"): number[] {
    const out: number[] = []
    for (let i = 0; i < n; i++) {
      const fd = this.next++
      this.state.set(fd, "held")
      out.push(fd)
      if (side === "client") this.fromClient.push(fd)
      else this.fromHost.push(fd)
    }
    return out
  }

  private move(fd: number, to: "sent" | "closed", by: string): void {
    const s = this.state.get(fd)
    if (s === undefined) this.problems.push(`${by} fd ${fd}, which was never handed to the proxy`)
    else if (s !== "held") this.problems.push(`${by} fd ${fd}, already ${s}`)
    else this.state.set(fd, to)
  }

  sent(fds: readonly number[], to: string): void {
    let list = this.sentTo.get(to)
    if (list === undefined) this.sentTo.set(to, (list = []))
    for (const fd of fds) {
      this.move(fd, "sent", `sent to ${to}`)
      list.push(fd)
    }
  }

  close(fd: number): void {
    this.move(fd, "closed", "closed")
  }

  count(s: "held" | "sent" | "closed"): number {
    let n = 0
    for (const v of this.state.values()) if (v === s) n++
    return n
  }
}

let tracker = new FdTracker()
setFdCloser((fd) => tracker.close(fd))

/**
 * The data path's view of a socket, in memory, with the transport's ownership rules: it owns
 * received fds until shifted and written fds until sent, closes all of them on close, refuses
 * writes past `maxPending` (closing their fds, like `SocketEndpoint`), and throws on use after
 * close. A stalled endpoint queues every write until drained.
 */
export class TrackedEndpoint implements Endpoint {
  readonly fd = -1
  inBuf: Uint8Array = new Uint8Array(0)
  inStart = 0
  inEnd = 0
  readonly inFds: number[] = []
  eof = false
  /** The peer is gone: writes fail with EPIPE. */
  gone = false
  closed = false
  stalled = false
  /** Every batch accepted by write() (sent or queued), in order. */
  readonly writes: Uint8Array[] = []
  private queue: number[][] = []
  private queued = 0

  constructor(
    readonly name: string,
    private readonly maxPending: number
  ) {}

  get pendingBytes(): number {
    return this.queued
  }

  /** fds written but not yet delivered. */
  get queuedFds(): number {
    let n = 0
    for (const q of this.queue) n += q.length
    return n
  }

  fill(): "data" | "again" | "eof" {
    if (this.closed) throw new Error(`${this.name}: fill after close`)
    return this.eof ? "eof" : "data"
  }

  consume(n: number): void {
    if (n < 0 || this.inStart + n > this.inEnd) throw new RangeError(`${this.name}: consume(${n}) with ${this.inEnd - this.inStart} buffered`)
    this.inStart += n
  }

  write(data: Uint8Array, offset: number, length: number, fds: readonly number[]): "sent" | "queued" | "overflow" {
    if (this.closed) {
      for (const fd of fds) tracker.close(fd)
      throw new Error(`${this.name}: write after close`)
    }
    if (this.gone) {
      for (const fd of fds) tracker.close(fd)
      throw Object.assign(new Error(`${this.name}: sendmsg: Broken pipe`), { code: "EPIPE" })
    }
    if (this.queued + length > this.maxPending) {
      for (const fd of fds) tracker.close(fd)
      return "overflow"
    }
    this.writes.push(data.slice(offset, offset + length))
    if (this.stalled || this.queued > 0) {
      this.queue.push([...fds])
      this.queued += length
      return "queued"
    }
    tracker.sent(fds, this.name)
    return "sent"
  }

  flush(): boolean {
    if (this.closed) return this.queued === 0
    if (this.gone && this.queued > 0) throw Object.assign(new Error(`${this.name}: sendmsg: Broken pipe`), { code: "EPIPE" })
    if (this.stalled) return this.queued === 0
    for (const fds of this.queue) tracker.sent(fds, this.name)
    this.queue = []
    this.queued = 0
    return true
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    for (const fd of this.inFds.splice(0)) tracker.close(fd)
    for (const fds of this.queue) for (const fd of fds) tracker.close(fd)
    this.queue = []
    this.queued = 0
  }

  feed(buf: Uint8Array, fds: readonly number[]): void {
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
    this.inFds.push(...fds)
  }

  output(): Uint8Array {
    return concat(this.writes)
  }
}

const asBuffer = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength)

const prefixCache = new Map<string, ReadonlyArray<{ direction: Direction; bytes: Uint8Array; fds: number }>>()

/** A session's first `n` frames as batches of same-direction runs (cached: cases share them). */
const prefixBatches = (session: string, n: number): ReadonlyArray<{ direction: Direction; bytes: Uint8Array; fds: number }> => {
  const key = `${session}:${n}`
  let out = prefixCache.get(key)
  if (out === undefined) {
    const frames = sessionByName(session).frames.slice(0, n)
    const batches: Array<{ direction: Direction; bytes: Uint8Array; fds: number }> = []
    for (let i = 0; i < frames.length; ) {
      const direction = frames[i]!.direction
      let j = i
      let fds = 0
      while (j < frames.length && frames[j]!.direction === direction) fds += frames[j++]!.fds
      batches.push({ direction, bytes: concat(frames.slice(i, j).map((f) => f.bytes)), fds })
      i = j
    }
    prefixCache.set(key, (out = batches))
  }
  return out
}

const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

/** Frame boundaries of a stream the proxy wrote, or a description of where it is broken. */
const frameStarts = (b: Uint8Array): number[] | string => {
  const starts: number[] = []
  let o = 0
  while (o < b.length) {
    if (b.length - o < 8) return `${b.length - o} stray bytes at ${o}`
    const size = readU32(b, o + 4) >>> 16
    if (size < 8 || (size & 3) !== 0) return `frame of size ${size} at ${o}`
    if (o + size > b.length) return `frame of size ${size} at ${o} overruns the ${b.length}-byte stream`
    starts.push(o)
    o += size
  }
  return starts
}

export interface CaseResult {
  /** Why the connection ended (the final client EOF gives ClientClosed). */
  readonly end: ConnectionEndReason | null
  /** Whether it ended before the final EOF (i.e. the case cut it). */
  readonly cut: boolean
  readonly problems: ReadonlyArray<string>
  readonly fds: { readonly given: number; readonly sent: number; readonly closed: number }
}

const errorDesc = registry.get("wl_display")!.events[0]!

/** Runs one case; never throws (a throw is reported as a problem). */
export const runCase = (spec: CaseSpec): CaseResult => {
  tracker = new FdTracker()
  const t = tracker
  const problems: string[] = []
  const limits: ConnectionLimits = { ...defaultLimits, ...spec.limits }
  const maxFds = (limits as Partial<ConnectionLimits>).maxFdsInFlight ?? 1024
  const client = new TrackedEndpoint("client", limits.maxClientBacklog)
  const host = new TrackedEndpoint("host", limits.maxHostBacklog)
  client.stalled = spec.stall?.client === true
  host.stalled = spec.stall?.host === true
  const ends: ConnectionEndReason[] = []
  let conn: Connection | null = null
  let clientInput: Uint8Array[] = []
  let cut = false
  let expectCode: { tag: "ClientViolation" | "HostViolation"; code?: number; objectId?: number; why: string } | null = null

  const send = (direction: Direction, bytes: Uint8Array, fds: number, chunks: ReadonlyArray<number> | undefined): void => {
    const c = conn!
    const side = direction === "request" ? "client" : "host"
    const ep = direction === "request" ? client : host
    // A peer that is gone sends nothing more.
    if (ep.gone) return
    const given = t.give(fds, side)
    if (direction === "request") clientInput.push(bytes)
    const cuts = [...(chunks ?? []).filter((x) => x > 0 && x < bytes.length), bytes.length]
    let from = 0
    for (let i = 0; i < cuts.length; i++) {
      // The proxy stopped reading: the rest goes nowhere (the fds arrived with the first chunk).
      if (c.isEnded) return
      ep.feed(bytes.subarray(from, cuts[i]!), i === 0 ? given : [])
      from = cuts[i]!
      if (direction === "request") c.onClientReadable()
      else c.onHostReadable()
      // One client may not pin more of the process's fds than the limit allows.
      const inFlight = client.inFds.length + host.queuedFds + client.queuedFds
      if (!c.isEnded && inFlight > maxFds) problems.push(`a live client holds ${inFlight} fds in flight (limit ${maxFds})`)
    }
  }

  try {
    conn = new Connection(client, host, {
      id: 1,
      registry,
      deniedGlobals: defaultDeniedGlobals,
      limits,
      trace: null,
      onBatch: null,
      onEnd: (r) => ends.push(r)
    })
    // The prefix, unchanged, one batch per run of same-direction frames.
    for (const b of prefixBatches(spec.session, spec.prefix)) {
      if (conn.isEnded) break
      send(b.direction, b.bytes, b.fds, undefined)
    }
    const limited = spec.limits !== undefined || spec.stall !== undefined
    if (conn.isEnded && !limited) problems.push(`the unchanged prefix ended the connection: ${JSON.stringify(ends[0])}`)

    spec.steps.forEach((step: Step, index) => {
      const c = conn!
      if (c.isEnded) return
      if (index === 0 && step.kind === "data" && step.bytes.length >= 8) {
        const sender = readU32(step.bytes, 0)
        if (spec.oracle === "badHeader") {
          expectCode =
            step.direction === "request" ? { tag: "ClientViolation", code: 1, objectId: 1, why: "a request with a bad header" } : { tag: "HostViolation", why: "an event with a bad header" }
        } else if (spec.oracle === "unknownSender" && step.direction === "request") {
          const e = c.shadow.byClient(sender)
          if (e === undefined || e.state !== ObjectState.Live) expectCode = { tag: "ClientViolation", code: 0, objectId: 1, why: `a request from unknown object ${sender}` }
        }
      }
      switch (step.kind) {
        case "data":
          send(step.direction, step.bytes, step.fds, step.chunks)
          break
        case "eof":
          if (step.side === "client") {
            client.eof = true
            c.onClientReadable()
          } else {
            host.eof = true
            c.onHostReadable()
          }
          break
        case "vanish":
          if (step.side === "client") {
            client.eof = true
            client.gone = true
          } else {
            host.eof = true
            host.gone = true
          }
          break
        case "drain":
          if (step.side === "client") {
            client.stalled = false
            c.onClientWritable()
          } else {
            host.stalled = false
            c.onHostWritable()
          }
          break
      }
    })
    cut = conn.isEnded
    if (!conn.isEnded) {
      client.eof = true
      conn.onClientReadable()
      if (!conn.isEnded) problems.push("client EOF did not end the connection")
    }
  } catch (e) {
    problems.push(`threw: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`)
  }

  // --- invariants
  const end = ends[0] ?? null
  if (ends.length !== 1) problems.push(`onEnd called ${ends.length} times`)
  if (!client.closed || !host.closed) problems.push(`endpoints left open: client ${client.closed ? "closed" : "open"}, host ${host.closed ? "closed" : "open"}`)
  const vanished = spec.steps.some((s) => s.kind === "vanish")
  if (end !== null && !["ClientClosed", "HostClosed", "ClientViolation", "HostViolation", "Limit", ...(vanished ? ["IoError"] : [])].includes(end._tag)) {
    problems.push(`unexpected end ${JSON.stringify(end)}`)
  }
  if (spec.oracle === "survive" && spec.limits === undefined && spec.stall === undefined && cut) {
    problems.push(`valid traffic was cut: ${JSON.stringify(end)}`)
  }
  if (expectCode !== null && spec.limits === undefined && spec.stall === undefined) {
    const want = expectCode as { tag: string; code?: number; objectId?: number; why: string }
    if (end?._tag !== want.tag) problems.push(`${want.why} should end with ${want.tag}, got ${JSON.stringify(end)}`)
    else if (end._tag === "ClientViolation" && want.code !== undefined && (end.violation.code !== want.code || end.violation.objectId !== want.objectId)) {
      problems.push(`${want.why}: want code ${want.code} on object ${want.objectId}, got code ${end.violation.code} on ${end.violation.objectId}: ${end.violation.message}`)
    }
  }

  // Both streams the proxy wrote are well framed.
  const toClient = client.output()
  const toHost = host.output()
  const cf = frameStarts(toClient)
  const hf = frameStarts(toHost)
  if (typeof cf === "string") problems.push(`stream to the client is broken: ${cf}`)
  if (typeof hf === "string") problems.push(`stream to the compositor is broken: ${hf}`)

  // Local mode maps ids to themselves: forwarded requests are exactly what the client sent.
  const sentByClient = concat(clientInput)
  if (toHost.length > sentByClient.length || Buffer.compare(asBuffer(toHost), asBuffer(sentByClient.subarray(0, toHost.length))) !== 0) {
    problems.push("requests forwarded to the compositor differ from what the client sent")
  }
  clientInput = []

  // The client is told why it was cut.
  const told =
    end !== null &&
    (end._tag === "ClientViolation" ||
      end._tag === "HostViolation" ||
      (end._tag === "Limit" && end.limit !== "client backlog") ||
      (end._tag === "HostClosed" && !hostSentErrorFrame(toClient, cf)))
  // A client that does not read cannot be told: its queue, the error behind it, is dropped at close.
  if (told && !client.stalled && !client.gone && typeof cf !== "string") {
    const last = cf[cf.length - 1]
    const frame = last === undefined ? undefined : toClient.subarray(last)
    if (frame === undefined || readU32(frame, 0) !== 1 || (readU32(frame, 4) & 0xffff) !== 0) {
      problems.push(`ended with ${end!._tag} but the last frame to the client is not wl_display.error`)
    } else {
      const r = decodeArgs(errorDesc, 1, frame, 8, frame.length - 8, [])
      if (r._tag !== "Ok") problems.push(`wl_display.error does not decode: ${r.error.message}`)
      else {
        const obj = r.args[0] as number
        if (obj !== 1 && conn?.shadow.byClient(obj) === undefined) problems.push(`wl_display.error names object ${obj}, which the client does not know`)
        if (end!._tag === "ClientViolation" && (obj !== end.violation.objectId || r.args[1] !== end.violation.code)) {
          problems.push(`wl_display.error (${obj}, ${r.args[1]}) differs from the violation (${end.violation.objectId}, ${end.violation.code})`)
        }
      }
    }
  }

  // fds: each forwarded or closed exactly once; the compositor got the client's in order.
  problems.push(...t.problems)
  const held = [...t.state].filter(([, s]) => s === "held").map(([fd]) => fd)
  if (held.length > 0) problems.push(`fds neither forwarded nor closed: ${held.join(", ")}`)
  const toHostFds = t.sentTo.get("host") ?? []
  if (toHostFds.some((fd, i) => fd !== t.fromClient[i])) {
    problems.push(`the compositor got fds ${toHostFds.join(",")}, not a prefix of the client's ${t.fromClient.join(",")}`)
  }
  // Events may be dropped with their fds (zombies), never reordered.
  let h = 0
  for (const fd of t.sentTo.get("client") ?? []) {
    while (h < t.fromHost.length && t.fromHost[h] !== fd) h++
    if (h++ >= t.fromHost.length) {
      problems.push(`the client got fds ${(t.sentTo.get("client") ?? []).join(",")}, out of the compositor's order ${t.fromHost.join(",")}`)
      break
    }
  }
  return { end, cut, problems, fds: { given: t.state.size, sent: t.count("sent"), closed: t.count("closed") } }
}

/** True when the compositor's own wl_display.error reached the client (then the proxy adds none). */
const hostSentErrorFrame = (b: Uint8Array, starts: number[] | string): boolean =>
  typeof starts !== "string" && starts.some((o) => readU32(b, o) === 1 && (readU32(b, o + 4) & 0xffff) === 0)
