/**
 * `sommelier probe`: what the virtio-gpu device offers and whether cross-domain mode can run,
 * with a verdict a user can act on (which VMM flag is missing). Works on render nodes (kernel
 * backend) and on an emulator (`emulated:PATH`). Pure reporting: it never creates a context.
 *
 * Exit status convention (used by src/cli/probe.ts): 0 = cross-domain available, 2 = not available.
 */
import { describeErrno, Errno } from "../ffi/errno.js"
import {
  CAPSET_CROSS_DOMAIN,
  PARAM_3D_FEATURES,
  PARAM_CONTEXT_INIT,
  PARAM_HOST_VISIBLE,
  PARAM_RESOURCE_BLOB,
  PARAM_SUPPORTED_CAPSET_IDS,
  VirtGpuError,
  type DriverVersion,
  type VirtGpuDevice
} from "./device.js"
import { EmulatedDevice } from "./emulated.js"
import { KernelDevice, RENDER_NODE_FIRST, RENDER_NODE_LAST, scanRenderNodes, VIRTIO_GPU_DRIVER } from "./kernel.js"
import { parseDeviceSpec } from "./layers.js"

export const PARAM_NAMES: Readonly<Record<number, string>> = {
  1: "3D_FEATURES",
  2: "CAPSET_QUERY_FIX",
  3: "RESOURCE_BLOB",
  4: "HOST_VISIBLE",
  5: "CROSS_DEVICE",
  6: "CONTEXT_INIT",
  7: "SUPPORTED_CAPSET_IDs",
  8: "EXPLICIT_DEBUG_NAME"
}

export const CAPSET_NAMES: Readonly<Record<number, string>> = {
  1: "virgl",
  2: "virgl2",
  3: "gfxstream-vulkan",
  4: "venus",
  5: "cross-domain",
  6: "drm"
}

export type VerdictCode =
  | "available"
  | "no-device"
  | "permission"
  | "not-virtio-gpu"
  | "no-3d"
  | "no-context-init"
  | "no-blob"
  | "no-host-visible"
  | "no-cross-domain-capset"
  | "no-wayland-channel"
  | "error"

export interface Verdict {
  readonly available: boolean
  readonly code: VerdictCode
  readonly message: string
}

export interface ParamResult {
  readonly param: number
  readonly name: string
  readonly value: number | null
  /** Symbolic errno ("EINVAL") when GETPARAM failed. */
  readonly error: string | null
}

export interface CrossDomainCaps {
  readonly version: number
  readonly supportedChannels: number
  readonly supportsDmabuf: number
  readonly supportsExternalGpuMemory: number
}

export interface DeviceReport {
  readonly device: string
  readonly backend: "kernel" | "emulated"
  readonly driver: DriverVersion | null
  readonly params: readonly ParamResult[]
  readonly capsetMask: number | null
  readonly capsets: readonly number[]
  readonly crossDomain: CrossDomainCaps | { readonly error: string } | null
  readonly verdict: Verdict
}

export interface ProbeReport {
  readonly devices: readonly DeviceReport[]
  /** Render nodes that are not usable virtio-gpu nodes, and why. */
  readonly otherNodes: ReadonlyArray<{ readonly path: string; readonly driver: string | null; readonly error: string | null }>
  readonly verdict: Verdict
  readonly exitCode: 0 | 2
}

const CAPSET_HINT =
  "crosvm: --gpu context-types=cross-domain with --wayland-sock PATH; QEMU with rutabaga: -device virtio-gpu-rutabaga-pci,cross-domain=on,wayland-socket-path=PATH"

const verdicts = {
  available: "cross-domain available",
  noDevice:
    "no virtio-gpu render node: run inside a VM with a virtio-gpu device (crosvm --gpu …, QEMU -device virtio-gpu-rutabaga-pci,cross-domain=on,…); to try cross-domain without a VM use `sommelier emulate-host --listen PATH` and --virtgpu emulated:PATH",
  no3d: "no 3D: the VMM exposes virtio-gpu without 3D (virgl/context) support; crosvm needs --gpu with a context type, QEMU needs -device virtio-gpu-gl-pci or virtio-gpu-rutabaga-pci",
  noContextInit: `no context-init: the VMM (or a guest kernel older than 5.16) does not offer context types; ${CAPSET_HINT}`,
  noBlob: "no blob resources: enable them on the VMM's virtio-gpu device (QEMU: blob=true; crosvm: a rutabaga-enabled --gpu)",
  noHostVisible:
    "no host-visible memory: give the virtio-gpu device a host memory window (QEMU: hostmem=256M on virtio-gpu-rutabaga-pci / virtio-gpu-gl-pci; crosvm: --gpu provides it)",
  noCapset: `capset 5 (cross-domain) not offered by the VMM; ${CAPSET_HINT}`,
  noWayland: "the VMM offers cross-domain but no Wayland channel: crosvm --wayland-sock PATH; QEMU: wayland-socket-path=PATH on virtio-gpu-rutabaga-pci"
}

