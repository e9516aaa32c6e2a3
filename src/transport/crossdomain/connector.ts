/**
 * Cross-domain mode's host connector: each guest client gets its own opened virtio-gpu device
 * (from the `VirtGpu` service), a `CrossDomainChannel` on it, a `CrossDomainEndpoint` the
 * connection uses as its host side, and the cross-domain hooks bound to that channel. All of it is
 * opened in plain code (`connectSync`: the listener then needs no fiber per client) and released
 * with the client (the hooks' state, endpoint, channel, then the device).
 *
 * Also the startup probe: whether a device offers what cross-domain needs (spec §2 steps 2–3),
 * with one user-facing line when it does not.
 *
 * Not here: choosing the mode or the device (the CLI does), the listener (src/proxy/listener.ts).
 */
import { Effect, Runtime } from "effect"
import { Protocols } from "../../protocol/registry.js"
import { HostConnectError, scopedConnect, type HostConnector, type HostSide, type OpenedHostSide } from "../../proxy/listener.js"
import {
  PARAM_3D_FEATURES,
  PARAM_CAPSET_QUERY_FIX,
  PARAM_CONTEXT_INIT,
  PARAM_HOST_VISIBLE,
  PARAM_RESOURCE_BLOB,
  PARAM_SUPPORTED_CAPSET_IDS,
  VirtGpu,
  VirtGpuError,
  type VirtGpuDevice
} from "../../virtgpu/device.js"
import { Reactor } from "../reactor.js"
import { CrossDomainChannel, CrossDomainError } from "./channel.js"
import { CrossDomainEndpoint } from "./endpoint.js"
import { buildHooks, defaultModules, type HookModule } from "./hooks.js"
import * as P from "./protocol.js"

const describe = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/**
 * Spec §2 steps 2–3 on an opened device, without creating a context: every parameter sommelier
 * requires answers 1, capset 5 is offered, and its capabilities include a Wayland channel.
 * Returns the capabilities; throws `VirtGpuError` (reason "Unsupported" for what the VMM lacks).
 */
export const probeCrossDomain = (device: VirtGpuDevice): P.Capabilities => {
  const unsupported = (what: string): VirtGpuError =>
    new VirtGpuError({
      reason: "Unsupported",
      op: "GETPARAM",
      errno: 0,
      message: `${device.name}: ${what}; for cross-domain start crosvm with --gpu context-types=cross-domain and --wayland-sock, or QEMU with -device virtio-gpu-rutabaga-pci,cross-domain=on,wayland-socket-path=…`
    })
  const params: Array<[number, string]> = [
    [PARAM_3D_FEATURES, "3D features"],
    [PARAM_CAPSET_QUERY_FIX, "the capset query fix"],
    [PARAM_RESOURCE_BLOB, "blob resources"],
    [PARAM_HOST_VISIBLE, "host-visible memory"],
    [PARAM_CONTEXT_INIT, "context init"]
  ]
  for (const [param, what] of params) {
    let v: number
    try {
      v = device.getParam(param)
    } catch (e) {
      if (e instanceof VirtGpuError && e.reason === "Ioctl") throw unsupported(`the virtio-gpu device does not report ${what} (${e.message})`)
      throw e
    }
    if (v !== 1) throw unsupported(`the virtio-gpu device lacks ${what}`)
  }
  const mask = device.getParam(PARAM_SUPPORTED_CAPSET_IDS)
  if ((mask & (1 << P.CAPSET_CROSS_DOMAIN)) === 0) {
    throw unsupported(`the virtio-gpu device offers no cross-domain capset (capset mask 0x${(mask >>> 0).toString(16)}, capset 5 missing)`)
  }
  const caps = P.decodeCapabilities(device.getCaps(P.CAPSET_CROSS_DOMAIN, P.CAPSET_VERSION, P.CAPS_SIZE))
  if ((caps.supportedChannels & (1 << P.CHANNEL_TYPE_WAYLAND)) === 0) {
    throw unsupported(`the cross-domain capset has no Wayland channel configured (supported_channels 0x${caps.supportedChannels.toString(16)})`)
  }
  return caps
}

