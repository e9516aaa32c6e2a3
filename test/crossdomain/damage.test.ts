/**
 * damage.ts on its own: surface damage → buffer pixels for every transform, scales 1–3 and
 * viewports, checked against an independent pixel model (the surface image built from the
 * buffer by the protocol's words: buffer_transform, then buffer_scale, then crop and scale);
 * regions, bands and the row-span copy on memfd mappings (random damage, guest stride ≠ host
 * stride, region-by-region comparison, exact byte counts).
 */
import { afterEach, beforeEach, describe, expect, it } from "@effect/vitest"
import { sys } from "../../src/ffi/libc.js"
import { readvSync } from "node:fs"
import { bands, copyRegion, MAX_RECTS, readRegion, Region, surfaceRectToBuffer, type BufferGeometry } from "../../src/transport/crossdomain/damage.js"
import { mapShared, memfdCreate } from "../../src/transport/memfd.js"
import { openFds } from "../helpers/fds.js"

let before: number[] = []
beforeEach(() => {
  before = openFds()
})
afterEach(() => {
  expect(openFds()).toEqual(before)
})

/** A small deterministic PRNG (xorshift32) so failures reproduce. */
const rng = (seed: number) => {
  let s = seed >>> 0 || 1
  return (n: number): number => {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s % n
  }
}

/**
 * Independent model: which surface pixel (before crop/scale: "logical" pixel ×scale) a buffer
 * pixel lands on. wl_output.transform: the buffer holds the surface transformed by T (flip
 * first, then rotate counter-clockwise by 90° × (T & 3)); the compositor applies the inverse.
 * Returns the transformed-buffer pixel (tx, ty) for buffer pixel (bx, by) of a W×H buffer.
 */
const bufferToTransformed = (t: number, W: number, H: number, bx: number, by: number): [number, number] => {
  // Undo the rotation (rotate clockwise k times), then undo the flip.
  const k = t & 3
  let x = bx
  let y = by
  let w = W
  let h = H
  for (let i = 0; i < k; i++) {
    // CCW rotation maps (x, y) of a w×h image to (y, w − 1 − x) of an h×w image; here (w, h)
    // are the rotated image's, so the source pixel is (h − 1 − y, x).
    const nx = h - 1 - y
    const ny = x
    x = nx
    y = ny
    const tmp = w
    w = h
    h = tmp
  }
  if (t >= 4) x = w - 1 - x
  return [x, y]
}

/** Buffer pixels whose surface footprint intersects the surface rect, by brute force. */
const expected = (g: BufferGeometry, sx: number, sy: number, sw: number, sh: number): Set<number> => {
  const out = new Set<number>()
  const swapped = (g.transform & 1) === 1
  const tw = swapped ? g.height : g.width
  const th = swapped ? g.width : g.height
  const src = g.viewport?.src ?? [0, 0, tw / g.scale, th / g.scale]
  const dst = g.viewport?.dst ?? (g.viewport?.src ? [src[2], src[3]] : [tw / g.scale, th / g.scale])
  for (let by = 0; by < g.height; by++) {
    for (let bx = 0; bx < g.width; bx++) {
      const [tx, ty] = bufferToTransformed(g.transform, g.width, g.height, bx, by)
      // The pixel's square in logical (pre-viewport) coordinates, then in surface coordinates.
      const lx0 = tx / g.scale
      const ly0 = ty / g.scale
      const lx1 = (tx + 1) / g.scale
      const ly1 = (ty + 1) / g.scale
      const fx = dst[0] / src[2]
      const fy = dst[1] / src[3]
      const x0 = (lx0 - src[0]) * fx
      const x1 = (lx1 - src[0]) * fx
      const y0 = (ly0 - src[1]) * fy
      const y1 = (ly1 - src[1]) * fy
      if (x1 <= 0 || y1 <= 0 || x0 >= dst[0] || y0 >= dst[1]) continue // cropped away
      // Damage outside the surface shows nothing: clip it to the surface first.
      const dx0 = Math.max(sx, 0)
      const dy0 = Math.max(sy, 0)
      const dx1 = Math.min(sx + sw, dst[0])
      const dy1 = Math.min(sy + sh, dst[1])
      if (dx0 < dx1 && dy0 < dy1 && x0 < dx1 && x1 > dx0 && y0 < dy1 && y1 > dy0) out.add(by * g.width + bx)
    }
  }
  return out
}

