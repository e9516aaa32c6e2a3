/**
 * Damage for the cross-domain shm copy: which pixels of a guest `wl_buffer` must be copied into
 * its host blob. Pure code over numbers and typed arrays; no I/O, no Wayland messages.
 *
 * - `Region`: a set of integer rectangles clipped to one buffer, or "everything". Past
 *   `MAX_RECTS` rectangles it collapses into their bounding box: never less than the union.
 * - `surfaceRectToBuffer`: `wl_surface.damage` (surface coordinates) into buffer pixels, through
 *   the chain wayland.xml and viewporter.xml define (buffer → surface: buffer_transform, then
 *   buffer_scale, then the viewport's crop and scale), inverted. All eight transforms are exact
 *   (libweston's `weston_transformed_coord`); a fractional viewport scale is rounded outwards.
 *   Anything that cannot be converted (bad scale or transform, empty viewport) damages the whole
 *   buffer.
 * - `bands` + `copyRegion`: the region as row bands of merged x-spans, copied row by row from the
 *   guest pool (guest stride) into the blob (host stride); a full-width band whose strides match
 *   is one contiguous copy.
 * - `readRegion`: the same copy with the source read from a file by positioned vectored reads
 *   instead of a mapping: a file that shrank gives a short read, where reading a mapping past the
 *   end of its file raises SIGBUS (the whole process dies). The bytes between two rows' spans go
 *   into a scratch buffer, so one call reads up to 512 rows.
 *
 * Not here: which buffer a surface shows or when a copy happens (shm.ts); the reads themselves
 * (the caller passes them in).
 */

/** Rectangles kept per region before it collapses into their bounding box. */
export const MAX_RECTS = 64

/** A set of pixels of a `width`×`height` buffer (half-open integer rectangles, clipped). */
export class Region {
  /** x0, y0, x1, y1 per rectangle. */
  rects: number[] = []
  full = false
  constructor(
    readonly width: number,
    readonly height: number
  ) {}

  get isEmpty(): boolean {
    return !this.full && this.rects.length === 0
  }

  /** Rectangles held (0 when full). */
  get count(): number {
    return this.rects.length >> 2
  }

  clear(): void {
    this.full = false
    this.rects.length = 0
  }

  setFull(): void {
    this.full = true
    this.rects.length = 0
  }

  /** Adds [x0, x1) × [y0, y1), clipped to the buffer; outward-rounds fractions. */
  add(x0: number, y0: number, x1: number, y1: number): void {
    if (this.full) return
    const w = this.width
    const h = this.height
    if (Number.isNaN(x0 + y0 + x1 + y1)) {
      // A conversion went wrong (∞ − ∞ and the like): damage everything rather than guess.
      this.setFull()
      return
    }
    if (x0 >= x1 || y0 >= y1) return
    const a = Math.max(0, Math.floor(x0))
    const b = Math.max(0, Math.floor(y0))
    const c = Math.min(w, Math.ceil(x1))
    const d = Math.min(h, Math.ceil(y1))
    if (a >= c || b >= d) return
    if (a === 0 && b === 0 && c === w && d === h) {
      this.setFull()
      return
    }
    const r = this.rects
    // Drop it when an existing rectangle already covers it (the common "same damage again").
    for (let i = 0; i < r.length; i += 4) {
      if (r[i]! <= a && r[i + 1]! <= b && r[i + 2]! >= c && r[i + 3]! >= d) return
    }
    r.push(a, b, c, d)
    if (r.length > MAX_RECTS * 4) this.#collapse()
  }

  addRegion(o: Region): void {
    if (this.full) return
    if (o.full) {
      this.setFull()
      return
    }
    const r = o.rects
    for (let i = 0; i < r.length; i += 4) this.add(r[i]!, r[i + 1]!, r[i + 2]!, r[i + 3]!)
  }

  #collapse(): void {
    const r = this.rects
    let a = Infinity
    let b = Infinity
    let c = -Infinity
    let d = -Infinity
    for (let i = 0; i < r.length; i += 4) {
      a = Math.min(a, r[i]!)
      b = Math.min(b, r[i + 1]!)
      c = Math.max(c, r[i + 2]!)
      d = Math.max(d, r[i + 3]!)
    }
    r.length = 0
    if (a === 0 && b === 0 && c === this.width && d === this.height) this.full = true
    else r.push(a, b, c, d)
  }
}

