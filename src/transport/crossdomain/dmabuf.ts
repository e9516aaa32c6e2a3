/**
 * linux-dmabuf (zwp_linux_dmabuf_v1) in cross-domain mode.
 *
 * - When the host's cross-domain capabilities say `supports_dmabuf = 0` (rutabaga's system
 *   allocator, and the emulator), host images are plain memory, not dma-bufs: the global is
 *   hidden from the client (its `wl_registry.global` and `global_remove` are dropped, and a bind
 *   by a guessed name is refused like an unknown global), so clients fall back to wl_shm.
 * - Otherwise `zwp_linux_buffer_params_v1.add(fd, …)` may only carry a dma-buf that is a blob of
 *   this virtio-gpu device (PRIME import succeeds): it then crosses as its resource id (the
 *   channel translates it at SEND). Any other fd ends the client with a protocol error naming
 *   the request; nothing is sent.
 *
 * Not here: copying foreign dma-bufs into host memory (would need the guest GPU through
 * libgbm, src/ffi/gbm.ts; see `dmabufImport` there), the generic fd check (hooks.ts).
 */
import type { HookResult } from "../../proxy/connection.js"
import { DisplayErrorCode } from "../../proxy/errors.js"
import type { UntypedNewId } from "../../protocol/types.js"
import { closeAll, type HookModule } from "./module.js"

export const DMABUF_GLOBAL = "zwp_linux_dmabuf_v1"

/** zwp_linux_buffer_params_v1.error (linux-dmabuf-v1.xml). */
export const PARAMS_ERROR_INVALID_FORMAT = 4

export interface DmabufOptions {
  /** Overrides the host's `supports_dmabuf` (tests). */
  readonly supportsDmabuf?: boolean
}

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
    const add = reg.get("zwp_linux_buffer_params_v1")?.requests.find((r) => r.name === "add")
    if (add === undefined) return
    into.requests.set(add, (m): HookResult => {
      const fd = m.args[0] as number
      const kind = ctx.channel.classify(fd)
      if (kind === null || kind._tag !== "Blob" || !ctx.channel.precheck(fd)) {
        closeAll(m.fds)
        return {
          _tag: "Violation",
          code: PARAMS_ERROR_INVALID_FORMAT,
          message:
            "the dma-buf is not a buffer of this virtio-gpu device, so it cannot cross to the host in cross-domain mode " +
            "(allocate it on the virtio-gpu render node, e.g. with Mesa's virgl or venus driver)"
        }
      }
      return { _tag: "Forward" }
    })
  }
})
