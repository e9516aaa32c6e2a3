/**
 * The kernel backend where this machine allows it (it has no virtio-gpu): node discovery and
 * the errors a user sees, plus device-spec parsing. The ioctls themselves are covered by the
 * layout test and run for real only in a VM guest.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { existsSync, readdirSync } from "node:fs"
import { VirtGpu, VirtGpuError } from "../../src/virtgpu/device.js"
import { findRenderNode, KernelDevice, kernelLayer, scanRenderNodes } from "../../src/virtgpu/kernel.js"
import { layerFromSpec, parseDeviceSpec } from "../../src/virtgpu/layers.js"
import { withNoFdLeak } from "../helpers/fds.js"

const hasRenderNodes = existsSync("/dev/dri") && readdirSync("/dev/dri").some((f) => f.startsWith("renderD"))

const failure = (f: () => unknown): VirtGpuError => {
  try {
    f()
  } catch (e) {
    if (e instanceof VirtGpuError) return e
    throw e
  }
  throw new Error("did not throw")
}

describe("kernel backend", () => {
  it.skipIf(hasRenderNodes)("without render nodes: NoDevice, with a message that says what to do", () =>
    withNoFdLeak(() => {
      expect(scanRenderNodes()).toEqual({ nodes: [], virtio: null })
      const e = failure(() => findRenderNode())
      expect(e.reason).toBe("NoDevice")
      expect(e.message).toMatch(/no virtio-gpu render node/)
      expect(e.message).toMatch(/VM with a virtio-gpu device/)
    })
  )

  it("a missing node is NoDevice; a file that is not a DRM device is NotVirtGpu", () =>
    withNoFdLeak(() => {
      const missing = failure(() => new KernelDevice("/nonexistent/renderD128"))
      expect(missing.reason).toBe("NoDevice")
      expect(missing.op).toBe("open")
      const notDrm = failure(() => new KernelDevice("/dev/null"))
      expect(notDrm.reason).toBe("NotVirtGpu")
      expect(notDrm.op).toBe("DRM_IOCTL_VERSION")
      expect(notDrm.errno).toBe(25) // ENOTTY
    })
  )

  it.effect("kernelLayer fails at build time when there is no device", () =>
    Effect.gen(function* () {
      if (hasRenderNodes) return
      const exit = yield* Effect.exit(Effect.provide(VirtGpu, kernelLayer()))
      expect(Exit.isFailure(exit)).toBe(true)
      const viaSpec = yield* Effect.exit(Effect.provide(VirtGpu, layerFromSpec(undefined)))
      expect(Exit.isFailure(viaSpec)).toBe(true)
    })
  )

  it("device specs", () => {
    expect(parseDeviceSpec(undefined)).toEqual({ kind: "kernel" })
    expect(parseDeviceSpec("")).toEqual({ kind: "kernel" })
    expect(parseDeviceSpec("/dev/dri/renderD129")).toEqual({ kind: "kernel", path: "/dev/dri/renderD129" })
    expect(parseDeviceSpec("emulated:/run/vgpu.sock")).toEqual({ kind: "emulated", socketPath: "/run/vgpu.sock" })
  })
})