/** Opens one device from the service, probes it, closes it. For startup checks and `--mode auto`. */
export const probeService: Effect.Effect<P.Capabilities, VirtGpuError, VirtGpu> = Effect.scoped(
  Effect.gen(function* () {
    const gpu = yield* VirtGpu
    const device = yield* gpu.open
    return yield* Effect.try({ try: () => probeCrossDomain(device), catch: (e) => (e instanceof VirtGpuError ? e : new VirtGpuError({ reason: "Protocol", op: "probe", errno: 0, message: describe(e) })) })
  })
)

export interface CrossDomainConnectorOptions {
  /** For logs and `Server.hostPath`, e.g. "cross-domain via /dev/dri/renderD128". */
  readonly description: string
  /** Hook modules (default `defaultModules`); later ones replace earlier hooks for a message. */
  readonly modules?: ReadonlyArray<HookModule>
}

/** The connector; needs the device service, the reactor (pipes) and the protocol tables (hooks). */
export const crossDomainConnector = (options: CrossDomainConnectorOptions): Effect.Effect<HostConnector, never, VirtGpu | Reactor | Protocols> =>
  Effect.gen(function* () {
    const gpu = yield* VirtGpu
    const reactor = yield* Reactor
    const registry = yield* Protocols
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    /**
     * Plain code (the listener sets clients up from its accept callback without a fiber when it
     * can): device, channel, endpoint, hooks; on failure what was opened is closed again.
     */
    const connectSync = ({ id }: { readonly id: number }): OpenedHostSide | HostConnectError => {
      let device: VirtGpuDevice
      try {
        device = gpu.openSync()
      } catch (e) {
        return new HostConnectError({ message: `cannot open the virtio-gpu device: ${describe(e)}` })
      }
      // Off the data path: a pipe the channel gave up on, a keymap passed through as received.
      const warn = (message: string): void => void runFork(Effect.logWarning(`client ${id}: cross-domain: ${message}`))
      // The device's host side hanging up ends the connection (set once it exists).
      let lost: (message: string) => void = () => {}
      let channel: CrossDomainChannel
      try {
        channel = CrossDomainChannel.open(device, { reactor, onWarning: warn, rearm: "settle", onDeviceLost: (m) => lost(m) })
      } catch (e) {
        device.close()
        return new HostConnectError({
          message: `cannot set up the cross-domain channel on ${device.name}: ${e instanceof VirtGpuError || e instanceof CrossDomainError ? e.message : describe(e)}`
        })
      }
      const endpoint = new CrossDomainEndpoint(channel)
      // Per-connection state the hooks made (host pools, blobs): released before the endpoint.
      const releases: Array<() => void> = []
      let released = false
      const release = (): void => {
        if (released) return
        released = true
        for (const r of releases.splice(0).reverse()) {
          try {
            r()
          } catch (e) {
            warn(`releasing per-connection state failed: ${describe(e)}`)
          }
        }
        endpoint.close()
        channel.close()
        device.close()
      }
      let hooks: ReturnType<typeof buildHooks>
      try {
        hooks = buildHooks({ channel, registry, mappedIds: true, warn, onClose: (r) => void releases.push(r) }, options.modules ?? defaultModules)
      } catch (e) {
        release()
        return new HostConnectError({ message: `cannot set up the cross-domain hooks: ${describe(e)}` })
      }
      const side: HostSide = {
        endpoint,
        hooks,
        // The shm copy path creates host objects of its own (wl_shm_pool per blob).
        mappedIds: true,
        attach: (conn) => {
          endpoint.onFatal = (reason) => conn.end(reason)
          lost = (message) => conn.end({ _tag: "IoError", message })
        }
      }
      return { side, release }
    }
    return { description: options.description, connect: scopedConnect(connectSync), connectSync } satisfies HostConnector
  })
