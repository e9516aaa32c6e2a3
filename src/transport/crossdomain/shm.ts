/**
 * wl_shm in cross-domain mode: a guest pool's fd is a guest memfd, which cannot cross (spec §2
 * step 12), so the proxy keeps the pool and backs each `wl_buffer` made from it with host memory,
 * copying pixels at `wl_surface.commit` (sommelier's shm path).
 *
 * - `wl_shm.create_pool(id, fd, size)`: the proxy maps the fd read-only and keeps it; the pool
 *   becomes a proxy-side-only object (host id freed: the host never hears of it). `resize`
 *   remaps; `destroy` is answered by the proxy itself (`delete_id` to the client), the mapping
 *   lives on while buffers use it.
 * - `wl_shm_pool.create_buffer(id, offset, w, h, stride, format)`: GET_IMAGE_REQUIREMENTS (cached
 *   per size and format) → HOST3D blob (MAPPABLE|SHAREABLE), mapped once for its lifetime and
 *   exported as an fd; the host gets `wl_shm.create_pool(P, blob fd, size)`,
 *   `P.create_buffer(B, offset, w, h, host stride, format)`, `P.destroy()` on a proxy-owned pool
 *   P, and the client's buffer id maps to B, so `wl_buffer.release` reaches the client as usual.
 * - Formats: 0/1 (always supported, wayland.xml) and whatever the host announced with
 *   `wl_shm.format`, limited to the packed formats this module knows the pixel size of (the
 *   others' `format` events are not forwarded); anything else is a `wl_shm.error` naming the
 *   request.
 * - Copies: per surface, the pending `damage` (surface coordinates, converted through scale,
 *   transform and viewport by damage.ts) and `damage_buffer` become a region of the committed
 *   buffer. Every other buffer seen on that surface accumulates the same region (a client that
 *   reuses buffers repairs them with the damage of the frames it skipped, so the blob must too);
 *   a buffer new to a surface, or after a geometry change, is copied whole. At commit the
 *   committed buffer's accumulated region is copied row span by row span (damage.ts) and
 *   cleared. Counted in `ConnectionStats.copiedBytes` / `copyCommits`.
 *
 * A pool sealed with F_SEAL_SHRINK is read through the proxy's mapping. Any other pool is read
 * from its file with preadv: a client that shrinks the file under the proxy (even during a copy)
 * then gets a short read and a `wl_shm.error.invalid_fd`, where a read through the mapping would
 * fault with SIGBUS and kill the proxy with all its clients.
 *
 * Needs mapped shadow ids (`ctx.mappedIds`); without them it installs nothing and the fd check
 * refuses wl_shm pools. Not here: the fd check itself (hooks.ts), the device (channel.ts).
 */
import { F_GET_SEALS, F_SEAL_SHRINK, SEEK_END, sys } from "../../ffi/libc.js"
import type { Connection, HookMessage, HookResult, OutMessage } from "../../proxy/connection.js"
import type { ConnectionEndReason } from "../../proxy/errors.js"
import type { MessageDesc } from "../../protocol/types.js"
import { ObjectState, type ObjectEntry } from "../../shadow/table.js"
import { BLOB_FLAG_USE_MAPPABLE, BLOB_FLAG_USE_SHAREABLE, BLOB_MEM_HOST3D } from "../../virtgpu/device.js"
import { encodeMessage } from "../../wire/index.js"
import { mapShared, type SharedMapping } from "../memfd.js"
import type { CrossDomainChannel } from "./channel.js"
import { readvSync } from "node:fs"
import { bufferRectToBuffer, copyRegion, readRegion, Region, surfaceRectToBuffer, type BufferGeometry, type CopyCounts, type Plane, type ReadvAt, type Viewport } from "./damage.js"
import type { HookContext, HookModule, HookTable } from "./module.js"

// wl_shm.error (wayland.xml)
export const SHM_ERROR_INVALID_FORMAT = 0
export const SHM_ERROR_INVALID_STRIDE = 1
export const SHM_ERROR_INVALID_FD = 2

const fourcc = (s: string): number => (s.charCodeAt(0) | (s.charCodeAt(1) << 8) | (s.charCodeAt(2) << 16) | (s.charCodeAt(3) << 24)) >>> 0

export const SHM_FORMAT_ARGB8888 = 0
export const SHM_FORMAT_XRGB8888 = 1