// wl_output.transform (wayland.xml)
export const TRANSFORM_NORMAL = 0
export const TRANSFORM_90 = 1
export const TRANSFORM_180 = 2
export const TRANSFORM_270 = 3
export const TRANSFORM_FLIPPED = 4
export const TRANSFORM_FLIPPED_90 = 5
export const TRANSFORM_FLIPPED_180 = 6
export const TRANSFORM_FLIPPED_270 = 7

/** wp_viewport state; values are surface-local (wl_fixed decoded to numbers). */
export interface Viewport {
  /** set_source (x, y, width, height), or null when unset. */
  readonly src: readonly [number, number, number, number] | null
  /** set_destination (width, height), or null when unset. */
  readonly dst: readonly [number, number] | null
}

/** How one buffer maps onto its surface. */
export interface BufferGeometry {
  /** Buffer size in pixels. */
  readonly width: number
  readonly height: number
  /** wl_surface.set_buffer_scale (≥ 1). */
  readonly scale: number
  /** wl_surface.set_buffer_transform (wl_output.transform, 0–7). */
  readonly transform: number
  readonly viewport: Viewport | null
}

/**
 * Adds the surface-local rectangle (x, y, w, h) to `into` (a region of the buffer `g` describes),
 * converted to buffer pixels and rounded outwards. Damage that cannot be converted exactly
 * enough to be safe damages the whole buffer.
 */
export const surfaceRectToBuffer = (g: BufferGeometry, x: number, y: number, w: number, h: number, into: Region): void => {
  if (into.full || !(w > 0 && h > 0)) return
  const scale = g.scale
  const t = g.transform
  if (!(scale >= 1) || !Number.isInteger(scale) || !(t >= 0 && t <= 7) || !Number.isInteger(t)) {
    into.setFull()
    return
  }
  const swapped = (t & 1) === 1
  // Size of the buffer after transform and scale: the surface size without a viewport.
  const tw = swapped ? g.height : g.width
  const th = swapped ? g.width : g.height
  let x0 = x
  let y0 = y
  let x1 = x + w
  let y1 = y + h
  const vp = g.viewport
  if (vp !== null && (vp.src !== null || vp.dst !== null)) {
    const src = vp.src ?? [0, 0, tw / scale, th / scale]
    const dst = vp.dst ?? [src[2], src[3]]
    if (!(src[2] > 0 && src[3] > 0 && dst[0] > 0 && dst[1] > 0)) {
      into.setFull()
      return
    }
    // Only the surface area shows buffer content: clip first, so a client's "damage
    // everything" (0, 0, INT32_MAX, INT32_MAX) stays finite when scaled.
    x0 = Math.max(0, x0)
    y0 = Math.max(0, y0)
    x1 = Math.min(dst[0], x1)
    y1 = Math.min(dst[1], y1)
    if (x0 >= x1 || y0 >= y1) return
    const sx = src[2] / dst[0]
    const sy = src[3] / dst[1]
    x0 = src[0] + x0 * sx
    x1 = src[0] + x1 * sx
    y0 = src[1] + y0 * sy
    y1 = src[1] + y1 * sy
  }
  // Into transformed-buffer pixels.
  x0 *= scale
  y0 *= scale
  x1 *= scale
  y1 *= scale
  // Inverse transform (weston_transformed_coord, both corners, then ordered).
  let bx0: number
  let by0: number
  let bx1: number
  let by1: number
  switch (t) {
    case TRANSFORM_NORMAL:
      bx0 = x0
      by0 = y0
      bx1 = x1
      by1 = y1
      break
    case TRANSFORM_FLIPPED:
      bx0 = tw - x1
      bx1 = tw - x0
      by0 = y0
      by1 = y1
      break
    case TRANSFORM_90:
      bx0 = y0
      bx1 = y1
      by0 = tw - x1
      by1 = tw - x0
      break
    case TRANSFORM_FLIPPED_90:
      bx0 = y0
      bx1 = y1
      by0 = x0
      by1 = x1
      break
    case TRANSFORM_180:
      bx0 = tw - x1
      bx1 = tw - x0
      by0 = th - y1
      by1 = th - y0
      break
    case TRANSFORM_FLIPPED_180:
      bx0 = x0
      bx1 = x1
      by0 = th - y1
      by1 = th - y0
      break
    case TRANSFORM_270:
      bx0 = th - y1
      bx1 = th - y0
      by0 = x0
      by1 = x1
      break
    default: // TRANSFORM_FLIPPED_270
      bx0 = th - y1
      bx1 = th - y0
      by0 = tw - x1
      by1 = tw - x0
      break
  }
  into.add(bx0, by0, bx1, by1)
}

