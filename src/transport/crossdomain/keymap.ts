/**
 * Keymaps: the compositor's `wl_keyboard.keymap` fd arrives as a host blob exported as a dma-buf,
 * which clients cannot map MAP_PRIVATE (wl_keyboard v7 requires clients to map it that way) and
 * could write into. The hook copies its bytes into a fresh memfd sealed against
 * shrink/grow/write/further sealing, like compositors send it, and passes that instead.
 *
 * Not here: how the blob became an fd (channel.ts).
 */
import type { HookResult } from "../../proxy/connection.js"
import { writeSync } from "node:fs"
import { F_ADD_SEALS, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, sys } from "../../ffi/libc.js"
import { mapShared, memfdCreate } from "../memfd.js"
import type { HookModule } from "./module.js"

/** Copies `size` bytes of `fd` into a sealed read-only memfd; returns the new fd. Throws on failure. */
export const sealedCopy = (fd: number, size: number, name = "sommelier-keymap"): number => {
  const src = mapShared(fd, size, { readOnly: true })
  let out = -1
  try {
    out = memfdCreate(name, size)
    // write(), not a mapping: F_SEAL_WRITE fails while a writable shared mapping exists.
    let done = 0
    while (done < size) done += writeSync(out, src.view, done, size - done, done)
    const r = sys.fcntl(out, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)
    if (r < 0) throw new Error(`F_ADD_SEALS failed with errno ${-r}`)
    const copy = out
    out = -1
    return copy
  } finally {
    src.unmap()
    if (out >= 0) sys.close(out)
  }
}

export const keymaps: HookModule = {
  name: "keymaps",
  install: (ctx, into) => {
    const desc = ctx.registry.get("wl_keyboard")?.events.find((e) => e.name === "keymap")
    if (desc === undefined) return
    into.events.set(desc, (m): HookResult => {
      const [format, fd, size] = m.args as [number, number, number]
      if (size === 0) return { _tag: "Forward" }
      let copy: number
      try {
        copy = sealedCopy(fd, size)
      } catch (e) {
        ctx.warn(`keymap of ${size} bytes forwarded as received: cannot copy it (${e instanceof Error ? e.message : String(e)})`)
        return { _tag: "Forward" }
      }
      sys.close(fd)
      return { _tag: "Replace", messages: [{ objectId: m.entry.clientId, desc: m.desc, args: [format, copy, size] }] }
    })
  }
}