/** Packed single-plane formats by bytes per pixel (DRM fourcc = wl_shm code except 0 and 1). */
const packedFormats: ReadonlyArray<readonly [number, readonly string[]]> = [
  [1, ["C8  ", "R8  ", "RGB8", "BGR8"]],
  [
    2,
    ["XR12", "XB12", "RX12", "BX12", "AR12", "AB12", "RA12", "BA12", "XR15", "XB15", "RX15", "BX15", "AR15", "AB15", "RA15", "BA15", "RG16", "BG16", "R16 ", "RG88", "GR88"]
  ],
  [3, ["RG24", "BG24"]],
  [4, ["XR24", "XB24", "RX24", "BX24", "AR24", "AB24", "RA24", "BA24", "XR30", "XB30", "RX30", "BX30", "AR30", "AB30", "RA30", "BA30", "RG32", "GR32"]],
  [8, ["XR4H", "XB4H", "AR4H", "AB4H", "XR48", "XB48", "AR48", "AB48"]]
]
const bppByFourcc = new Map<number, number>(packedFormats.flatMap(([bpp, names]) => names.map((n) => [fourcc(n), bpp] as const)))

/** Bytes per pixel of a packed single-plane DRM format, or null. */
export const drmFormatBpp = (drm: number): number | null => bppByFourcc.get(drm >>> 0) ?? null

/** A wl_shm format's DRM fourcc and bytes per pixel, or null when the copy path cannot lay it out. */
export const shmFormatInfo = (format: number): { readonly drm: number; readonly bpp: number } | null => {
  const drm = format === SHM_FORMAT_ARGB8888 ? fourcc("AR24") : format === SHM_FORMAT_XRGB8888 ? fourcc("XR24") : format >>> 0
  const bpp = bppByFourcc.get(drm)
  return bpp === undefined ? null : { drm, bpp }
}

// -------------------------------------------------------------------------------------------------
// Host memory

/** Host-visible memory for one image, mapped in the proxy for its whole life. */
export interface HostImage {
  /** Where plane 0 starts in the blob, and its row pitch (the host's, not the guest's). */
  readonly offset: number
  readonly stride: number
  /** DRM format modifier of the host's layout (linear for the system allocator). */
  readonly modifier: bigint
  /** Blob size in bytes (the size of the host's wl_shm_pool). */
  readonly size: number
  /** The proxy's one mapping of the blob; dead after `release`. */
  readonly view: Uint8Array
  /** A new fd of the blob for the host (the caller owns it). */
  exportFd(): number
  /** Unmaps and drops the proxy's handle; idempotent. */
  release(): void
}

export interface ImageAllocator {
  /** Throws an Error whose message says why the host cannot provide it. */
  allocate(width: number, height: number, drmFormat: number): HostImage
}

/** Requirements kept per connection (the host keeps every requirements item it answered). */
const MAX_CACHED_REQUIREMENTS = 256

/** Images from the cross-domain device: GET_IMAGE_REQUIREMENTS (cached) → HOST3D blob → map. */
export const channelAllocator = (channel: CrossDomainChannel): ImageAllocator => {
  const cache = new Map<string, ReturnType<CrossDomainChannel["imageRequirements"]>>()
  return {
    allocate: (width, height, drmFormat) => {
      const key = `${width}x${height}:${drmFormat}`
      let reqs = cache.get(key)
      if (reqs === undefined) {
        reqs = channel.imageRequirements(width, height, drmFormat)
        if (cache.size >= MAX_CACHED_REQUIREMENTS) cache.clear()
        cache.set(key, reqs)
      }
      const size = Number(reqs.size)
      const dev = channel.device
      const blob = dev.createBlob({ blobMem: BLOB_MEM_HOST3D, blobFlags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE, size, blobId: BigInt(reqs.blobId) })
      let map
      try {
        map = dev.map(blob.handle, size)
      } catch (e) {
        dev.gemClose(blob.handle)
        throw e
      }
      let live = true
      return {
        offset: reqs.offsets[0],
        stride: reqs.strides[0],
        modifier: reqs.modifier,
        size,
        view: map.view,
        exportFd: () => dev.primeHandleToFd(blob.handle),
        release: () => {
          if (!live) return
          live = false
          map.unmap()
          try {
            dev.gemClose(blob.handle)
          } catch {
            // The device may be closed already: it released the handle with itself.
          }
        }
      }
    }
  }
}

// -------------------------------------------------------------------------------------------------
// Buffers the proxy copies, and the surfaces that show them (shared by every source of pixels)

