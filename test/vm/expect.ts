/**
 * What each VM machine's device offers, and so what the guest must report: the probe's JSON
 * (every GETPARAM, the capsets, the verdict) and the outcome of every kernel-backend exercise step.
 * The numbers are the devices' as measured with Debian's QEMU 7.2 (bookworm) and 10.0 (trixie) and
 * Debian's 6.1 guest kernel; the test also checks them against the kernel's own view
 * (debugfs `virtio-gpu-features`), so a wrong table here cannot hide a wrong probe.
 */
import type { Machine } from "../../scripts/vm/qemu.js"

export interface DeviceOffer {
  readonly params: Readonly<Record<string, number | string>>
  readonly capsets: readonly number[]
  readonly verdict: string
}

/** GETPARAM values by name; a string is the errno GETPARAM must fail with. */
export const OFFERS: Readonly<Record<Machine, DeviceOffer>> = {
  "2d": {
    params: {
      "3D_FEATURES": 0,
      CAPSET_QUERY_FIX: 1,
      RESOURCE_BLOB: 0,
      HOST_VISIBLE: 0,
      CROSS_DEVICE: 0,
      CONTEXT_INIT: 0,
      SUPPORTED_CAPSET_IDs: 0,
      EXPLICIT_DEBUG_NAME: "EINVAL" // newer than the 6.1 kernel
    },
    capsets: [],
    verdict: "no-3d"
  },
  gl: {
    params: {
      "3D_FEATURES": 1,
      CAPSET_QUERY_FIX: 1,
      RESOURCE_BLOB: 0,
      HOST_VISIBLE: 0,
      CROSS_DEVICE: 0,
      CONTEXT_INIT: 0,
      SUPPORTED_CAPSET_IDs: 0b110,
      EXPLICIT_DEBUG_NAME: "EINVAL"
    },
    capsets: [1, 2],
    verdict: "no-context-init"
  },
  "gl-blob": {
    params: {
      "3D_FEATURES": 1,
      CAPSET_QUERY_FIX: 1,
      RESOURCE_BLOB: 1,
      HOST_VISIBLE: 1,
      CROSS_DEVICE: 0,
      CONTEXT_INIT: 1,
      SUPPORTED_CAPSET_IDs: 0b110,
      EXPLICIT_DEBUG_NAME: "EINVAL"
    },
    capsets: [1, 2],
    verdict: "no-cross-domain-capset"
  }
}

/** The kernel's view: debugfs dri/0/virtio-gpu-features, as a map "virgl" → "yes", "cap sets" → "2". */
export const parseFeatures = (text: string): Record<string, string> =>
  Object.fromEntries(
    text
      .split("\n")
      .map((l) => /^\s*([^:]+?)\s*:\s*(.*?)\s*$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [m[1]!, m[2]!])
  )

/** The GETPARAM values the kernel's feature flags imply (6.1: the params read the same flags). */
export const paramsFromFeatures = (f: Record<string, string>): Record<string, number> => ({
  "3D_FEATURES": f["virgl"] === "yes" ? 1 : 0,
  RESOURCE_BLOB: f["blob resources"] === "yes" ? 1 : 0,
  HOST_VISIBLE: f["host visible region"] !== undefined ? 1 : 0,
  CROSS_DEVICE: f["resource uuid"] === "yes" ? 1 : 0,
  CONTEXT_INIT: f["context init"] === "yes" ? 1 : 0
})

/**
 * Exercise steps: "ok", or the errno the step must fail with. Steps not listed must not appear;
 * steps listed must all appear. `INFO_STEPS` are reported, never judged.
 */
export type Outcome = "ok" | `E${string}` | "no-event"

const capsetNegatives = {
  "find render node": "ok",
  open: "ok",
  "getparam 1": "ok",
  "getparam 3": "ok",
  "getparam 6": "ok",
  "getparam 7": "ok",
  "open second file": "ok",
  "context init 5": "EINVAL"
} as const

export const EXERCISE: Readonly<Record<Machine, Readonly<Record<string, Outcome>>>> = {
  "2d": {
    ...capsetNegatives,
    // No capsets at all: the 6.1 kernel answers GET_CAPS with ENOSYS before looking at the id.
    "get caps 5": "ENOSYS",
    "get caps 1": "ENOSYS",
    "context init": "EINVAL",
    "context init again": "EINVAL",
    "create guest blob": "EINVAL",
    "execbuffer without context": "ENOSYS"
  },
  gl: {
    ...capsetNegatives,
    "get caps 5": "EINVAL",
    "get caps 2": "ok",
    // 3D and capsets, but no context-init: CONTEXT_INIT is refused whatever the capset.
    "context init": "EINVAL",
    "context init again": "EINVAL",
    "create guest blob": "EINVAL",
    // 3D: EXECBUFFER creates a default (capset 0) virgl context implicitly.
    "execbuffer without context": "ok"
  },
  "gl-blob": {
    ...capsetNegatives,
    "get caps 5": "EINVAL",
    "get caps 2": "ok",
    "context init": "ok",
    "context init again": "EEXIST",
    "create guest blob": "ok",
    "map, write, read back": "ok",
    "map again, read": "ok",
    "resource info": "ok",
    "prime export": "ok",
    "dma-buf mmap, read": "ok",
    "prime import, same file": "ok",
    "open importer": "ok",
    "importer context init": "ok",
    "prime import, other file": "ok",
    "importer resource info": "ok",
    "importer map, read": "ok",
    "importer gem close": "ok",
    "execbuffer ring 2 (of 2)": "EINVAL",
    "fence event ring 0, nop": "ok",
    "wait on listed blob": "ok",
    "fence event ring 0, empty command": "ok",
    "gem close": "ok",
    "resource info after close": "ENOENT"
  }
}

/**
 * Observed, not required: virgl contexts (capsets 1/2) fence only ring 0 (virglrenderer's vrend
 * refuses other rings), so a NOP on polled ring 1 never raises an event under QEMU 10.0.
 */
export const INFO_STEPS: readonly string[] = ["fence event ring 1, nop"]