const errText = (e: unknown): string => {
  if (e instanceof VirtGpuError) return describeErrno(e.errno).code
  return e instanceof Error ? e.message : String(e)
}

const not = (code: VerdictCode, message: string): Verdict => ({ available: false, code, message })

/** Everything a device file tells without creating a context. */
export const probeDevice = (dev: VirtGpuDevice): DeviceReport => {
  let driver: DriverVersion | null = null
  try {
    driver = dev.version()
  } catch {
    driver = null
  }
  const params: ParamResult[] = []
  for (let p = 1; p <= 8; p++) {
    try {
      params.push({ param: p, name: PARAM_NAMES[p]!, value: dev.getParam(p), error: null })
    } catch (e) {
      params.push({ param: p, name: PARAM_NAMES[p]!, value: null, error: errText(e) })
    }
  }
  const value = (p: number): number | null => params[p - 1]?.value ?? null
  const capsetMask = value(PARAM_SUPPORTED_CAPSET_IDS)
  const capsets: number[] = []
  if (capsetMask !== null) for (let i = 0; i < 32; i++) if ((capsetMask >>> i) & 1) capsets.push(i)
  let crossDomain: DeviceReport["crossDomain"] = null
  if (capsetMask !== null && capsets.includes(CAPSET_CROSS_DOMAIN)) {
    try {
      const b = dev.getCaps(CAPSET_CROSS_DOMAIN, 0, 16)
      const v = new DataView(b.buffer, b.byteOffset, b.byteLength)
      const u = (off: number): number => (off + 4 <= b.byteLength ? v.getUint32(off, true) : 0)
      crossDomain = { version: u(0), supportedChannels: u(4), supportsDmabuf: u(8), supportsExternalGpuMemory: u(12) }
    } catch (e) {
      crossDomain = { error: errText(e) }
    }
  }
  const verdict: Verdict =
    value(PARAM_3D_FEATURES) !== 1
      ? not("no-3d", verdicts.no3d)
      : value(PARAM_CONTEXT_INIT) !== 1
        ? not("no-context-init", verdicts.noContextInit)
        : value(PARAM_RESOURCE_BLOB) !== 1
          ? not("no-blob", verdicts.noBlob)
          : value(PARAM_HOST_VISIBLE) !== 1
            ? not("no-host-visible", verdicts.noHostVisible)
            : crossDomain === null || "error" in crossDomain
              ? not("no-cross-domain-capset", verdicts.noCapset)
              : (crossDomain.supportedChannels & (1 << 1)) === 0
                ? not("no-wayland-channel", verdicts.noWayland)
                : { available: true, code: "available", message: verdicts.available }
  return { device: dev.name, backend: dev.backend, driver, params, capsetMask, capsets, crossDomain, verdict }
}

const withDevice = (open: () => VirtGpuDevice): DeviceReport | VirtGpuError => {
  let dev: VirtGpuDevice
  try {
    dev = open()
  } catch (e) {
    if (e instanceof VirtGpuError) return e
    return new VirtGpuError({ reason: "Ioctl", op: "open", errno: Errno.EIO, message: String(e) })
  }
  try {
    return probeDevice(dev)
  } finally {
    dev.close()
  }
}

const fromOpenError = (e: VirtGpuError): Verdict =>
  e.reason === "Permission"
    ? not("permission", `${e.message}`)
    : e.reason === "NotVirtGpu"
      ? not("not-virtio-gpu", `${e.message}; ${verdicts.noDevice}`)
      : e.reason === "NoDevice"
        ? not("no-device", `${e.message.includes("emulator") ? e.message : verdicts.noDevice} (${e.message})`)
        : not("error", e.message)