const pixels = (r: Region): Set<number> => {
  const out = new Set<number>()
  if (r.full) {
    for (let i = 0; i < r.width * r.height; i++) out.add(i)
    return out
  }
  for (let i = 0; i < r.rects.length; i += 4) {
    for (let y = r.rects[i + 1]!; y < r.rects[i + 3]!; y++) for (let x = r.rects[i]!; x < r.rects[i + 2]!; x++) out.add(y * r.width + x)
  }
  return out
}

describe("surface damage → buffer pixels", () => {
  const transforms = [0, 1, 2, 3, 4, 5, 6, 7]
  for (const t of transforms) {
    for (const scale of [1, 2, 3]) {
      it(`transform ${t}, scale ${scale}: exactly the pixels under the damage (random rects)`, () => {
        const r = rng(1000 + 10 * t + scale)
        const W = 12 * scale
        const H = 6 * scale
        const g: BufferGeometry = { width: W, height: H, scale, transform: t, viewport: null }
        const sw = ((t & 1) === 1 ? H : W) / scale
        const sh = ((t & 1) === 1 ? W : H) / scale
        for (let i = 0; i < 60; i++) {
          const x = r(sw + 4) - 2
          const y = r(sh + 4) - 2
          const w = 1 + r(sw)
          const h = 1 + r(sh)
          const reg = new Region(W, H)
          surfaceRectToBuffer(g, x, y, w, h, reg)
          expect(pixels(reg), `rect ${x},${y} ${w}x${h}`).toEqual(expected(g, x, y, w, h))
        }
      })
    }
  }

  it("viewport with an integer scale-down and crop: exact", () => {
    const r = rng(7)
    // 40×20 buffer, scale 1, source (8, 4, 24, 12) shown at 12×6: 2 buffer pixels per surface pixel.
    for (const t of [0, 1, 2, 5]) {
      const W = (t & 1) === 1 ? 20 : 40
      const H = (t & 1) === 1 ? 40 : 20
      const g: BufferGeometry = { width: W, height: H, scale: 1, transform: t, viewport: { src: [8, 4, 24, 12], dst: [12, 6] } }
      for (let i = 0; i < 40; i++) {
        const x = r(14) - 1
        const y = r(8) - 1
        const w = 1 + r(8)
        const h = 1 + r(5)
        const reg = new Region(W, H)
        surfaceRectToBuffer(g, x, y, w, h, reg)
        expect(pixels(reg), `t ${t} rect ${x},${y} ${w}x${h}`).toEqual(expected(g, x, y, w, h))
      }
    }
  })

  it("viewport with a fractional scale: never fewer pixels than the damage covers, at most one extra pixel per edge", () => {
    const r = rng(11)
    const W = 37
    const H = 23
    for (const t of [0, 3, 6]) {
      const tw = (t & 1) === 1 ? H : W
      const th = (t & 1) === 1 ? W : H
      const g: BufferGeometry = { width: W, height: H, scale: 1, transform: t, viewport: { src: [1.5, 2.25, tw - 3, th - 4], dst: [50, 17] } }
      for (let i = 0; i < 40; i++) {
        const x = r(52) - 1
        const y = r(19) - 1
        const w = 1 + r(20)
        const h = 1 + r(10)
        const reg = new Region(W, H)
        surfaceRectToBuffer(g, x, y, w, h, reg)
        const got = pixels(reg)
        const want = expected(g, x, y, w, h)
        for (const p of want) expect(got.has(p), `pixel ${p} missing for rect ${x},${y} ${w}x${h}`).toBe(true)
        // The region is one rectangle: compare its bounding box with the expected one.
        if (want.size > 0) {
          const xs = [...want].map((p) => p % W)
          const ys = [...want].map((p) => Math.floor(p / W))
          const [a, b, c, d] = reg.full ? [0, 0, W, H] : (reg.rects as [number, number, number, number])
          expect(Math.min(...xs) - a).toBeLessThanOrEqual(1)
          expect(Math.min(...ys) - b).toBeLessThanOrEqual(1)
          expect(c - (Math.max(...xs) + 1)).toBeLessThanOrEqual(1)
          expect(d - (Math.max(...ys) + 1)).toBeLessThanOrEqual(1)
        }
      }
    }
  })

  it("destination only, source only, INT32_MAX damage, invalid geometry", () => {
    const W = 20
    const H = 10
    // Destination only: the whole buffer is scaled to 40×20 surface pixels (2 surface px per buffer px).
    const reg = new Region(W, H)
    surfaceRectToBuffer({ width: W, height: H, scale: 1, transform: 0, viewport: { src: null, dst: [40, 20] } }, 4, 2, 4, 2, reg)
    expect(reg.rects).toEqual([2, 1, 4, 2])
    // Source only: crop (5, 5, 10, 5), surface = 10×5, unscaled.
    const crop = new Region(W, H)
    surfaceRectToBuffer({ width: W, height: H, scale: 1, transform: 0, viewport: { src: [5, 5, 10, 5], dst: null } }, 0, 0, 3, 2, crop)
    expect(crop.rects).toEqual([5, 5, 8, 7])
    // "Damage everything" as clients send it.
    const all = new Region(W, H)
    surfaceRectToBuffer({ width: W, height: H, scale: 2, transform: 1, viewport: { src: [1, 1, 2, 2], dst: [100, 100] } }, 0, 0, 0x7fffffff, 0x7fffffff, all)
    expect(all.isEmpty).toBe(false)
    const big = new Region(W, H)
    surfaceRectToBuffer({ width: W, height: H, scale: 1, transform: 0, viewport: null }, -5, -5, 0x7fffffff, 0x7fffffff, big)
    expect(big.full).toBe(true)
    // A transform or scale the protocol does not define: the whole buffer.
    for (const g of [
      { width: W, height: H, scale: 0, transform: 0, viewport: null },
      { width: W, height: H, scale: 1, transform: 9, viewport: null },
      { width: W, height: H, scale: 1, transform: 0, viewport: { src: [0, 0, 0, 5] as const, dst: null } }
    ]) {
      const r = new Region(W, H)
      surfaceRectToBuffer(g, 1, 1, 1, 1, r)
      expect(r.full).toBe(true)
    }
    // Empty damage is nothing.
    const none = new Region(W, H)
    surfaceRectToBuffer({ width: W, height: H, scale: 1, transform: 0, viewport: null }, 3, 3, 0, 5, none)
    expect(none.isEmpty).toBe(true)
  })
})