/** Where a copied buffer's pixels come from: a guest shm pool, or a mapped guest dma-buf. */
export interface PixelSource {
  /**
   * When present, copies `region` into `dst` itself (instead of `begin`/`end` and a copy from
   * memory): bytes copied, or why it could not (the client is then told).
   */
  readonly copyInto?: (dst: Plane, bpp: number, region: Region, counts: CopyCounts) => number | string
  /** The pixels to read now, or why they cannot be read (the client is then told). */
  begin(): Plane | string
  /** After the copy (unmaps what `begin` mapped). */
  end(): void
  /** The buffer is gone. */
  release(): void
}

/** A guest wl_buffer backed on the host by `image`, filled from `source` at commit. */
export class CopyBuffer {
  /** Buffer pixels that differ from the host image (all of them until the first copy). */
  readonly dirty: Region
  /** The surface whose damage this buffer follows. */
  surface: SurfaceState | null = null
  constructor(
    readonly entry: ObjectEntry,
    readonly width: number,
    readonly height: number,
    readonly bpp: number,
    readonly image: HostImage,
    readonly source: PixelSource
  ) {
    this.dirty = new Region(width, height)
    this.dirty.setFull()
  }
}

type Rect4 = readonly [number, number, number, number]

const sameSrc = (a: Rect4 | null, b: Rect4 | null): boolean =>
  a === b || (a !== null && b !== null && a[0] === b[0] && a[1] === b[1] && a[2] === b[2] && a[3] === b[3])
const sameDst = (a: readonly [number, number] | null, b: readonly [number, number] | null): boolean =>
  a === b || (a !== null && b !== null && a[0] === b[0] && a[1] === b[1])

class SurfaceState {
  /** undefined: no attach since the last commit; null: a buffer the proxy does not copy (or none). */
  pendingBuffer: CopyBuffer | null | undefined = undefined
  buffer: CopyBuffer | null = null
  /** x, y, w, h per pending `damage` (surface) and `damage_buffer` (buffer) request. */
  readonly damage: number[] = []
  readonly bufferDamage: number[] = []
  scale = 1
  transform = 0
  src: Rect4 | null = null
  dst: readonly [number, number] | null = null
  pendingScale: number | undefined = undefined
  pendingTransform: number | undefined = undefined
  pendingSrc: Rect4 | null | undefined = undefined
  pendingDst: readonly [number, number] | null | undefined = undefined
  /** Buffers committed on this surface and still alive: each accumulates the surface's damage. */
  readonly known = new Set<CopyBuffer>()

  geometry(b: CopyBuffer): BufferGeometry {
    const viewport: Viewport | null = this.src === null && this.dst === null ? null : { src: this.src, dst: this.dst }
    return { width: b.width, height: b.height, scale: this.scale, transform: this.transform, viewport }
  }

  /** Applies pending scale, transform and viewport; true when any of them changed. */
  applyGeometry(): boolean {
    let changed = false
    if (this.pendingScale !== undefined) {
      changed ||= this.pendingScale !== this.scale
      this.scale = this.pendingScale
      this.pendingScale = undefined
    }
    if (this.pendingTransform !== undefined) {
      changed ||= this.pendingTransform !== this.transform
      this.transform = this.pendingTransform
      this.pendingTransform = undefined
    }
    if (this.pendingSrc !== undefined) {
      changed ||= !sameSrc(this.pendingSrc, this.src)
      this.src = this.pendingSrc
      this.pendingSrc = undefined
    }
    if (this.pendingDst !== undefined) {
      changed ||= !sameDst(this.pendingDst, this.dst)
      this.dst = this.pendingDst
      this.pendingDst = undefined
    }
    return changed
  }
}

/** What commits copied, for tests and diagnostics (the connection's stats sum the bytes). */
export interface ShmCopyCounts extends CopyCounts {
  /** Commits that copied anything. */
  commits: number
  /** Copies of a whole buffer (new buffer, geometry change, full damage). */
  fullCopies: number
}

/** One connection's copied buffers; shared by the modules that create them (shm, dma-buf). */
export interface CopyState {
  readonly counts: ShmCopyCounts
  readonly buffers: ReadonlyMap<ObjectEntry, CopyBuffer>
  /** A new copied buffer (its client's wl_buffer entry, final host id). */
  add(b: CopyBuffer): void
  /** Releases everything (connection end); idempotent. */
  release(): void
}

const copyStates = new WeakMap<HookTable, CopyState>()