const finish = (devices: DeviceReport[], others: ProbeReport["otherNodes"], fallback: Verdict): ProbeReport => {
  const verdict = devices.find((d) => d.verdict.available)?.verdict ?? devices[0]?.verdict ?? fallback
  return { devices, otherNodes: others, verdict, exitCode: verdict.available ? 0 : 2 }
}

/**
 * Probe `spec`: undefined scans /dev/dri/renderD128…190 for virtio_gpu nodes; a path probes that
 * node; "emulated:PATH" probes the emulator at PATH. Never throws.
 */
export const probe = (spec?: string): ProbeReport => {
  const s = parseDeviceSpec(spec)
  if (s.kind === "emulated") {
    const r = withDevice(() => new EmulatedDevice(s.socketPath))
    if (r instanceof VirtGpuError) return finish([], [], fromOpenError(r))
    return finish([r], [], r.verdict)
  }
  if (s.path !== undefined) {
    const path = s.path
    const r = withDevice(() => new KernelDevice(path))
    if (r instanceof VirtGpuError) return finish([], [{ path, driver: null, error: r.message }], fromOpenError(r))
    return finish([r], [], r.verdict)
  }
  const scan = scanRenderNodes()
  const devices: DeviceReport[] = []
  const others: Array<{ path: string; driver: string | null; error: string | null }> = []
  for (const n of scan.nodes) {
    if (n.driver !== VIRTIO_GPU_DRIVER) {
      others.push({ path: n.path, driver: n.driver, error: n.errno !== 0 ? describeErrno(n.errno).code : null })
      continue
    }
    const r = withDevice(() => new KernelDevice(n.path))
    if (r instanceof VirtGpuError) others.push({ path: n.path, driver: n.driver, error: r.message })
    else devices.push(r)
  }
  const denied = scan.nodes.find((n) => n.errno === Errno.EACCES || n.errno === Errno.EPERM)
  const fallback =
    denied !== undefined
      ? not(
          "permission",
          `cannot open ${denied.path} (permission denied), so it may be the virtio-gpu node: add your user to the group that owns it (ls -l ${denied.path}; usually "render")`
        )
      : not("no-device", verdicts.noDevice)
  return finish(devices, others, fallback)
}

const hex = (n: number): string => `0x${n.toString(16)}`

/** The human-readable report; the last line starts with "verdict: ". */
export const formatReport = (r: ProbeReport): string => {
  const out: string[] = []
  if (r.devices.length === 0 && r.otherNodes.length === 0)
    out.push(`no render nodes found (looked for /dev/dri/renderD${RENDER_NODE_FIRST}…renderD${RENDER_NODE_LAST})`)
  for (const n of r.otherNodes)
    out.push(`${n.path}: ${n.driver !== null ? `driver ${n.driver}` : "not usable"}${n.error !== null ? ` (${n.error})` : ""}`)
  for (const d of r.devices) {
    const v = d.driver
    out.push(`${d.device}: ${v !== null ? `${v.name} ${v.major}.${v.minor}.${v.patchlevel}${v.desc !== "" ? ` (${v.desc})` : ""}` : "driver version unknown"}`)
    for (const p of d.params)
      out.push(`  GETPARAM ${p.param} ${p.name}: ${p.value !== null ? (p.param === PARAM_SUPPORTED_CAPSET_IDS ? hex(p.value) : String(p.value)) : p.error}`)
    out.push(
      `  capsets: ${d.capsetMask === null ? "unknown" : `${hex(d.capsetMask)}${d.capsets.length > 0 ? ` (${d.capsets.map((c) => `${c} ${CAPSET_NAMES[c] ?? "?"}`).join(", ")})` : " (none)"}`}`
    )
    const cd = d.crossDomain
    if (cd === null) out.push("  cross-domain: not offered")
    else if ("error" in cd) out.push(`  cross-domain: GET_CAPS 5 failed: ${cd.error}`)
    else
      out.push(
        `  cross-domain: version ${cd.version}, supported_channels ${hex(cd.supportedChannels)}${(cd.supportedChannels & 2) !== 0 ? " (wayland)" : ""}, supports_dmabuf ${cd.supportsDmabuf}, supports_external_gpu_memory ${cd.supportsExternalGpuMemory}`
      )
    if (r.devices.length > 1) out.push(`  verdict: ${d.verdict.message}`)
  }
  out.push(`verdict: ${r.verdict.message}`)
  return out.join("\n") + "\n"
}
