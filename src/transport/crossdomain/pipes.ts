/**
 * Read pipes, where a guest client is the reader: `wl_data_offer.receive(mime_type, fd)` and the
 * same request of the primary-selection and data-control offers. The client passes the write end
 * of its pipe; the channel keeps a duplicate to write the host's READ data into (and closes it at
 * hang-up) and the fd itself goes out in the SEND as a READ_PIPE identifier: the host makes a pipe
 * of its own and gives the compositor its write end (spec §2 step 13, §4.8).
 *
 * Not here: write pipes (the compositor's `send` events): the channel turns those identifiers
 * into local pipes itself.
 */
import type { HookResult } from "../../proxy/connection.js"
import { DisplayErrorCode } from "../../proxy/errors.js"
import { closeAll, type HookModule } from "./module.js"

export const readPipes: HookModule = {
  name: "read-pipes",
  install: (ctx, into) => {
    for (const iface of ctx.registry.interfaces.values()) {
      for (const desc of iface.requests) {
        const a = desc.args
        if (desc.name !== "receive" || a.length !== 2 || a[0]!.type !== "string" || a[1]!.type !== "fd") continue
        into.requests.set(desc, (m): HookResult => {
          try {
            ctx.channel.adoptReadPipe(m.fds[0]!)
          } catch (e) {
            closeAll(m.fds)
            return { _tag: "Violation", code: DisplayErrorCode.Implementation, message: `cannot set up the read pipe: ${e instanceof Error ? e.message : String(e)}` }
          }
          return { _tag: "Forward" }
        })
      }
    }
  }
}
