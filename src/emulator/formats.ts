/**
 * The host's "system allocator" image layouts (rutabaga's system gralloc): packed planes with
 * stride = bytes-per-pixel × (width / horizontal subsampling), no alignment, plane k after plane
 * k−1, total size rounded up to 4096. Modifier 0, map_info CACHED. Pure functions.
 */

const fourcc = (s: string): number =>
  (s.charCodeAt(0) | (s.charCodeAt(1) << 8) | (s.charCodeAt(2) << 16) | (s.charCodeAt(3) << 24)) >>> 0

export const DRM_FORMAT = {
  R8: fourcc("R8  "),
  RGB565: fourcc("RG16"),
  BGR888: fourcc("BG24"),
  XRGB8888: fourcc("XR24"),
  XBGR8888: fourcc("XB24"),
  ARGB8888: fourcc("AR24"),
  ABGR8888: fourcc("AB24"),
  XRGB2101010: fourcc("XR30"),
  XBGR2101010: fourcc("XB30"),
  ARGB2101010: fourcc("AR30"),
  ABGR2101010: fourcc("AB30"),
  ABGR16161616F: fourcc("AB4H"),
  NV12: fourcc("NV12"),
  YVU420: fourcc("YV12")
} as const

/** Per plane: [bytes per pixel, horizontal subsampling, vertical subsampling]. */
type Planes = ReadonlyArray<readonly [number, number, number]>

const packed = (bpp: number): Planes => [[bpp, 1, 1]]

const layouts = new Map<number, Planes>([
  [DRM_FORMAT.R8, packed(1)],
  [DRM_FORMAT.RGB565, packed(2)],
  [DRM_FORMAT.BGR888, packed(3)],
  [DRM_FORMAT.XRGB8888, packed(4)],
  [DRM_FORMAT.XBGR8888, packed(4)],
  [DRM_FORMAT.ARGB8888, packed(4)],
  [DRM_FORMAT.ABGR8888, packed(4)],
  [DRM_FORMAT.XRGB2101010, packed(4)],
  [DRM_FORMAT.XBGR2101010, packed(4)],
  [DRM_FORMAT.ARGB2101010, packed(4)],
  [DRM_FORMAT.ABGR2101010, packed(4)],
  [DRM_FORMAT.ABGR16161616F, packed(8)],
  [DRM_FORMAT.NV12, [[1, 1, 1], [2, 2, 2]]],
  [DRM_FORMAT.YVU420, [[1, 1, 1], [1, 2, 2], [1, 2, 2]]]
])

export const MAP_CACHE_CACHED = 0x01
export const MAP_ACCESS_RW = 0x30

export interface ImageRequirements {
  readonly width: number
  readonly height: number
  readonly drmFormat: number
  readonly strides: readonly [number, number, number, number]
  readonly offsets: readonly [number, number, number, number]
  readonly modifier: bigint
  /** Page-rounded. */
  readonly size: number
  readonly mapInfo: number
}

export const roundUpToPage = (n: number): number => Math.ceil(n / 4096) * 4096

/** The layout, or null for a format the system allocator does not know. */
export const imageRequirements = (width: number, height: number, drmFormat: number): ImageRequirements | null => {
  const planes = layouts.get(drmFormat >>> 0)
  if (planes === undefined) return null
  const strides = [0, 0, 0, 0]
  const offsets = [0, 0, 0, 0]
  let size = 0
  planes.forEach(([bpp, hsub, vsub], k) => {
    const stride = bpp * Math.floor(width / hsub)
    strides[k] = stride
    offsets[k] = k > 0 ? size : 0
    size += Math.floor(height / vsub) * stride
  })
  if (size > 0xffffffff) return null // rutabaga's checked u32 arithmetic
  return {
    width,
    height,
    drmFormat: drmFormat >>> 0,
    strides: strides as [number, number, number, number],
    offsets: offsets as [number, number, number, number],
    modifier: 0n,
    size: roundUpToPage(size),
    mapInfo: MAP_CACHE_CACHED
  }
}