/**
 * The copy state of the connection whose hooks go into `into`: made, and the wl_surface,
 * wp_viewport and wl_buffer.destroy hooks installed, by the first module that asks.
 */
export const copyState = (ctx: HookContext, into: HookTable): CopyState => {
  const existing = copyStates.get(into)
  if (existing !== undefined) return existing
  const reg = ctx.registry
  const req = (i: string, n: string): MessageDesc | undefined => reg.get(i)?.requests.find((m) => m.name === n)
  const buffers = new Map<ObjectEntry, CopyBuffer>()
  const surfaces = new Map<ObjectEntry, SurfaceState>()
  const viewports = new Map<ObjectEntry, SurfaceState>()
  const counts: ShmCopyCounts = { bytes: 0, rows: 0, commits: 0, fullCopies: 0 }
  let released = false
  const violation = (code: number, message: string): HookResult => ({ _tag: "Violation", code, message })
  const surfaceOf = (e: ObjectEntry): SurfaceState => {
    let s = surfaces.get(e)
    if (s === undefined) {
      s = new SurfaceState()
      surfaces.set(e, s)
    }
    return s
  }
  const drop = (b: CopyBuffer): void => {
    buffers.delete(b.entry)
    b.image.release()
    b.source.release()
    const s = b.surface
    if (s !== null) {
      s.known.delete(b)
      if (s.buffer === b) s.buffer = null
      if (s.pendingBuffer === b) s.pendingBuffer = null
    }
  }
  const state: CopyState = {
    counts,
    buffers,
    add: (b) => void buffers.set(b.entry, b),
    release: () => {
      if (released) return
      released = true
      for (const b of buffers.values()) {
        b.image.release()
        b.source.release()
      }
      buffers.clear()
      surfaces.clear()
      viewports.clear()
    }
  }
  copyStates.set(into, state)
  ctx.onClose?.(state.release)

  const bufferDestroy = req("wl_buffer", "destroy")
  if (bufferDestroy !== undefined) {
    into.requests.set(bufferDestroy, (m): HookResult => {
      const b = buffers.get(m.entry)
      if (b !== undefined) drop(b)
      return { _tag: "Forward" }
    })
  }

  // wl_surface: double-buffered state the copy needs.
  const on = (name: string, f: (s: SurfaceState, m: HookMessage) => HookResult | void): void => {
    const d = req("wl_surface", name)
    if (d === undefined) return
    into.requests.set(d, (m) => f(surfaceOf(m.entry), m) ?? { _tag: "Forward" })
  }
  on("attach", (s, m) => {
    const id = m.args[0] as number
    if (id === 0) s.pendingBuffer = null
    else {
      const e = m.connection.shadow.byHost(id)
      s.pendingBuffer = (e === undefined ? undefined : buffers.get(e)) ?? null
    }
  })
  on("damage", (s, m) => {
    const a = m.args as number[]
    s.damage.push(a[0]!, a[1]!, a[2]!, a[3]!)
    if (s.damage.length > 4 * 64) collapse(s.damage)
  })
  on("damage_buffer", (s, m) => {
    const a = m.args as number[]
    s.bufferDamage.push(a[0]!, a[1]!, a[2]!, a[3]!)
    if (s.bufferDamage.length > 4 * 64) collapse(s.bufferDamage)
  })
  on("set_buffer_scale", (s, m) => {
    s.pendingScale = m.args[0] as number
  })
  on("set_buffer_transform", (s, m) => {
    s.pendingTransform = m.args[0] as number
  })
  on("destroy", (s, m) => {
    for (const b of s.known) if (b.surface === s) b.surface = null
    surfaces.delete(m.entry)
  })
  on("commit", (s, m) => {
    const changed = s.applyGeometry()
    if (s.pendingBuffer !== undefined) {
      s.buffer = s.pendingBuffer
      s.pendingBuffer = undefined
    }
    const c = s.buffer
    const hadDamage = s.damage.length > 0 || s.bufferDamage.length > 0
    if (c === null) {
      // Content the proxy does not copy is showing: what the other buffers hold is unknown.
      if (hadDamage || changed) for (const k of s.known) k.dirty.setFull()
      s.damage.length = 0
      s.bufferDamage.length = 0
      return
    }
    if (c.surface !== s) {
      if (c.surface !== null) c.surface.known.delete(c)
      c.surface = s
      s.known.add(c)
      c.dirty.setFull()
    }
    const d = new Region(c.width, c.height)
    if (changed) d.setFull()
    else {
      const g = s.geometry(c)
      const sd = s.damage
      for (let i = 0; i < sd.length; i += 4) surfaceRectToBuffer(g, sd[i]!, sd[i + 1]!, sd[i + 2]!, sd[i + 3]!, d)
      const bd = s.bufferDamage
      for (let i = 0; i < bd.length; i += 4) bufferRectToBuffer(bd[i]!, bd[i + 1]!, bd[i + 2]!, bd[i + 3]!, d)
    }
    s.damage.length = 0
    s.bufferDamage.length = 0
    if (!d.isEmpty) {
      for (const k of s.known) {
        if (k === c) continue
        if (k.width === c.width && k.height === c.height) k.dirty.addRegion(d)
        else k.dirty.setFull()
      }
      c.dirty.addRegion(d)
    }
    if (c.dirty.isEmpty) return
    const dst: Plane = { view: c.image.view, offset: c.image.offset, stride: c.image.stride }
    let bytes: number | string
    if (c.source.copyInto !== undefined) {
      if (c.dirty.full) counts.fullCopies++
      bytes = c.source.copyInto(dst, c.bpp, c.dirty, counts)
    } else {
      const src = c.source.begin()
      if (typeof src === "string") return violation(SHM_ERROR_INVALID_FD, src)
      try {
        if (c.dirty.full) counts.fullCopies++
        bytes = copyRegion(src, dst, c.bpp, c.dirty, counts)
      } finally {
        c.source.end()
      }
    }
    if (typeof bytes === "string") return violation(SHM_ERROR_INVALID_FD, bytes)
    c.dirty.clear()
    counts.commits++
    const stats = m.connection.stats
    stats.copiedBytes += bytes
    stats.copyCommits++
  })

  // wp_viewporter / wp_viewport: crop and scale, double-buffered on the surface.
  const getViewport = req("wp_viewporter", "get_viewport")
  const setSource = req("wp_viewport", "set_source")
  const setDestination = req("wp_viewport", "set_destination")
  const viewportDestroy = req("wp_viewport", "destroy")
  if (getViewport !== undefined && setSource !== undefined && setDestination !== undefined && viewportDestroy !== undefined) {
    into.requests.set(getViewport, (m): HookResult => {
      const shadow = m.connection.shadow
      const vp = shadow.byHost(m.args[0] as number)
      const surface = shadow.byHost(m.args[1] as number)
      if (vp !== undefined && surface !== undefined) viewports.set(vp, surfaceOf(surface))
      return { _tag: "Forward" }
    })
    into.requests.set(setSource, (m): HookResult => {
      const s = viewports.get(m.entry)
      if (s !== undefined) {
        const [x, y, w, h] = m.args as [number, number, number, number]
        s.pendingSrc = x === -1 && y === -1 && w === -1 && h === -1 ? null : [x, y, w, h]
      }
      return { _tag: "Forward" }
    })
    into.requests.set(setDestination, (m): HookResult => {
      const s = viewports.get(m.entry)
      if (s !== undefined) {
        const [w, h] = m.args as [number, number]
        s.pendingDst = w === -1 && h === -1 ? null : [w, h]
      }
      return { _tag: "Forward" }
    })
    into.requests.set(viewportDestroy, (m): HookResult => {
      const s = viewports.get(m.entry)
      if (s !== undefined) {
        viewports.delete(m.entry)
        s.pendingSrc = null
        s.pendingDst = null
      }
      return { _tag: "Forward" }
    })
  }
  return state
}

