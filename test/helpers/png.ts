/**
 * A minimal PNG decoder for the end-to-end tests: reads weston's screenshots so a test can count
 * exact pixel values. 8-bit RGB and RGBA, non-interlaced, all five row filters (PNG spec §9).
 *
 * It does not check CRCs, and rejects palettes, grey, 16-bit and Adam7 rather than guess.
 */
import { inflateSync } from "node:zlib"

export interface Image {
  readonly width: number
  readonly height: number
  /** width × height × 4 bytes, R G B A per pixel, rows top to bottom. */
  readonly rgba: Uint8Array
}

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]

export const decodePng = (file: Uint8Array): Image => {
  const data = Buffer.from(file.buffer, file.byteOffset, file.byteLength)
  if (data.length < 8 || SIGNATURE.some((b, i) => data[i] !== b)) throw new Error("png: bad signature")
  let width = 0
  let height = 0
  let colorType = -1
  const idat: Buffer[] = []
  let off = 8
  for (;;) {
    if (off + 12 > data.length) throw new Error("png: truncated chunk")
    const len = data.readUInt32BE(off)
    const type = data.toString("latin1", off + 4, off + 8)
    const body = data.subarray(off + 8, off + 8 + len)
    if (body.length !== len) throw new Error(`png: truncated ${type} chunk`)
    off += 12 + len
    if (type === "IHDR") {
      width = body.readUInt32BE(0)
      height = body.readUInt32BE(4)
      const depth = body[8]
      colorType = body[9] ?? -1
      const interlace = body[12]
      if (depth !== 8) throw new Error(`png: bit depth ${depth} unsupported`)
      if (colorType !== 2 && colorType !== 6) throw new Error(`png: colour type ${colorType} unsupported`)
      if (interlace !== 0) throw new Error("png: interlaced images unsupported")
    } else if (type === "IDAT") {
      idat.push(body)
    } else if (type === "IEND") {
      break
    }
  }
  if (colorType === -1) throw new Error("png: no IHDR")
  const bpp = colorType === 6 ? 4 : 3
  const stride = width * bpp
  const raw = inflateSync(Buffer.concat(idat))
  if (raw.length < (stride + 1) * height) throw new Error(`png: image data too short (${raw.length} < ${(stride + 1) * height})`)
  const rgba = new Uint8Array(width * height * 4)
  let prev = new Uint8Array(stride)
  let cur = new Uint8Array(stride)
  for (let y = 0; y < height; y++) {
    const base = y * (stride + 1)
    const filter = raw[base]
    for (let x = 0; x < stride; x++) {
      const v = raw[base + 1 + x]!
      const a = x >= bpp ? cur[x - bpp]! : 0
      const b = prev[x]!
      const c = x >= bpp ? prev[x - bpp]! : 0
      let p: number
      switch (filter) {
        case 0:
          p = 0
          break
        case 1:
          p = a
          break
        case 2:
          p = b
          break
        case 3:
          p = (a + b) >>> 1
          break
        case 4:
          p = paeth(a, b, c)
          break
        default:
          throw new Error(`png: bad filter type ${filter} on row ${y}`)
      }
      cur[x] = (v + p) & 0xff
    }
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 4
      rgba[o] = cur[x * bpp]!
      rgba[o + 1] = cur[x * bpp + 1]!
      rgba[o + 2] = cur[x * bpp + 2]!
      rgba[o + 3] = bpp === 4 ? cur[x * bpp + 3]! : 0xff
    }
    const t = prev
    prev = cur
    cur = t
  }
  return { width, height, rgba }
}

const paeth = (a: number, b: number, c: number): number => {
  const p = a + b - c
  const pa = Math.abs(p - a)
  const pb = Math.abs(p - b)
  const pc = Math.abs(p - c)
  if (pa <= pb && pa <= pc) return a
  return pb <= pc ? b : c
}

/** Number of pixels whose colour is exactly `argb` (0xAARRGGBB). */
export const countPixels = (img: Image, argb: number): number => {
  const r = (argb >>> 16) & 0xff
  const g = (argb >>> 8) & 0xff
  const b = argb & 0xff
  const a = argb >>> 24
  const px = img.rgba
  let n = 0
  for (let i = 0; i < px.length; i += 4) {
    if (px[i] === r && px[i + 1] === g && px[i + 2] === b && px[i + 3] === a) n++
  }
  return n
}

/** Bounding box of the pixels of colour `argb`, or null when there are none. */
export const boundingBox = (img: Image, argb: number): { x: number; y: number; width: number; height: number } | null => {
  const r = (argb >>> 16) & 0xff
  const g = (argb >>> 8) & 0xff
  const b = argb & 0xff
  const a = argb >>> 24
  let x0 = Infinity
  let y0 = Infinity
  let x1 = -1
  let y1 = -1
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      const i = (y * img.width + x) * 4
      const px = img.rgba
      if (px[i] === r && px[i + 1] === g && px[i + 2] === b && px[i + 3] === a) {
        if (x < x0) x0 = x
        if (y < y0) y0 = y
        if (x > x1) x1 = x
        if (y > y1) y1 = y
      }
    }
  }
  return x1 < 0 ? null : { x: x0, y: y0, width: x1 - x0 + 1, height: y1 - y0 + 1 }
}
