/**
 * libgbm through koffi, for a guest that has a GPU: a gbm device on a DRM render node, dma-buf
 * import (GBM_BO_IMPORT_FD_MODIFIER) and CPU read mappings (gbm_bo_map), which let the proxy copy
 * a client's dma-buf that the host cannot import into host memory.
 *
 * Guarded: `loadGbm()` is null when libgbm.so.1 cannot be loaded, `openGbmDevice()` is null when
 * no render node opens or gbm refuses it (no GPU, no /dev/dri): callers then simply have no gbm
 * path. Pointers cross as numbers (`intptr_t`), like libc.ts does for mmap.
 *
 * Not here: deciding when to import or copy (src/transport/crossdomain/).
 */
import koffi from "koffi"
import { O_CLOEXEC, O_RDWR, sys, viewOf } from "./libc.js"

export const GBM_BO_IMPORT_FD = 0x5503
export const GBM_BO_IMPORT_FD_MODIFIER = 0x5504
export const GBM_BO_USE_SCANOUT = 1 << 0
export const GBM_BO_USE_RENDERING = 1 << 2
export const GBM_BO_USE_LINEAR = 1 << 4
export const GBM_BO_TRANSFER_READ = 1 << 0
/** DRM_FORMAT_MOD_INVALID: "no explicit modifier" in linux-dmabuf (modifier_hi/lo all ones in the low 56 bits). */
export const DRM_FORMAT_MOD_INVALID = 0x00ffffffffffffffn

/** struct gbm_import_fd_modifier_data (gbm.h): 4 u32, fds[4], strides[4], offsets[4], u64 modifier. */
const IMPORT_DATA_SIZE = 72

type Fn = (...args: Array<unknown>) => unknown

interface GbmLib {
  readonly createDevice: Fn
  readonly deviceDestroy: Fn
  readonly backendName: Fn
  readonly isFormatSupported: Fn
  readonly boImport: Fn
  readonly boMap: Fn
  readonly boUnmap: Fn
  readonly boDestroy: Fn
}

let loaded: GbmLib | null | undefined

/** libgbm's functions, or null when the library is not installed. Loaded once. */
export const loadGbm = (): GbmLib | null => {
  if (loaded !== undefined) return loaded
  try {
    const lib = koffi.load("libgbm.so.1")
    const f = (decl: string): Fn => lib.func(decl) as unknown as Fn
    loaded = {
      createDevice: f("intptr_t gbm_create_device(int fd)"),
      deviceDestroy: f("void gbm_device_destroy(intptr_t gbm)"),
      backendName: f("const char *gbm_device_get_backend_name(intptr_t gbm)"),
      isFormatSupported: f("int gbm_device_is_format_supported(intptr_t gbm, uint32_t format, uint32_t usage)"),
      boImport: f("intptr_t gbm_bo_import(intptr_t gbm, uint32_t type, void *buffer, uint32_t usage)"),
      boMap: f("intptr_t gbm_bo_map(intptr_t bo, uint32_t x, uint32_t y, uint32_t width, uint32_t height, uint32_t flags, void *stride, void *map_data)"),
      boUnmap: f("void gbm_bo_unmap(intptr_t bo, intptr_t map_data)"),
      boDestroy: f("void gbm_bo_destroy(intptr_t bo)")
    }
  } catch {
    loaded = null
  }
  return loaded
}

export interface DmabufPlane {
  readonly fd: number
  readonly offset: number
  readonly stride: number
}

/** An imported buffer object; `view` is valid only between `mapRead` and `unmap`. */
export interface GbmBo {
  readonly width: number
  readonly height: number
  /** Maps the whole buffer for reading (detiled by the driver when needed). Throws when it cannot. */
  mapRead(): { readonly view: Uint8Array; readonly stride: number }
  unmap(): void
  destroy(): void
}