// -------------------------------------------------------------------------------------------------
// wl_shm

class GuestPool {
  buffers = 0
  destroyed = false
  constructor(
    /** -1 once released. */
    public fd: number,
    public mapping: SharedMapping,
    public size: number,
    /** The client's wl_shm it came from (its host object makes the host pools). */
    readonly shm: ObjectEntry,
    /** F_SEAL_SHRINK: the file cannot get smaller than the mapping. */
    readonly sealed: boolean,
    /** The connection's set of mapped pools; the pool leaves it when released. */
    readonly owner: Set<GuestPool>
  ) {
    owner.add(this)
  }

  /** Unmaps and closes once the client destroyed it and no buffer uses it; idempotent. */
  releaseIfUnused(): void {
    if (!this.destroyed || this.buffers > 0 || this.fd < 0) return
    this.mapping.unmap()
    sys.close(this.fd)
    this.fd = -1
    this.owner.delete(this)
  }
}

/**
 * A buffer's pixels in a guest pool: `offset + y × stride + x × bpp`. A pool sealed against
 * shrinking is copied from the proxy's mapping; any other pool is read from its file with preadv
 * (`readRegion`), so a client that shrinks the file, even while a copy runs, gets a short read
 * and an error instead of killing the proxy with SIGBUS.
 */
