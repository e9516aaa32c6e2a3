/**
 * The `--trace` text: one line per message in libwayland's `WAYLAND_DEBUG` format
 * (`wl_closure_print` in connection.c), prefixed with the proxy's connection id and direction.
 *
 * Only runs when tracing is on: it decodes every message, which the default path never does.
 */
import type { ArgValue, MessageDesc, UntypedNewId } from "../protocol/types.js"

/** `[ms.µs]` from the realtime clock, as libwayland prints it (`%7u.%03u`, wrapping like its u32). */
export const traceTimestamp = (): string => {
  const us = Math.floor((performance.timeOrigin + performance.now()) * 1000) % 0x100000000
  const ms = Math.floor(us / 1000)
  return `[${String(ms).padStart(7, " ")}.${String(us % 1000).padStart(3, "0")}]`
}

const formatArg = (desc: MessageDesc, i: number, value: ArgValue, objectName: (id: number) => string): string => {
  const a = desc.args[i]!
  switch (a.type) {
    case "int":
      return String(value as number)
    case "uint":
      return String((value as number) >>> 0)
    case "fixed":
      return (value as number).toFixed(6)
    case "string":
      return value === null ? "nil" : `"${value as string}"`
    case "object": {
      const id = value as number
      return id === 0 ? "nil" : objectName(id)
    }
    case "new_id": {
      if (typeof value === "object" && value !== null && !(value instanceof Uint8Array)) {
        // Untyped new_id: libwayland prints the interface string and version as their own
        // arguments, then the id with an unknown type.
        const u = value as UntypedNewId
        return `"${u.interface}", ${u.version}, new id [unknown]@${u.id}`
      }
      const id = value as number
      return id === 0 ? "nil" : `new id ${a.interface ?? "[unknown]"}@${id}`
    }
    case "array":
      return `array[${(value as Uint8Array).length}]`
    case "fd":
      return `fd ${value as number}`
  }
}

/**
 * One trace line. `sent` marks the direction the way libwayland does (` -> ` when the proxy sends
 * it on that side); `prefix` names the connection and side, e.g. `[c3 client→host]`.
 */
export const formatTraceLine = (
  prefix: string,
  sent: boolean,
  interfaceName: string,
  objectId: number,
  desc: MessageDesc,
  args: readonly ArgValue[],
  objectName: (id: number) => string,
  discarded = false
): string => {
  let s = `${prefix} ${traceTimestamp()} ${discarded ? "discarded " : ""}${sent ? " -> " : ""}${interfaceName}@${objectId}.${desc.name}(`
  for (let i = 0; i < args.length; i++) {
    if (i > 0) s += ", "
    s += formatArg(desc, i, args[i]!, objectName)
  }
  return s + ")"
}