describe("regions and bands", () => {
  it("random rects: bands cover exactly the union, bands are disjoint and sorted", () => {
    const r = rng(99)
    for (let round = 0; round < 200; round++) {
      const W = 1 + r(50)
      const H = 1 + r(40)
      const reg = new Region(W, H)
      const n = 1 + r(8)
      for (let i = 0; i < n; i++) {
        const x = r(W + 6) - 3
        const y = r(H + 6) - 3
        reg.add(x, y, x + 1 + r(W), y + 1 + r(H))
      }
      const want = pixels(reg)
      const b = bands(reg)
      const got = new Set<number>()
      let lastY = -1
      for (let i = 0; i < b.length; ) {
        const [y0, y1, k] = [b[i]!, b[i + 1]!, b[i + 2]!]
        expect(y0).toBeGreaterThanOrEqual(lastY)
        lastY = y1
        i += 3
        let lastX = -1
        for (let j = 0; j < k; j++, i += 2) {
          expect(b[i]!).toBeGreaterThan(lastX)
          lastX = b[i + 1]!
          for (let y = y0; y < y1; y++) for (let x = b[i]!; x < b[i + 1]!; x++) {
            expect(got.has(y * W + x)).toBe(false)
            got.add(y * W + x)
          }
        }
      }
      expect(got).toEqual(want)
    }
  })

  it("more than MAX_RECTS rects collapse into their bounding box (never less)", () => {
    const reg = new Region(1000, 1000)
    for (let i = 0; i <= MAX_RECTS; i++) reg.add(i * 10, i * 5, i * 10 + 2, i * 5 + 1)
    expect(reg.count).toBe(1)
    expect(reg.rects).toEqual([0, 0, MAX_RECTS * 10 + 2, MAX_RECTS * 5 + 1])
  })

  it("a rect covered by an earlier one is not added twice; full absorbs everything", () => {
    const reg = new Region(10, 10)
    reg.add(0, 0, 5, 5)
    reg.add(1, 1, 3, 3)
    expect(reg.count).toBe(1)
    reg.add(0, 0, 10, 10)
    expect(reg.full).toBe(true)
    reg.add(2, 2, 3, 3)
    expect(reg.count).toBe(0)
  })
})