const poolSource = (pool: GuestPool, offset: number, width: number, height: number, stride: number, bpp: number, clientId: () => number): PixelSource => {
  const end = offset + (height - 1) * stride + width * bpp
  let live = true
  const truncated = (): string => {
    const fileSize = sys.lseek(pool.fd, 0, SEEK_END)
    return `the wl_shm pool of wl_buffer@${clientId()} was truncated to ${fileSize} bytes (the buffer ends at ${end})`
  }
  const readv: ReadvAt = (buffers, position) => readvSync(pool.fd, buffers, position)
  return {
    ...(pool.sealed
      ? {}
      : {
          copyInto: (dst: Plane, px: number, region: Region, counts: CopyCounts): number | string => {
            let n: number
            try {
              n = readRegion(readv, offset, stride, dst, px, region, counts)
            } catch (e) {
              return `reading the wl_shm pool of wl_buffer@${clientId()} failed: ${describe(e)}`
            }
            return n < 0 ? truncated() : n
          }
        }),
    // Sealed pools only (the others copy with copyInto): the mapping cannot outgrow the file.
    begin: () => ({ view: pool.mapping.view, offset, stride }),
    end: () => {},
    release: () => {
      if (!live) return
      live = false
      pool.buffers--
      pool.releaseIfUnused()
    }
  }
}

export interface ShmState {
  readonly counts: ShmCopyCounts
  /** Guest pools still mapped (a destroyed pool stays until its buffers go). */
  readonly pools: () => number
  /** Copied buffers alive. */
  readonly buffers: () => number
  /** Releases everything (connection end). */
  readonly release: () => void
}

export interface ShmOptions {
  /** Where host images come from; default: the hook context's channel. */
  readonly allocator?: ImageAllocator
  /** Receives the module's state when it is installed (tests). */
  readonly onState?: (state: ShmState) => void
}

