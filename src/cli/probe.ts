/**
 * `sommelier probe [--device PATH|emulated:PATH] [--json]`: reports the virtio-gpu device(s) and
 * whether cross-domain mode can run. Exit status: 0 cross-domain available, 2 not available.
 */
import { Command, Options } from "@effect/cli"
import { Effect, Option } from "effect"
import { formatReport, probe } from "../virtgpu/probe.js"

const device = Options.text("device").pipe(
  Options.optional,
  Options.withDescription("a render node (/dev/dri/renderD128) or emulated:PATH (a `sommelier emulate-host` socket); default: scan /dev/dri")
)
const json = Options.boolean("json").pipe(Options.withDescription("print the report as JSON"))

export const probeCommand = Command.make("probe", { device, json }, (o) =>
  Effect.sync(() => {
    const report = probe(Option.getOrUndefined(o.device))
    process.stdout.write(o.json ? JSON.stringify(report, null, 2) + "\n" : formatReport(report))
    process.exitCode = report.exitCode
  })
).pipe(
  Command.withDescription(
    "Show what the virtio-gpu device offers (driver, GETPARAMs, capsets, cross-domain capabilities) and whether cross-domain mode is available, with the VMM flag to fix it if not. Exit status 0: available, 2: not available. Example: sommelier probe --device emulated:/tmp/vgpu.sock"
  )
)
