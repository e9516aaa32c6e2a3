/**
 * Choosing a VirtGpu backend from a device spec, as the CLI's `--virtgpu` / `--device` take it:
 * - undefined or "" → the kernel backend on the first virtio-gpu render node;
 * - "emulated:PATH" → the emulated backend talking to `sommelier emulate-host --listen PATH`;
 * - anything else → the kernel backend on that render node path.
 */
import type { Layer } from "effect"
import type { VirtGpu, VirtGpuError } from "./device.js"
import { emulatedLayer } from "./emulated.js"
import { kernelLayer } from "./kernel.js"

export type DeviceSpec = { readonly kind: "kernel"; readonly path?: string } | { readonly kind: "emulated"; readonly socketPath: string }

export const EMULATED_PREFIX = "emulated:"

export const parseDeviceSpec = (spec?: string): DeviceSpec => {
  if (spec === undefined || spec === "") return { kind: "kernel" }
  if (spec.startsWith(EMULATED_PREFIX)) return { kind: "emulated", socketPath: spec.slice(EMULATED_PREFIX.length) }
  return { kind: "kernel", path: spec }
}

export const layerFromSpec = (spec?: string): Layer.Layer<VirtGpu, VirtGpuError> => {
  const s = parseDeviceSpec(spec)
  return s.kind === "emulated" ? emulatedLayer(s.socketPath) : kernelLayer(s.path)
}