const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/** The shm copy path as a hook module (see the module comment). */
export const shmCopy = (options: ShmOptions = {}): HookModule => ({
  name: "shm-copy",
  install: (ctx, into) => {
    if (!ctx.mappedIds) return
    const reg = ctx.registry
    const req = (i: string, n: string): MessageDesc | undefined => reg.get(i)?.requests.find((m) => m.name === n)
    const ev = (i: string, n: string): MessageDesc | undefined => reg.get(i)?.events.find((m) => m.name === n)
    const shmPoolIface = reg.get("wl_shm_pool")
    const bufferIface = reg.get("wl_buffer")
    const createPool = req("wl_shm", "create_pool")
    const createBuffer = req("wl_shm_pool", "create_buffer")
    const poolDestroy = req("wl_shm_pool", "destroy")
    const poolResize = req("wl_shm_pool", "resize")
    const deleteId = ev("wl_display", "delete_id")
    if (shmPoolIface === undefined || bufferIface === undefined || createPool === undefined || createBuffer === undefined || poolDestroy === undefined || poolResize === undefined || deleteId === undefined) {
      ctx.warn("protocol tables lack wl_shm: the shm copy path is off")
      return
    }
    const copies = copyState(ctx, into)
    let allocator = options.allocator ?? null
    const alloc = (): ImageAllocator => (allocator ??= channelAllocator(ctx.channel))

    const pools = new Map<ObjectEntry, GuestPool>()
    /** Every pool still mapped, including destroyed ones buffers still read. */
    const mapped = new Set<GuestPool>()
    /** Formats the host announced (plus the two every compositor must support). */
    const formats = new Set<number>([SHM_FORMAT_ARGB8888, SHM_FORMAT_XRGB8888])
    /** The client's live wl_shm objects (a pool's own may be released before its buffers are made). */
    const shms = new Set<ObjectEntry>()
    const violation = (code: number, message: string): HookResult => ({ _tag: "Violation", code, message })
    const release = (): void => {
      copies.release()
      for (const p of [...mapped]) {
        p.destroyed = true
        p.buffers = 0
        p.releaseIfUnused()
      }
      pools.clear()
    }
    // After the copy state's own release (registered first, run later: releases run in reverse).
    ctx.onClose?.(release)
    options.onState?.({ counts: copies.counts, pools: () => mapped.size, buffers: () => copies.buffers.size, release })

    /**
     * The client learns its id is free; the proxy answered the destructor itself. A client that
     * destroys its pool and exits at once (foot does) has closed its socket by now: that is the
     * client going away, not a protocol error, so the connection ends as such — never a throw,
     * which the connection would report as this request's violation. The end waits for the
     * batch being walked to finish (a microtask: it runs as soon as the reactor callback
     * returns), since ending the connection closes the buffers that batch is read from.
     */
    const sendDeleteId = (conn: Connection, clientId: number): void => {
      const frame = encodeMessage(1, deleteId, [clientId], [])
      let reason: ConnectionEndReason | null = null
      try {
        if (conn.client.write(frame, 0, frame.length, []) === "overflow")
          reason = { _tag: "Limit", limit: "client backlog", message: "client does not read: its backlog is full (wl_display.delete_id of a wl_shm_pool)" }
      } catch (e) {
        const code = (e as { code?: unknown }).code
        reason = code === "EPIPE" || code === "ECONNRESET" ? { _tag: "ClientClosed" } : { _tag: "IoError", message: `client write failed: ${describe(e)}` }
      }
      if (reason !== null) {
        const r = reason
        queueMicrotask(() => conn.end(r))
      }
    }

    // wl_shm.create_pool(id, fd, size)
    into.requests.set(createPool, (m): HookResult => {
      const [id, fd, size] = m.args as [number, number, number]
      const shadow = m.connection.shadow
      shms.add(m.entry)
      if (!(size > 0)) {
        sys.close(fd)
        return violation(SHM_ERROR_INVALID_STRIDE, `invalid size (${size})`)
      }
      let mapping: SharedMapping
      try {
        mapping = mapShared(fd, size, { readOnly: true })
      } catch (e) {
        sys.close(fd)
        return violation(SHM_ERROR_INVALID_FD, `failed mmap fd ${fd}: ${describe(e)}`)
      }
      const seals = sys.fcntl(fd, F_GET_SEALS)
      const e = shadow.byHost(id)!
      // The host never hears of this pool: free its host id, keep the client's.
      shadow.deleteId(e.hostId)
      const entry: ObjectEntry = { clientId: e.clientId, hostId: 0, iface: e.iface, version: e.version, state: ObjectState.Live }
      shadow.insert(entry)
      pools.set(entry, new GuestPool(fd, mapping, size, m.entry, seals >= 0 && (seals & F_SEAL_SHRINK) !== 0, mapped))
      return { _tag: "Drop" }
    })

    // wl_shm_pool.resize(size): only growing is allowed (libwayland-server's rule).
    into.requests.set(poolResize, (m): HookResult => {
      const pool = pools.get(m.entry)
      if (pool === undefined) return violation(SHM_ERROR_INVALID_FD, "not a pool of this proxy")
      const size = m.args[0] as number
      if (size < pool.size) return violation(SHM_ERROR_INVALID_STRIDE, `shrinking pool invalid (${pool.size} → ${size})`)
      if (size === pool.size) return { _tag: "Drop" }
      let mapping: SharedMapping
      try {
        mapping = mapShared(pool.fd, size, { readOnly: true })
      } catch (e) {
        return violation(SHM_ERROR_INVALID_FD, `failed mremap to ${size} bytes: ${describe(e)}`)
      }
      pool.mapping.unmap()
      pool.mapping = mapping
      pool.size = size
      return { _tag: "Drop" }
    })

    // wl_shm_pool.destroy: the proxy's own object; buffers keep the memory alive.
    into.requests.set(poolDestroy, (m): HookResult => {
      const pool = pools.get(m.entry)
      if (pool !== undefined) {
        pools.delete(m.entry)
        pool.destroyed = true
        pool.releaseIfUnused()
      }
      m.connection.shadow.forget(m.entry)
      sendDeleteId(m.connection, m.entry.clientId)
      return { _tag: "Drop" }
    })

    // wl_shm_pool.create_buffer(id, offset, width, height, stride, format)
    into.requests.set(createBuffer, (m): HookResult => {
      const pool = pools.get(m.entry)
      if (pool === undefined) return violation(SHM_ERROR_INVALID_FD, "not a pool of this proxy")
      const [id, offset, width, height, stride, format] = m.args as [number, number, number, number, number, number]
      const info = shmFormatInfo(format)
      if (!formats.has(format) || info === null) {
        return violation(
          SHM_ERROR_INVALID_FORMAT,
          info === null
            ? `format 0x${(format >>> 0).toString(16)} cannot be copied in cross-domain mode (unknown pixel size)`
            : `unsupported format 0x${(format >>> 0).toString(16)}: the host compositor did not announce it`
        )
      }
      // wl_shm_pool_create_buffer's checks, plus a stride that holds a row of this format.
      if (offset < 0 || width <= 0 || height <= 0 || stride < width * info.bpp || 0x7fffffff / stride <= height || offset > pool.size - stride * height) {
        return violation(SHM_ERROR_INVALID_STRIDE, `invalid width, height or stride (${width}x${height}, ${stride})`)
      }
      const shm = pool.shm.state === ObjectState.Live && shms.has(pool.shm) ? pool.shm : [...shms].find((s) => s.state === ObjectState.Live)
      if (shm === undefined) return violation(SHM_ERROR_INVALID_FD, "every wl_shm was released: cross-domain mode needs one to create the host's buffer")
      let image: HostImage
      try {
        image = alloc().allocate(width, height, info.drm)
      } catch (e) {
        return violation(SHM_ERROR_INVALID_FORMAT, `no host memory for a ${width}x${height} buffer: ${describe(e)}`)
      }
      if (image.stride < width * info.bpp || image.offset + image.stride * height > image.size) {
        image.release()
        return violation(SHM_ERROR_INVALID_STRIDE, `the host's layout (stride ${image.stride}, ${image.size} bytes) does not hold a ${width}x${height} buffer`)
      }
      let fd: number
      try {
        fd = image.exportFd()
      } catch (e) {
        image.release()
        return violation(SHM_ERROR_INVALID_FD, `cannot export the host buffer: ${describe(e)}`)
      }
      // libwayland-server takes a new client id only if it is at most one past its highest:
      // the pool must get the lower host id, so the buffer's id is taken back and reissued.
      const shadow = m.connection.shadow
      const made = shadow.byHost(id)!
      shadow.deleteId(made.hostId)
      const hostPool = shadow.allocateHostOnly(shmPoolIface, m.entry.version)
      const entry = shadow.createByClient(made.clientId, bufferIface, made.version)
      if (typeof entry === "string") throw new Error(`wl_buffer ${made.clientId}: ${entry}`)
      pool.buffers++
      copies.add(new CopyBuffer(entry, width, height, info.bpp, image, poolSource(pool, offset, width, height, stride, info.bpp, () => entry.clientId)))
      const out: OutMessage[] = [
        { objectId: shm.hostId, desc: createPool, args: [hostPool.hostId, fd, image.size] },
        { objectId: hostPool.hostId, desc: createBuffer, args: [entry.hostId, image.offset, width, height, image.stride, format] },
        { objectId: hostPool.hostId, desc: poolDestroy, args: [] }
      ]
      shadow.destroyedByRequest(hostPool)
      return { _tag: "Replace", messages: out }
    })

    const shmRelease = req("wl_shm", "release")
    if (shmRelease !== undefined) {
      into.requests.set(shmRelease, (m): HookResult => {
        shms.delete(m.entry)
        return { _tag: "Forward" }
      })
    }
    const format = ev("wl_shm", "format")
    if (format !== undefined) {
      into.events.set(format, (m): HookResult => {
        shms.add(m.entry)
        const f = (m.args[0] as number) >>> 0
        // A format the copy cannot lay out (planar YUV and the like) is not offered at all.
        if (shmFormatInfo(f) === null) return { _tag: "Drop" }
        formats.add(f)
        return { _tag: "Forward" }
      })
    }
  }
})

/** Replaces a long list of x, y, w, h rectangles by their bounding box (never less damage). */
const collapse = (r: number[]): void => {
  let x0 = Infinity
  let y0 = Infinity
  let x1 = -Infinity
  let y1 = -Infinity
  for (let i = 0; i < r.length; i += 4) {
    if (!(r[i + 2]! > 0 && r[i + 3]! > 0)) continue
    x0 = Math.min(x0, r[i]!)
    y0 = Math.min(y0, r[i + 1]!)
    x1 = Math.max(x1, r[i]! + r[i + 2]!)
    y1 = Math.max(y1, r[i + 1]! + r[i + 3]!)
  }
  r.length = 0
  if (x0 < x1 && y0 < y1) r.push(x0, y0, x1 - x0, y1 - y0)
}