describe("row-span copies between memfd mappings", () => {
  const W = 97
  const H = 61
  const BPP = 4
  const setup = (guestStride: number, hostStride: number, offset: number) => {
    const poolSize = offset + guestStride * H
    const poolFd = memfdCreate("guest-pool", poolSize)
    const pool = mapShared(poolFd, poolSize)
    const blobSize = Math.ceil((hostStride * H) / 4096) * 4096
    const blobFd = memfdCreate("host-blob", blobSize)
    const blob = mapShared(blobFd, blobSize)
    return {
      pool,
      poolFd,
      blob,
      done: () => {
        pool.unmap()
        blob.unmap()
        sys.close(poolFd)
        sys.close(blobFd)
      }
    }
  }
  const fillRandom = (v: Uint8Array, r: (n: number) => number) => {
    for (let i = 0; i < v.length; i++) v[i] = r(256)
  }

  for (const [gs, hs, off] of [
    [W * BPP, W * BPP, 0],
    [W * BPP + 64, W * BPP, 256],
    [W * BPP, W * BPP + 12, 4]
  ] as const) {
    it(`random damage, guest stride ${gs}, host stride ${hs}, offset ${off}: damaged pixels equal, others untouched, bytes exact (mapping and preadv)`, () => {
      const r = rng(gs + hs + off)
      const { pool, poolFd, blob, done } = setup(gs, hs, off)
      try {
        for (let round = 0; round < 50; round++) {
          fillRandom(pool.view, r)
          blob.view.fill(0xee)
          const reg = new Region(W, H)
          const n = 1 + r(5)
          for (let i = 0; i < n; i++) {
            const x = r(W)
            const y = r(H)
            reg.add(x, y, x + 1 + r(W - x), y + 1 + r(H - y))
          }
          const want = pixels(reg)
          const counts = { bytes: 0, rows: 0 }
          // Odd rounds read the pool's file (readRegion), even rounds its mapping (copyRegion).
          const bytes =
            round % 2 === 1
              ? readRegion((bufs, pos) => readvSync(poolFd, bufs, pos), off, gs, { view: blob.view, offset: 0, stride: hs }, BPP, reg, counts)
              : copyRegion({ view: pool.view, offset: off, stride: gs }, { view: blob.view, offset: 0, stride: hs }, BPP, reg, counts)
          // Region by region: damaged pixels equal the pool's, the others are untouched.
          const bad: string[] = []
          for (let y = 0; y < H; y++) {
            for (let x = 0; x < W; x++) {
              const s = off + y * gs + x * BPP
              const d = y * hs + x * BPP
              const damaged = want.has(y * W + x)
              for (let c = 0; c < BPP; c++) {
                if (blob.view[d + c] !== (damaged ? pool.view[s + c] : 0xee)) bad.push(`${damaged ? "damaged" : "untouched"} pixel ${x},${y}`)
              }
            }
          }
          expect(bad.slice(0, 5)).toEqual([])
          // Bytes: exactly the damaged pixels, except that a full-width band with equal
          // strides is copied as one span (its row padding rides along).
          const b = bands(reg)
          let padding = 0
          for (let i = 0; i < b.length; ) {
            const k = b[i + 2]!
            if (gs === hs && k === 1 && b[i + 3] === 0 && b[i + 4] === W) padding += (b[i + 1]! - b[i]! - 1) * (gs - W * BPP)
            i += 3 + 2 * k
          }
          expect(bytes).toBe(want.size * BPP + padding)
          expect(counts.bytes).toBe(bytes)
        }
      } finally {
        done()
      }
    })
  }

  it("full damage with equal strides is one span; with different strides one copy per row", () => {
    const { pool, blob, done } = setup(W * BPP, W * BPP, 0)
    try {
      const reg = new Region(W, H)
      reg.setFull()
      pool.view.fill(7)
      const counts = { bytes: 0, rows: 0 }
      expect(copyRegion({ view: pool.view, offset: 0, stride: W * BPP }, { view: blob.view, offset: 0, stride: W * BPP }, BPP, reg, counts)).toBe(W * H * BPP)
      expect(counts.rows).toBe(H)
      expect(blob.view.subarray(0, W * H * BPP).every((v) => v === 7)).toBe(true)
    } finally {
      done()
    }
  })
  it("preadv from a file that shrank: -1 (what was read so far is copied), never a fault", () => {
    const gs = W * BPP
    const { pool, poolFd, blob, done } = setup(gs, gs + 8, 0)
    try {
      pool.view.fill(7)
      pool.unmap()
      // Rows 0..9 remain; the damage reaches row 40.
      sys.ftruncate(poolFd, gs * 10)
      const full = new Region(W, H)
      full.add(0, 0, W, 41)
      const part = new Region(W, H)
      part.add(3, 2, 20, 41)
      for (const reg of [full, part]) {
        blob.view.fill(0)
        const counts = { bytes: 0, rows: 0 }
        const n = readRegion((bufs, pos) => readvSync(poolFd, bufs, pos), 0, gs, { view: blob.view, offset: 0, stride: gs + 8 }, BPP, reg, counts)
        expect(n).toBe(-1)
        expect(counts.bytes).toBe(0)
        // Row 2 was inside the file: copied.
        expect(blob.view[2 * (gs + 8) + 3 * BPP]).toBe(7)
      }
    } finally {
      done()
    }
  })
})
