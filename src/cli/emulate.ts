/**
 * `sommelier emulate-host --listen PATH [--host-display NAME|PATH]`: the VMM side of a
 * cross-domain virtio-gpu device in its own process, for running and testing cross-domain mode
 * on a machine without virtio-gpu. Guests reach it with `--virtgpu emulated:PATH`.
 */
import { Command, Options } from "@effect/cli"
import { Effect, Option } from "effect"
import { resolve } from "node:path"
import { CHANNEL_TYPE_WAYLAND } from "../transport/crossdomain/protocol.js"
import { startEmulator } from "../emulator/server.js"
import { hostDisplayPath, ServeError } from "../proxy/paths.js"
import * as Reactor from "../transport/reactor.js"

const listen = Options.text("listen").pipe(
  Options.withDescription("socket path guests connect to (sommelier serve --virtgpu emulated:PATH)")
)
const hostDisplay = Options.text("host-display").pipe(
  Options.optional,
  Options.withDescription("the host compositor (the cross-domain Wayland channel): a socket name in $XDG_RUNTIME_DIR or an absolute path (default $WAYLAND_DISPLAY, else wayland-0)")
)

export const emulateHostCommand = Command.make("emulate-host", { listen, hostDisplay }, (o) =>
  Effect.scoped(
    Effect.gen(function* () {
      const host = hostDisplayPath(Option.getOrUndefined(o.hostDisplay))
      if (host instanceof ServeError) return yield* Effect.fail(host.message)
      const listenPath = resolve(o.listen)
      yield* startEmulator({ listenPath, channels: new Map([[CHANNEL_TYPE_WAYLAND, host]]) }).pipe(
        Effect.mapError((e) => e.message)
      )
      process.stderr.write(`sommelier emulate-host: emulating a cross-domain virtio-gpu on ${listenPath}; Wayland channel → ${host}\n`)
      // One line on stdout once guests can connect (scripts and tests wait for it).
      process.stdout.write(`listening ${listenPath}\n`)
      return yield* Effect.never
    })
  ).pipe(
    Effect.provide(Reactor.layer),
    Effect.catchAll((e) =>
      Effect.sync(() => {
        process.stderr.write(`sommelier emulate-host: ${typeof e === "string" ? e : e.message}\n`)
        process.exit(1)
      })
    )
  )
).pipe(
  Command.withDescription(
    "Emulate the host side (VMM + rutabaga cross-domain) of a virtio-gpu device in this process, for guests using --virtgpu emulated:PATH. Example: sommelier emulate-host --listen /tmp/vgpu.sock --host-display wayland-0"
  )
)
