/**
 * The message hooks cross-domain mode needs, built from handler modules. Each module installs
 * hooks for the messages it translates; a later module replaces an earlier one's hook for the
 * same message, so a module that translates an fd-carrying request (the shm copy path, dma-buf
 * import) takes over that request from the generic fd check simply by coming later in the list.
 *
 * Modules here: `fdCheck` (every request with fds: refuse, with a `wl_display.error` naming the
 * message, any fd that cannot cross before anything is sent), `hostOnlyIds` (mapped shadow ids:
 * `delete_id` of proxy-owned objects stays in the proxy); `readPipes` (pipes.ts) and `keymaps`
 * (keymap.ts). Other modules live in their own files and are added to `defaultModules`.
 *
 * Not here: the data path (connection.ts runs the hooks), the channel (channel.ts).
 */
import type { ConnectionHooks, HookResult } from "../../proxy/connection.js"
import { DisplayErrorCode } from "../../proxy/errors.js"
import { closeAll, type HookContext, type HookModule, type HookTable } from "./module.js"
import { keymaps } from "./keymap.js"
import { readPipes } from "./pipes.js"
import { shmCopy } from "./shm.js"
import { dmabuf } from "./dmabuf.js"

export type { HookContext, HookModule, HookTable } from "./module.js"

/** Every request that carries fds: each fd must be a blob or an adopted pipe, checked before the write. */
export const fdCheck: HookModule = {
  name: "fd-check",
  install: (ctx, into) => {
    for (const iface of ctx.registry.interfaces.values()) {
      for (const desc of iface.requests) {
        if (desc.fdCount === 0) continue
        const argNames = desc.args.filter((a) => a.type === "fd").map((a) => a.name)
        into.requests.set(desc, (m): HookResult => {
          for (let i = 0; i < m.fds.length; i++) {
            if (!ctx.channel.precheck(m.fds[i]!)) {
              closeAll(m.fds)
              return {
                _tag: "Violation",
                code: DisplayErrorCode.Implementation,
                message:
                  `fd argument ${argNames[i] ?? i} cannot cross to the host in cross-domain mode: ` +
                  `it is neither a virtio-gpu buffer nor a pipe this proxy set up (a wl_shm memfd or other guest file needs a copy the proxy does not make here)`
              }
            }
          }
          return { _tag: "Forward" }
        })
      }
    }
  }
}

/**
 * Mapped shadow ids: the connection maps a freed proxy-owned object's id to client id 0; that
 * `delete_id` is the proxy's, not the client's.
 */
export const hostOnlyIds: HookModule = {
  name: "host-only-ids",
  install: (ctx, into) => {
    if (!ctx.mappedIds) return
    const deleteId = ctx.registry.get("wl_display")?.events[1]
    if (deleteId === undefined) return
    into.events.set(deleteId, (m) => (m.args[0] === 0 ? { _tag: "Drop" } : { _tag: "Forward" }))
  }
}

/** In order: later modules replace earlier hooks for the same message. */
export const defaultModules: ReadonlyArray<HookModule> = [fdCheck, hostOnlyIds, readPipes, keymaps, shmCopy(), dmabuf()]

export const buildHooks = (ctx: HookContext, modules: ReadonlyArray<HookModule> = defaultModules): ConnectionHooks => {
  const table: HookTable = { requests: new Map(), events: new Map() }
  for (const m of modules) m.install(ctx, table)
  return table
}
