/**
 * The struct layouts and request codes src/ffi/drm.ts uses, checked against a C compiler's view
 * of the vendored uAPI header (test/fixtures/virtgpu_drm.h): a C probe generated from the very
 * tables the code reads prints every sizeof, offsetof, member size and request code.
 * Also pins the uAPI constants of src/virtgpu/device.ts to the header's macros.
 */
import { describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { DRM_CLOEXEC, DRM_RDWR, IoctlTable, Layouts, Requests, type StructName } from "../../src/ffi/drm.js"
import * as D from "../../src/virtgpu/device.js"

const header = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures", "virtgpu_drm.h")

const constants: Record<string, number> = {
  VIRTGPU_PARAM_3D_FEATURES: D.PARAM_3D_FEATURES,
  VIRTGPU_PARAM_CAPSET_QUERY_FIX: D.PARAM_CAPSET_QUERY_FIX,
  VIRTGPU_PARAM_RESOURCE_BLOB: D.PARAM_RESOURCE_BLOB,
  VIRTGPU_PARAM_HOST_VISIBLE: D.PARAM_HOST_VISIBLE,
  VIRTGPU_PARAM_CROSS_DEVICE: D.PARAM_CROSS_DEVICE,
  VIRTGPU_PARAM_CONTEXT_INIT: D.PARAM_CONTEXT_INIT,
  VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs: D.PARAM_SUPPORTED_CAPSET_IDS,
  VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME: D.PARAM_EXPLICIT_DEBUG_NAME,
  VIRTGPU_CONTEXT_PARAM_CAPSET_ID: D.CONTEXT_PARAM_CAPSET_ID,
  VIRTGPU_CONTEXT_PARAM_NUM_RINGS: D.CONTEXT_PARAM_NUM_RINGS,
  VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK: D.CONTEXT_PARAM_POLL_RINGS_MASK,
  VIRTGPU_BLOB_MEM_GUEST: D.BLOB_MEM_GUEST,
  VIRTGPU_BLOB_MEM_HOST3D: D.BLOB_MEM_HOST3D,
  VIRTGPU_BLOB_MEM_HOST3D_GUEST: D.BLOB_MEM_HOST3D_GUEST,
  VIRTGPU_BLOB_FLAG_USE_MAPPABLE: D.BLOB_FLAG_USE_MAPPABLE,
  VIRTGPU_BLOB_FLAG_USE_SHAREABLE: D.BLOB_FLAG_USE_SHAREABLE,
  VIRTGPU_BLOB_FLAG_USE_CROSS_DEVICE: D.BLOB_FLAG_USE_CROSS_DEVICE,
  VIRTGPU_EXECBUF_FENCE_FD_IN: D.EXECBUF_FENCE_FD_IN,
  VIRTGPU_EXECBUF_FENCE_FD_OUT: D.EXECBUF_FENCE_FD_OUT,
  VIRTGPU_EXECBUF_RING_IDX: D.EXECBUF_RING_IDX,
  VIRTGPU_WAIT_NOWAIT: D.WAIT_NOWAIT,
  VIRTGPU_EVENT_FENCE_SIGNALED: D.EVENT_FENCE_SIGNALED,
  VIRTGPU_DRM_CAPSET_CROSS_DOMAIN: D.CAPSET_CROSS_DOMAIN,
  DRM_CLOEXEC,
  DRM_RDWR
}

/** A C program printing "key value" lines for everything the tables claim. */
const probeSource = (): string => {
  const lines: string[] = []
  for (const [name, layout] of Object.entries(Layouts)) {
    lines.push(`  printf("sizeof ${name} %zu\\n", sizeof(struct ${name}));`)
    for (const field of Object.keys(layout.fields)) {
      lines.push(`  printf("offsetof ${name}.${field} %zu\\n", offsetof(struct ${name}, ${field}));`)
      lines.push(`  printf("membersize ${name}.${field} %zu\\n", sizeof(((struct ${name} *)0)->${field}));`)
    }
  }
  for (const name of Object.keys(IoctlTable)) lines.push(`  printf("request ${name} %lu\\n", (unsigned long)(${name}));`)
  for (const name of Object.keys(constants)) lines.push(`  printf("const ${name} %lu\\n", (unsigned long)(${name}));`)
  return `#include <stdio.h>\n#include "${header}"\nint main(void) {\n${lines.join("\n")}\n  return 0;\n}\n`
}

const runProbe = (): Map<string, number> => {
  const dir = mkdtempSync(join(tmpdir(), "sommelier-layout-"))
  try {
    const src = join(dir, "probe.c")
    const exe = join(dir, "probe")
    writeFileSync(src, probeSource())
    execFileSync("cc", ["-std=c11", "-Wall", "-Werror", "-o", exe, src], { stdio: ["ignore", "pipe", "pipe"] })
    const out = execFileSync(exe, { encoding: "utf8" })
    const m = new Map<string, number>()
    for (const line of out.trim().split("\n")) {
      const i = line.lastIndexOf(" ")
      m.set(line.slice(0, i), Number(line.slice(i + 1)))
    }
    return m
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

describe("virtgpu uAPI layouts (cc over test/fixtures/virtgpu_drm.h)", () => {
  const c = runProbe()

  it("every struct size, field offset and field size matches src/ffi/drm.ts", () => {
    let checked = 0
    for (const [name, layout] of Object.entries(Layouts) as Array<[StructName, (typeof Layouts)[StructName]]>) {
      expect(c.get(`sizeof ${name}`), `sizeof ${name}`).toBe(layout.size)
      for (const [field, [off, size]] of Object.entries(layout.fields) as Array<[string, readonly [number, number]]>) {
        expect(c.get(`offsetof ${name}.${field}`), `offsetof ${name}.${field}`).toBe(off)
        expect(c.get(`membersize ${name}.${field}`), `sizeof ${name}.${field}`).toBe(size)
        checked++
      }
    }
    expect(checked).toBeGreaterThan(50)
  })

  it("every request code matches the C macros", () => {
    for (const name of Object.keys(IoctlTable) as Array<keyof typeof Requests>) {
      expect(c.get(`request ${name}`), name).toBe(Requests[name])
    }
  })

  it("request codes are the spec's x86-64 numbers (64-byte execbuffer)", () => {
    expect(Requests).toEqual({
      DRM_IOCTL_VERSION: 0xc0406400,
      DRM_IOCTL_GEM_CLOSE: 0x40086409,
      DRM_IOCTL_PRIME_HANDLE_TO_FD: 0xc00c642d,
      DRM_IOCTL_PRIME_FD_TO_HANDLE: 0xc00c642e,
      DRM_IOCTL_VIRTGPU_MAP: 0xc0106441,
      DRM_IOCTL_VIRTGPU_EXECBUFFER: 0xc0406442,
      DRM_IOCTL_VIRTGPU_GETPARAM: 0xc0106443,
      DRM_IOCTL_VIRTGPU_RESOURCE_INFO: 0xc0106445,
      DRM_IOCTL_VIRTGPU_WAIT: 0xc0086448,
      DRM_IOCTL_VIRTGPU_GET_CAPS: 0xc0186449,
      DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB: 0xc030644a,
      DRM_IOCTL_VIRTGPU_CONTEXT_INIT: 0xc010644b
    })
  })

  it("uAPI constants match the header", () => {
    for (const [name, value] of Object.entries(constants)) expect(c.get(`const ${name}`), name).toBe(value)
  })
})
