/**
 * Unit test of the screenshot decoder (test/helpers/png.ts) that the exact-pixels test relies on.
 * It proves the decoder undoes each of the five PNG row filters, for RGB and RGBA, across a
 * multi-chunk IDAT, by encoding images by hand (forward filters written here, zlib.deflateSync)
 * and comparing every decoded byte; and that it refuses what it does not support.
 */
import { describe, expect, it } from "@effect/vitest"
import { crc32, deflateSync } from "node:zlib"
import { countPixels, decodePng } from "../helpers/png.js"

const chunk = (type: string, body: Uint8Array): Buffer => {
  const head = Buffer.alloc(8)
  head.writeUInt32BE(body.length, 0)
  head.write(type, 4, "latin1")
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(Buffer.concat([Buffer.from(type, "latin1"), body])) >>> 0, 0)
  return Buffer.concat([head, body, crc])
}

const paeth = (a: number, b: number, c: number): number => {
  const p = a + b - c
  const pa = Math.abs(p - a)
  const pb = Math.abs(p - b)
  const pc = Math.abs(p - c)
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c
}

/** Encodes `pixels` (rows of bpp-byte pixels) with the given filter per row; splits IDAT in `parts`. */
const encode = (width: number, height: number, bpp: 3 | 4, pixels: Uint8Array, filters: readonly number[], parts = 1, interlace = 0): Buffer => {
  const stride = width * bpp
  const raw = Buffer.alloc((stride + 1) * height)
  for (let y = 0; y < height; y++) {
    const f = filters[y % filters.length]!
    raw[y * (stride + 1)] = f
    for (let x = 0; x < stride; x++) {
      const v = pixels[y * stride + x]!
      const a = x >= bpp ? pixels[y * stride + x - bpp]! : 0
      const b = y > 0 ? pixels[(y - 1) * stride + x]! : 0
      const c = x >= bpp && y > 0 ? pixels[(y - 1) * stride + x - bpp]! : 0
      const pred = f === 0 ? 0 : f === 1 ? a : f === 2 ? b : f === 3 ? (a + b) >>> 1 : f === 4 ? paeth(a, b, c) : 0
      raw[y * (stride + 1) + 1 + x] = (v - pred) & 0xff
    }
  }
  const z = deflateSync(raw)
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8
  ihdr[9] = bpp === 4 ? 6 : 2
  ihdr[12] = interlace
  const idats: Buffer[] = []
  const step = Math.ceil(z.length / parts)
  for (let i = 0; i < z.length; i += step) idats.push(chunk("IDAT", z.subarray(i, i + step)))
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("tEXt", Buffer.from("Comment\0ignored chunk", "latin1")),
    ...idats,
    chunk("IEND", new Uint8Array(0))
  ])
}

/** Deterministic pseudo-random bytes (so a failure reproduces). */
const noise = (n: number, seed: number): Uint8Array => {
  const out = new Uint8Array(n)
  let s = seed >>> 0
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    out[i] = s >>> 24
  }
  return out
}

describe("decodePng", () => {
  for (const bpp of [3, 4] as const) {
    it(`decodes ${bpp === 4 ? "RGBA" : "RGB"} with all five filters, byte for byte`, () => {
      const width = 7
      const height = 10
      const pixels = noise(width * height * bpp, 42 + bpp)
      const png = encode(width, height, bpp, pixels, [0, 1, 2, 3, 4], 3)
      const img = decodePng(png)
      expect(img.width).toBe(width)
      expect(img.height).toBe(height)
      for (let i = 0; i < width * height; i++) {
        const got = Array.from(img.rgba.subarray(i * 4, i * 4 + 4))
        const want = [pixels[i * bpp]!, pixels[i * bpp + 1]!, pixels[i * bpp + 2]!, bpp === 4 ? pixels[i * bpp + 3]! : 255]
        expect(got, `pixel ${i}`).toEqual(want)
      }
    })
  }

  it("counts exact colours", () => {
    const width = 4
    const height = 3
    const pixels = new Uint8Array(width * height * 3)
    for (let i = 0; i < width * height; i++) pixels.set(i % 3 === 0 ? [0x12, 0xd3, 0x5e] : [0x12, 0xd3, 0x5f], i * 3)
    const img = decodePng(encode(width, height, 3, pixels, [4, 1]))
    expect(countPixels(img, 0xff12d35e)).toBe(4)
    expect(countPixels(img, 0xff12d35f)).toBe(8)
    expect(countPixels(img, 0x0012d35e)).toBe(0)
  })

  it("rejects a bad signature, an unknown filter and interlacing", () => {
    const good = encode(2, 2, 3, noise(12, 1), [0])
    const badSig = Buffer.from(good)
    badSig[1] = 0
    expect(() => decodePng(badSig)).toThrow(/signature/)
    expect(() => decodePng(encode(2, 2, 3, noise(12, 1), [5]))).toThrow(/filter/)
    expect(() => decodePng(encode(2, 2, 3, noise(12, 1), [0], 1, 1))).toThrow(/interlaced/)
  })
})