export interface GbmDevice {
  /** The render node, e.g. /dev/dri/renderD128. */
  readonly path: string
  readonly backend: string
  isFormatSupported(format: number, usage: number): boolean
  /** Imports a dma-buf (the fds stay the caller's). Throws when the driver refuses it. */
  importDmabuf(width: number, height: number, format: number, planes: readonly DmabufPlane[], modifier: bigint): GbmBo
  close(): void
}

const makeBo = (g: GbmLib, bo: number, width: number, height: number): GbmBo => {
  const stride = new Uint32Array(1)
  const mapData = new BigUint64Array(1)
  // gbm_bo_map hands back the same address for a linear buffer each time; one view per address.
  let viewAt = 0
  let viewLen = 0
  let view: Uint8Array | null = null
  let mapped = false
  let live = true
  return {
    width,
    height,
    mapRead: () => {
      if (!live) throw new Error("gbm_bo_map on a destroyed buffer")
      mapData[0] = 0n
      const addr = g.boMap(bo, 0, 0, width, height, GBM_BO_TRANSFER_READ, stride, mapData) as number
      if (addr === 0) throw new Error(`gbm_bo_map of a ${width}x${height} buffer failed (errno ${koffi.errno()})`)
      mapped = true
      const len = stride[0]! * height
      if (view === null || addr !== viewAt || len !== viewLen) {
        view = new Uint8Array(viewOf(addr, len))
        viewAt = addr
        viewLen = len
      }
      return { view, stride: stride[0]! }
    },
    unmap: () => {
      if (!mapped) return
      mapped = false
      g.boUnmap(bo, Number(mapData[0]!))
    },
    destroy: () => {
      if (!live) return
      if (mapped) {
        mapped = false
        g.boUnmap(bo, Number(mapData[0]!))
      }
      live = false
      view = null
      g.boDestroy(bo)
    }
  }
}

/**
 * A gbm device on `path`, or on the first render node gbm accepts (renderD128…renderD191).
 * null when libgbm is missing or no node works.
 */
export const openGbmDevice = (path?: string): GbmDevice | null => {
  const g = loadGbm()
  if (g === null) return null
  const candidates = path !== undefined ? [path] : Array.from({ length: 64 }, (_, i) => `/dev/dri/renderD${128 + i}`)
  for (const p of candidates) {
    const fd = sys.open(p, O_RDWR | O_CLOEXEC)
    if (fd < 0) continue
    const dev = g.createDevice(fd) as number
    if (dev === 0) {
      sys.close(fd)
      continue
    }
    const data = new Uint8Array(IMPORT_DATA_SIZE)
    const dv = new DataView(data.buffer)
    let open = true
    return {
      path: p,
      backend: String(g.backendName(dev) ?? "unknown"),
      isFormatSupported: (format, usage) => (g.isFormatSupported(dev, format >>> 0, usage >>> 0) as number) !== 0,
      importDmabuf: (width, height, format, planes, modifier) => {
        if (!open) throw new Error("gbm device closed")
        if (planes.length === 0 || planes.length > 4) throw new Error(`${planes.length} planes`)
        data.fill(0)
        dv.setUint32(0, width, true)
        dv.setUint32(4, height, true)
        dv.setUint32(8, format >>> 0, true)
        dv.setUint32(12, planes.length, true)
        planes.forEach((pl, i) => {
          dv.setInt32(16 + 4 * i, pl.fd, true)
          dv.setInt32(32 + 4 * i, pl.stride, true)
          dv.setInt32(48 + 4 * i, pl.offset, true)
        })
        dv.setBigUint64(64, BigInt.asUintN(64, modifier), true)
        const bo = g.boImport(dev, GBM_BO_IMPORT_FD_MODIFIER, data, GBM_BO_USE_LINEAR) as number
        if (bo === 0) throw new Error(`gbm_bo_import of a ${width}x${height} dma-buf (format 0x${(format >>> 0).toString(16)}, modifier 0x${modifier.toString(16)}) failed`)
        return makeBo(g, bo, width, height)
      },
      close: () => {
        if (!open) return
        open = false
        g.deviceDestroy(dev)
        sys.close(fd)
      }
    }
  }
  return null
}