/** `wl_surface.damage_buffer` (already buffer pixels). */
export const bufferRectToBuffer = (x: number, y: number, w: number, h: number, into: Region): void => {
  if (!(w > 0 && h > 0)) return
  into.add(x, y, x + w, y + h)
}

/**
 * The region as row bands: a flat list of (y0, y1, n, x0, x1, … n pairs), bands in increasing y,
 * x-spans merged and sorted, vertically adjacent bands with equal spans merged.
 */
export const bands = (r: Region): number[] => {
  if (r.full) return [0, r.height, 1, 0, r.width]
  const rects = r.rects
  const n = rects.length >> 2
  if (n === 0) return []
  if (n === 1) return [rects[1]!, rects[3]!, 1, rects[0]!, rects[2]!]
  const ys: number[] = []
  for (let i = 0; i < rects.length; i += 4) ys.push(rects[i + 1]!, rects[i + 3]!)
  ys.sort((a, b) => a - b)
  const out: number[] = []
  let prevStart = -1
  let prevEnd = -1
  const spans: Array<[number, number]> = []
  for (let k = 0; k + 1 < ys.length; k++) {
    const ya = ys[k]!
    const yb = ys[k + 1]!
    if (ya === yb) continue
    spans.length = 0
    for (let i = 0; i < rects.length; i += 4) {
      if (rects[i + 1]! <= ya && rects[i + 3]! >= yb) spans.push([rects[i]!, rects[i + 2]!])
    }
    if (spans.length === 0) {
      prevStart = -1
      continue
    }
    spans.sort((a, b) => a[0] - b[0])
    const merged: number[] = []
    let cs = spans[0]![0]
    let ce = spans[0]![1]
    for (let i = 1; i < spans.length; i++) {
      const [s, e] = spans[i]!
      if (s <= ce) ce = Math.max(ce, e)
      else {
        merged.push(cs, ce)
        cs = s
        ce = e
      }
    }
    merged.push(cs, ce)
    // Extend the previous band when it ends here with the same spans.
    if (prevStart >= 0 && out[prevEnd] === ya && out[prevStart + 2] === merged.length >> 1) {
      let same = true
      for (let i = 0; i < merged.length; i++) {
        if (out[prevStart + 3 + i] !== merged[i]) {
          same = false
          break
        }
      }
      if (same) {
        out[prevEnd] = yb
        continue
      }
    }
    prevStart = out.length
    prevEnd = prevStart + 1
    out.push(ya, yb, merged.length >> 1, ...merged)
  }
  return out
}

/** Where a buffer's pixels are: `view[offset + y × stride + x × bpp]`. */
export interface Plane {
  readonly view: Uint8Array
  readonly offset: number
  readonly stride: number
}

export interface CopyCounts {
  /** Bytes copied. */
  bytes: number
  /** Rows touched (a row with two spans counts once per span). */
  rows: number
}

/**
 * Walks `region` span by span in bytes, for a source and a destination with the given strides:
 * a band of whole rows where both layouts match is one run (the stride padding between rows
 * rides along: `run(y0, xb0 = 0, total)`), any other band is one call per row span
 * (`rows(y0, y1, xb0, len)`). A visitor returning false stops the walk: -1. Otherwise adds the
 * bytes and rows visited to `counts` and returns the bytes.
 */
