/**
 * The shape of a cross-domain hook module (see hooks.ts): what a module gets and where it puts its
 * hooks. Kept apart from hooks.ts so modules and the module list do not import each other.
 */
import type { MessageHook } from "../../proxy/connection.js"
import type { InterfaceRegistry } from "../../protocol/registry.js"
import type { MessageDesc } from "../../protocol/types.js"
import { sys } from "../../ffi/libc.js"
import type { CrossDomainChannel } from "./channel.js"

export interface HookContext {
  readonly channel: CrossDomainChannel
  readonly registry: InterfaceRegistry
  /** The connection's shadow table allocates host ids itself (proxy-owned objects exist). */
  readonly mappedIds: boolean
  /** For things a hook skips or works around; not for the data path's normal work. */
  readonly warn: (message: string) => void
  /**
   * Registers a release for per-connection state a module keeps (mappings, GEM handles, fds);
   * run when the client's scope closes, before the channel's device is closed. Absent in tests
   * that build hooks by hand (modules then leave cleanup to the test).
   */
  readonly onClose?: (release: () => void) => void
}

export interface HookTable {
  readonly requests: Map<MessageDesc, MessageHook>
  readonly events: Map<MessageDesc, MessageHook>
}

export interface HookModule {
  readonly name: string
  readonly install: (ctx: HookContext, into: HookTable) => void
}

export const closeAll = (fds: readonly number[]): void => {
  for (const fd of fds) sys.close(fd)
}

