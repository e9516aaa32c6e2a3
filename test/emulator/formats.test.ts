/** The system allocator's image layouts (pure): rutabaga's canonical numbers plus page rounding. */
import { describe, expect, it } from "@effect/vitest"
import { DRM_FORMAT, imageRequirements } from "../../src/emulator/formats.js"

describe("imageRequirements", () => {
  it("packed formats: stride = bytes per pixel × width, no alignment, size rounded up to 4096", () => {
    const cases: Array<[number, number, number]> = [
      [DRM_FORMAT.R8, 1, 10],
      [DRM_FORMAT.RGB565, 2, 20],
      [DRM_FORMAT.BGR888, 3, 30],
      [DRM_FORMAT.XRGB8888, 4, 40],
      [DRM_FORMAT.ARGB8888, 4, 40],
      [DRM_FORMAT.XBGR8888, 4, 40],
      [DRM_FORMAT.ABGR8888, 4, 40],
      [DRM_FORMAT.XRGB2101010, 4, 40],
      [DRM_FORMAT.ABGR2101010, 4, 40],
      [DRM_FORMAT.ABGR16161616F, 8, 80]
    ]
    for (const [format, , stride] of cases) {
      const r = imageRequirements(10, 10, format)!
      expect(r.strides).toEqual([stride, 0, 0, 0])
      expect(r.offsets).toEqual([0, 0, 0, 0])
      expect(r.size).toBe(4096)
      expect(r.modifier).toBe(0n)
      expect(r.mapInfo).toBe(1)
    }
    expect(imageRequirements(640, 480, DRM_FORMAT.XRGB8888)!.size).toBe(1228800)
    expect(imageRequirements(1, 1, DRM_FORMAT.XRGB8888)!.size).toBe(4096)
    expect(imageRequirements(1025, 1, DRM_FORMAT.XRGB8888)!.size).toBe(8192)
  })

  it("planar formats: subsampled planes after the luma plane", () => {
    const nv12 = imageRequirements(10, 10, DRM_FORMAT.NV12)!
    expect(nv12.strides).toEqual([10, 10, 0, 0])
    expect(nv12.offsets).toEqual([0, 100, 0, 0])
    const yv12 = imageRequirements(10, 10, DRM_FORMAT.YVU420)!
    expect(yv12.strides).toEqual([10, 5, 5, 0])
    expect(yv12.offsets).toEqual([0, 100, 125, 0])
    // Odd sizes truncate the subsampled planes (integer division, as rutabaga).
    const odd = imageRequirements(11, 11, DRM_FORMAT.NV12)!
    expect(odd.strides).toEqual([11, 10, 0, 0])
    expect(odd.offsets).toEqual([0, 121, 0, 0])
  })

  it("unknown formats are refused", () => {
    expect(imageRequirements(10, 10, 0x12345678)).toBeNull()
  })
})
