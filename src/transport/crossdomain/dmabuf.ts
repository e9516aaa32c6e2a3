/**
 * linux-dmabuf (zwp_linux_dmabuf_v1) in cross-domain mode.
 *
 * - When the host's cross-domain capabilities say `supports_dmabuf = 0` (rutabaga's system
 *   allocator, and the emulator), host images are plain memory, not dma-bufs: the global is
 *   hidden from the client (its `wl_registry.global` and `global_remove` are dropped, and a bind
 *   by a guessed name is refused like an unknown global), so clients fall back to wl_shm.
 * - Otherwise `zwp_linux_buffer_params_v1.add(fd, …)` with a dma-buf that is a blob of this
 *   virtio-gpu device (PRIME import succeeds) is forwarded: the channel sends its resource id.
 * - Any other dma-buf (allocated on another GPU of the guest) can only be shown by copying it:
 *   when a gbm device opens in the guest (src/ffi/gbm.ts; a GPU and libgbm are needed), its
 *   planes stay in the proxy, `create_immed`/`create` import it with gbm, allocate a host image
 *   of the same format (GET_IMAGE_REQUIREMENTS), send the host that image as the buffer's only
 *   plane, and the shm path's copy machinery (shm.ts `copyState`) copies the damaged rows from
 *   a gbm read mapping at each commit. Single-plane formats only. Without gbm such an fd ends
 *   the client with a protocol error naming the request; nothing is sent.
 *
 * Not here: the generic fd check (hooks.ts), damage and copies (shm.ts, damage.ts).
 */
import type { HookResult, OutMessage } from "../../proxy/connection.js"
import { DisplayErrorCode } from "../../proxy/errors.js"
import type { UntypedNewId } from "../../protocol/types.js"
import type { ObjectEntry } from "../../shadow/table.js"
import { openGbmDevice, type GbmBo, type GbmDevice } from "../../ffi/gbm.js"
import { sys } from "../../ffi/libc.js"
import { closeAll, type HookModule } from "./module.js"
import { channelAllocator, copyState, CopyBuffer, drmFormatBpp, type HostImage, type ImageAllocator, type PixelSource } from "./shm.js"

export const DMABUF_GLOBAL = "zwp_linux_dmabuf_v1"

// zwp_linux_buffer_params_v1.error (linux-dmabuf-v1.xml)
export const PARAMS_ERROR_PLANE_SET = 2
export const PARAMS_ERROR_INCOMPLETE = 3
export const PARAMS_ERROR_INVALID_FORMAT = 4

export interface DmabufOptions {
  /** Overrides the host's `supports_dmabuf` (tests). */
  readonly supportsDmabuf?: boolean
  /**
   * The guest GPU for dma-bufs that are not blobs of this device; default: a gbm device on the
   * first render node gbm accepts, tried only with the kernel backend. null: no copy path.
   */
  readonly gbm?: (() => GbmDevice | null) | null
  /** Host images for copied dma-bufs; default: the hook context's channel. */
  readonly allocator?: ImageAllocator
}

interface ForeignPlane {
  readonly fd: number
  readonly idx: number
  readonly offset: number
  readonly stride: number
  readonly modifier: bigint
}

interface Imported {
  readonly bo: GbmBo
  readonly image: HostImage
  readonly bpp: number
  readonly width: number
  readonly height: number
}

interface ParamsState {
  readonly planes: ForeignPlane[]
  /** A blob plane was forwarded already (the params object lives on the host). */
  forwarded: boolean
  /** `create` sent, `created`/`failed` not yet seen. */
  pending: Imported | null
}

const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))

const gbmSource = (bo: GbmBo, clientId: () => number): PixelSource => ({
  begin: () => {
    try {
      const m = bo.mapRead()
      return { view: m.view, offset: 0, stride: m.stride }
    } catch (e) {
      return `cannot map the dma-buf of wl_buffer@${clientId()} for reading: ${describe(e)}`
    }
  },
  end: () => bo.unmap(),
  release: () => bo.destroy()
})