const walkSpans = (
  region: Region,
  bpp: number,
  srcStride: number,
  dstStride: number,
  counts: CopyCounts,
  run: (y0: number, total: number) => boolean,
  rows: (y0: number, y1: number, xb0: number, len: number) => boolean
): number => {
  if (region.isEmpty) return 0
  const b = bands(region)
  const rowBytes = region.width * bpp
  let bytes = 0
  let visited = 0
  for (let i = 0; i < b.length; ) {
    const y0 = b[i]!
    const y1 = b[i + 1]!
    const n = b[i + 2]!
    i += 3
    for (let k = 0; k < n; k++, i += 2) {
      const xb0 = b[i]! * bpp
      const len = b[i + 1]! * bpp - xb0
      if (srcStride === dstStride && xb0 === 0 && len === rowBytes) {
        const total = (y1 - y0 - 1) * srcStride + len
        if (!run(y0, total)) return -1
        bytes += total
      } else {
        if (!rows(y0, y1, xb0, len)) return -1
        bytes += len * (y1 - y0)
      }
      visited += y1 - y0
    }
  }
  counts.bytes += bytes
  counts.rows += visited
  return bytes
}

/**
 * Copies the pixels of `region` from `src` into `dst` (same width, height and bytes per pixel;
 * strides may differ). Adds what it copied to `counts` and returns the bytes copied.
 * The caller guarantees both planes hold every row: offset + (height − 1) × stride + width × bpp.
 */
export const copyRegion = (src: Plane, dst: Plane, bpp: number, region: Region, counts: CopyCounts): number => {
  const sv = src.view
  const dv = dst.view
  const ss = src.stride
  const ds = dst.stride
  return walkSpans(region, bpp, ss, ds, counts,
    (y0, total) => {
      const s = src.offset + y0 * ss
      dv.set(sv.subarray(s, s + total), dst.offset + y0 * ds)
      return true
    },
    (y0, y1, xb0, len) => {
      let s = src.offset + y0 * ss + xb0
      let d = dst.offset + y0 * ds + xb0
      for (let y = y0; y < y1; y++, s += ss, d += ds) dv.set(sv.subarray(s, s + len), d)
      return true
    }
  )
}

/** `preadv(fd, buffers, position)`: bytes read (short at the end of the file). Throws on an error. */
export type ReadvAt = (buffers: Uint8Array[], position: number) => number

/** iovecs per call (IOV_MAX is 1024 on Linux); each row may take two (span, then gap). */
const MAX_IOVECS = 1024
let scratch = new Uint8Array(4096)

/**
 * Copies the pixels of `region` from a file (rows at `srcOffset + y × srcStride`) into `dst`, like
 * `copyRegion`. Returns the bytes copied, or -1 when the file ended before the region did (what
 * was read so far is in `dst`). Adds what it copied to `counts`.
 */
export const readRegion = (readv: ReadvAt, srcOffset: number, srcStride: number, dst: Plane, bpp: number, region: Region, counts: CopyCounts): number => {
  const dv = dst.view
  const ss = srcStride
  const ds = dst.stride
  const iov: Uint8Array[] = []
  let want = 0
  let at = 0
  const flush = (): boolean => {
    if (iov.length === 0) return true
    const n = readv(iov, at)
    const ok = n >= want
    iov.length = 0
    want = 0
    return ok
  }
  return walkSpans(region, bpp, ss, ds, counts,
    (y0, total) => {
      const d = dst.offset + y0 * ds
      iov.push(dv.subarray(d, d + total))
      want = total
      at = srcOffset + y0 * ss
      return flush()
    },
    (y0, y1, xb0, len) => {
      // One preadv per band: the source's bytes between two spans go to a scratch buffer.
      const s = srcOffset + y0 * ss + xb0
      let d = dst.offset + y0 * ds + xb0
      const gap = ss - len
      if (gap > scratch.length) scratch = new Uint8Array(gap)
      const gapView = scratch.subarray(0, gap)
      for (let y = y0; y < y1; y++, d += ds) {
        if (iov.length === 0) at = s + (y - y0) * ss
        else if (gap > 0) {
          iov.push(gapView)
          want += gap
        }
        iov.push(dv.subarray(d, d + len))
        want += len
        if (iov.length >= MAX_IOVECS - 1 && !flush()) return false
      }
      return flush()
    }
  )
}
