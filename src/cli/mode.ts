/**
 * `--mode` and `--virtgpu` → how each client's host side is opened, for `serve` and `run`.
 *
 * - local: a Unix socket to the host compositor per client (the listener's default connector).
 * - cross-domain: a virtio-gpu cross-domain channel per client, on the device `--virtgpu` names
 *   (a render node path, or `emulated:PATH` for `sommelier emulate-host`), else the first
 *   virtio-gpu render node. The device is probed first, so a missing node, a node that is not
 *   virtio-gpu, a VMM without the cross-domain capset or a Wayland channel, or a permission
 *   problem ends startup with one line saying what to change.
 * - auto: cross-domain when the device offers it, else local when a host compositor answers;
 *   it says on stderr which one it chose and why.
 *
 * Not here: the connector (src/transport/crossdomain/connector.ts), the probe's verdicts
 * (src/virtgpu/probe.ts).
 */
import { Effect, Option } from "effect"
import { Protocols } from "../protocol/registry.js"
import type { HostConnector } from "../proxy/listener.js"
import { hostDisplayPath, ServeError } from "../proxy/paths.js"
import { crossDomainConnector } from "../transport/crossdomain/connector.js"
import { Reactor } from "../transport/reactor.js"
import { connectUnix, closeFd } from "../transport/socket.js"
import { layerFromSpec, parseDeviceSpec } from "../virtgpu/layers.js"
import { probe } from "../virtgpu/probe.js"

export type Mode = "auto" | "local" | "cross-domain"

/** The device a probe found usable, as a `--virtgpu` spec; or why there is none. */
const findCrossDomain = (spec: string | undefined): { readonly spec: string } | { readonly why: string } => {
  const report = probe(spec)
  if (!report.verdict.available) return { why: report.verdict.message }
  const parsed = parseDeviceSpec(spec)
  if (parsed.kind === "emulated") return { spec: spec! }
  const dev = report.devices.find((d) => d.verdict.available)
  return { spec: dev?.device ?? spec ?? "" }
}

const hostReachable = (path: string): Effect.Effect<boolean> =>
  connectUnix(path).pipe(
    Effect.map((fd) => {
      closeFd(fd)
      return true
    }),
    Effect.orElseSucceed(() => false)
  )

const crossDomain = (spec: string): Effect.Effect<HostConnector, ServeError, Reactor | Protocols> =>
  crossDomainConnector({ description: `cross-domain via ${spec}` }).pipe(
    Effect.provide(layerFromSpec(spec)),
    Effect.mapError((e) => new ServeError({ reason: "Mode", message: `cross-domain mode: ${e.message}` }))
  )

/**
 * The connector for `mode`: null means local (the listener connects to the host display itself).
 * Fails with a one-line ServeError when the chosen mode cannot run.
 */
export const hostConnectorFor = (
  mode: Mode,
  virtgpu: Option.Option<string>,
  hostDisplay: Option.Option<string>
): Effect.Effect<HostConnector | null, ServeError, Reactor | Protocols> =>
  Effect.gen(function* () {
    if (mode === "local") return null
    const spec = Option.getOrUndefined(virtgpu)
    const found = findCrossDomain(spec)
    if (mode === "cross-domain") {
      if ("why" in found) return yield* Effect.fail(new ServeError({ reason: "Mode", message: `cross-domain mode: ${found.why}` }))
      yield* Effect.logInfo(`mode: cross-domain via ${found.spec}`)
      return yield* crossDomain(found.spec)
    }
    if ("spec" in found) {
      yield* Effect.logInfo(`mode: cross-domain (auto): ${found.spec} offers the cross-domain capset with a Wayland channel`)
      return yield* crossDomain(found.spec)
    }
    const host = hostDisplayPath(Option.getOrUndefined(hostDisplay))
    if (!(host instanceof ServeError) && (yield* hostReachable(host))) {
      yield* Effect.logInfo(`mode: local (auto): no cross-domain device (${found.why}); host compositor at ${host}`)
      return null
    }
    return yield* Effect.fail(
      new ServeError({
        reason: "Mode",
        message: `--mode auto found neither a cross-domain device (${found.why}) nor a host compositor (${host instanceof ServeError ? host.message : `nothing answers at ${host}`})`
      })
    )
  })