export const dmabuf = (options: DmabufOptions = {}): HookModule => ({
  name: "dmabuf",
  install: (ctx, into) => {
    const supported = options.supportsDmabuf ?? ctx.channel.caps.supportsDmabuf
    const reg = ctx.registry
    if (!supported) {
      const registry = reg.get("wl_registry")
      const global = registry?.events.find((e) => e.name === "global")
      const globalRemove = registry?.events.find((e) => e.name === "global_remove")
      const bind = registry?.requests.find((r) => r.name === "bind")
      if (global === undefined || globalRemove === undefined || bind === undefined) return
      const hidden = new Set<number>()
      into.events.set(global, (m): HookResult => {
        if (m.args[1] !== DMABUF_GLOBAL) return { _tag: "Forward" }
        hidden.add(m.args[0] as number)
        return { _tag: "Drop" }
      })
      into.events.set(globalRemove, (m): HookResult => (hidden.delete(m.args[0] as number) ? { _tag: "Drop" } : { _tag: "Forward" }))
      into.requests.set(bind, (m): HookResult => {
        const name = m.args[0] as number
        if (!hidden.has(name)) return { _tag: "Forward" }
        const nid = m.args[1] as UntypedNewId
        return {
          _tag: "Violation",
          code: DisplayErrorCode.InvalidObject,
          message: `invalid global ${name} (${nid.interface}): linux-dmabuf is not offered in cross-domain mode when the host's images are not dma-bufs (supports_dmabuf = 0)`
        }
      })
      return
    }
    const paramsIface = reg.get("zwp_linux_buffer_params_v1")
    const add = paramsIface?.requests.find((r) => r.name === "add")
    const create = paramsIface?.requests.find((r) => r.name === "create")
    const createImmed = paramsIface?.requests.find((r) => r.name === "create_immed")
    const destroy = paramsIface?.requests.find((r) => r.name === "destroy")
    const created = paramsIface?.events.find((e) => e.name === "created")
    const failed = paramsIface?.events.find((e) => e.name === "failed")
    if (add === undefined || create === undefined || destroy === undefined || created === undefined || failed === undefined) return

    // The guest GPU, opened at the first dma-buf that needs it.
    const openGbm = options.gbm === undefined ? () => (ctx.channel.device.backend === "kernel" ? openGbmDevice() : null) : options.gbm
    let gbm: GbmDevice | null | undefined
    const gbmDevice = (): GbmDevice | null => {
      if (gbm === undefined) {
        gbm = openGbm === null ? null : openGbm()
        if (gbm !== null) ctx.onClose?.(() => gbm?.close())
      }
      return gbm
    }
    let allocator = options.allocator ?? null
    const alloc = (): ImageAllocator => (allocator ??= channelAllocator(ctx.channel))
    const params = new Map<ObjectEntry, ParamsState>()
    const paramsOf = (e: ObjectEntry): ParamsState => {
      let p = params.get(e)
      if (p === undefined) {
        p = { planes: [], forwarded: false, pending: null }
        params.set(e, p)
      }
      return p
    }
    const dropPlanes = (p: ParamsState): void => {
      for (const pl of p.planes.splice(0)) sys.close(pl.fd)
    }
    ctx.onClose?.(() => {
      for (const p of params.values()) {
        dropPlanes(p)
        if (p.pending !== null) {
          p.pending.bo.destroy()
          p.pending.image.release()
        }
      }
      params.clear()
    })
    const violation = (code: number, message: string): HookResult => ({ _tag: "Violation", code, message })
    const cannotCross =
      "the dma-buf is not a buffer of this virtio-gpu device, so it cannot cross to the host in cross-domain mode " +
      "(allocate it on the virtio-gpu render node, e.g. with Mesa's virgl or venus driver)"

    into.requests.set(add, (m): HookResult => {
      const [fd, idx, offset, stride, hi, lo] = m.args as [number, number, number, number, number, number]
      const p = paramsOf(m.entry)
      const kind = ctx.channel.classify(fd)
      if (kind !== null && kind._tag === "Blob" && ctx.channel.precheck(fd)) {
        if (p.planes.length > 0) {
          closeAll(m.fds)
          return violation(PARAMS_ERROR_PLANE_SET, "planes of one buffer must all be virtio-gpu buffers or all be copied; this one mixes them")
        }
        p.forwarded = true
        return { _tag: "Forward" }
      }
      const dev = gbmDevice()
      if (dev === null || p.forwarded) {
        closeAll(m.fds)
        return violation(PARAMS_ERROR_INVALID_FORMAT, dev === null ? cannotCross : "planes of one buffer must all be virtio-gpu buffers or all be copied; this one mixes them")
      }
      // Kept here until create/create_immed: the host never sees this fd.
      p.planes.push({ fd, idx, offset, stride, modifier: (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0) })
      return { _tag: "Drop" }
    })

    /** gbm import of the kept planes + a host image for them; closes the planes' fds. */
    const importPlanes = (p: ParamsState, width: number, height: number, format: number): Imported | HookResult => {
      const planes = p.planes.splice(0)
      try {
        const bpp = drmFormatBpp(format)
        if (bpp === null || planes.length !== 1 || planes[0]!.idx !== 0) {
          return violation(PARAMS_ERROR_INVALID_FORMAT, `format 0x${(format >>> 0).toString(16)} with ${planes.length} plane(s) cannot be copied to the host (single-plane packed formats only)`)
        }
        if (!(width > 0 && height > 0)) return violation(5 /* invalid_dimensions */, `invalid size ${width}x${height}`)
        const pl = planes[0]!
        let bo: GbmBo
        try {
          bo = gbmDevice()!.importDmabuf(width, height, format, [{ fd: pl.fd, offset: pl.offset, stride: pl.stride }], pl.modifier)
        } catch (e) {
          return violation(PARAMS_ERROR_INCOMPLETE, `the guest GPU cannot import the dma-buf: ${describe(e)}`)
        }
        let image: HostImage
        try {
          image = alloc().allocate(width, height, format)
        } catch (e) {
          bo.destroy()
          return violation(PARAMS_ERROR_INVALID_FORMAT, `no host memory for a ${width}x${height} buffer: ${describe(e)}`)
        }
        return { bo, image, bpp, width, height }
      } finally {
        for (const pl of planes) sys.close(pl.fd)
      }
    }
    const isImported = (r: Imported | HookResult): r is Imported => "bo" in r
    /** The host image as the buffer's one plane. */
    const hostAdd = (paramsHostId: number, imp: Imported): OutMessage | HookResult => {
      let fd: number
      try {
        fd = imp.image.exportFd()
      } catch (e) {
        imp.bo.destroy()
        imp.image.release()
        return violation(PARAMS_ERROR_INCOMPLETE, `cannot export the host buffer: ${describe(e)}`)
      }
      const mod = imp.image.modifier
      return { objectId: paramsHostId, desc: add, args: [fd, 0, imp.image.offset, imp.image.stride, Number(mod >> 32n) >>> 0, Number(mod & 0xffffffffn) >>> 0] }
    }
    // At install time: the connection may copy the hook maps (mergeHooks), so later additions would be lost.
    const state = copyState(ctx, into)
    const copies = (): typeof state => state

    if (createImmed !== undefined) {
      into.requests.set(createImmed, (m): HookResult => {
        const p = params.get(m.entry)
        if (p === undefined || p.planes.length === 0) return { _tag: "Forward" }
        const [bufferId, width, height, format] = m.args as [number, number, number, number]
        const imp = importPlanes(p, width, height, format)
        if (!isImported(imp)) return imp
        const first = hostAdd(m.entry.hostId, imp)
        if (!("desc" in first)) return first
        const entry = m.connection.shadow.byHost(bufferId)!
        copies().add(new CopyBuffer(entry, imp.width, imp.height, imp.bpp, imp.image, gbmSource(imp.bo, () => entry.clientId)))
        return { _tag: "Replace", messages: [first, { objectId: m.entry.hostId, desc: createImmed, args: m.args }] }
      })
    }
    into.requests.set(create, (m): HookResult => {
      const p = params.get(m.entry)
      if (p === undefined || p.planes.length === 0) return { _tag: "Forward" }
      const [width, height, format] = m.args as [number, number, number]
      const imp = importPlanes(p, width, height, format)
      if (!isImported(imp)) return imp
      const first = hostAdd(m.entry.hostId, imp)
      if (!("desc" in first)) return first
      p.pending = imp
      return { _tag: "Replace", messages: [first, { objectId: m.entry.hostId, desc: create, args: m.args }] }
    })
    into.events.set(created, (m): HookResult => {
      const p = params.get(m.entry)
      const imp = p?.pending ?? null
      if (p !== undefined && imp !== null) {
        p.pending = null
        const entry = m.connection.shadow.byHost(m.args[0] as number)
        if (entry !== undefined) copies().add(new CopyBuffer(entry, imp.width, imp.height, imp.bpp, imp.image, gbmSource(imp.bo, () => entry.clientId)))
      }
      return { _tag: "Forward" }
    })
    into.events.set(failed, (m): HookResult => {
      const p = params.get(m.entry)
      if (p?.pending != null) {
        p.pending.bo.destroy()
        p.pending.image.release()
        p.pending = null
      }
      return { _tag: "Forward" }
    })
    into.requests.set(destroy, (m): HookResult => {
      const p = params.get(m.entry)
      if (p !== undefined) {
        dropPlanes(p)
        if (p.pending !== null) {
          // A `created` for a destroyed params object never reaches the client: nothing to copy into.
          p.pending.bo.destroy()
          p.pending.image.release()
        }
        params.delete(m.entry)
      }
      return { _tag: "Forward" }
    })
  }
})
