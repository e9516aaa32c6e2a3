/**
 * Window tagging (`--tag`): every toplevel title a guest client sets reaches the host compositor
 * as `[TAG] title` and every app id as `TAG.app_id`, so the host's task bar and window rules can
 * tell guest windows apart. Implemented as request hooks on `xdg_toplevel.set_title` /
 * `set_app_id` (and the legacy `wl_shell_surface.set_title` / `set_class`), which replace the
 * message with one carrying the prefixed string.
 *
 * It only builds hooks; the listener installs them and the connection runs them.
 */
import type { InterfaceRegistry } from "../protocol/registry.js"
import type { MessageDesc } from "../protocol/types.js"
import { Forward, type ConnectionHooks, type HookResult, type MessageHook } from "./connection.js"

export interface TagPrefixes {
  /** Put before every toplevel title; "" leaves titles alone. */
  readonly titlePrefix: string
  /** Put before every app id; "" leaves app ids alone. */
  readonly appIdPrefix: string
}

/**
 * The CLI's rule: `--tag TEXT` gives `[TEXT] ` and `TEXT.`; `--title-prefix` and
 * `--app-id-prefix` override one each. null when nothing is to be prefixed.
 */
export const tagPrefixes = (o: { readonly tag?: string | undefined; readonly titlePrefix?: string | undefined; readonly appIdPrefix?: string | undefined }): TagPrefixes | null => {
  const titlePrefix = o.titlePrefix ?? (o.tag !== undefined && o.tag !== "" ? `[${o.tag}] ` : "")
  const appIdPrefix = o.appIdPrefix ?? (o.tag !== undefined && o.tag !== "" ? `${o.tag}.` : "")
  return titlePrefix === "" && appIdPrefix === "" ? null : { titlePrefix, appIdPrefix }
}

/** Bytes of a message carrying one string of `n` UTF-8 bytes: header, length word, NUL, padding. */
const messageSize = (n: number): number => 8 + 4 + ((n + 1 + 3) & ~3)

/**
 * `prefix + s`, cut at a character boundary so that the message carrying it is at most
 * `maxMessage` bytes: a compositor disconnects a client whose message exceeds its limit
 * (libwayland's is 4096), and a long title must not cost the client its connection.
 */
export const prefixed = (prefix: string, s: string, maxMessage: number): string => {
  const full = prefix + s
  const bytes = Buffer.from(full, "utf8")
  if (messageSize(bytes.length) <= maxMessage) return full
  let n = Math.max(0, ((maxMessage - 12) & ~3) - 1)
  // Step back over UTF-8 continuation bytes (10xxxxxx) to a character start.
  while (n > 0 && (bytes[n]! & 0xc0) === 0x80) n--
  return bytes.subarray(0, n).toString("utf8")
}

const prefixHook =
  (prefix: string): MessageHook =>
  (m): HookResult => {
    const s = m.args[0]
    if (typeof s !== "string") return Forward
    const value = prefixed(prefix, s, m.connection.options.limits.maxMessageSize)
    return { _tag: "Replace", messages: [{ objectId: m.entry.hostId, desc: m.desc, args: [value] }] }
  }

/** Request hooks that prefix titles and app ids; messages the registry lacks are skipped. */
export const tagHooks = (registry: InterfaceRegistry, prefixes: TagPrefixes): ConnectionHooks => {
  const requests = new Map<MessageDesc, MessageHook>()
  const add = (iface: string, request: string, prefix: string): void => {
    if (prefix === "") return
    const desc = registry.get(iface)?.requests.find((r) => r.name === request)
    if (desc !== undefined) requests.set(desc, prefixHook(prefix))
  }
  add("xdg_toplevel", "set_title", prefixes.titlePrefix)
  add("xdg_toplevel", "set_app_id", prefixes.appIdPrefix)
  add("wl_shell_surface", "set_title", prefixes.titlePrefix)
  add("wl_shell_surface", "set_class", prefixes.appIdPrefix)
  return { requests, events: new Map() }
}
