/**
 * Runs INSIDE the VM guest (transpiled by scripts/vm/image.ts, its `src/` imports pointed at the
 * built `dist/`): drives the project's kernel backend (`KernelDevice`) against the real
 * virtio-gpu driver and prints one JSON report on stdout. Every step records its outcome — a
 * value, or the VirtGpuError's reason and symbolic errno — and never stops the run, so the host
 * test compares the whole list against what each device must do (test/vm/expect.ts).
 *
 * On a device with context-init and blobs the steps are the backend's whole contract: CONTEXT_INIT
 * with rings and a poll mask, a GUEST blob mapped through the MAP offset and checked through a
 * second mapping and through the dma-buf, RESOURCE_INFO, PRIME export and import (same file and a
 * second file), GEM_CLOSE, fence events per ring, and the refusal of capset 5.
 *
 * Run alone (`node test/vm/guest/exercise.js`) it prints the report; preloaded before the CLI
 * (`node --import ./test/vm/guest/exercise.js bin/sommelier probe --json`, with
 * SOMMELIER_VM_EXERCISE_OUT=FILE) it writes it to FILE, and the CLI then runs as usual with the
 * modules both share already loaded: under TCG, loading Effect alone takes ~25 s of the guest's CPU.
 *
 * Not here: the verdicts (that is `sommelier probe`).
 */
import { writeFileSync } from "node:fs"
import { describeErrno } from "../../../src/ffi/errno.js"
import { MAP_SHARED, PROT_READ, PROT_WRITE, sys, viewOf } from "../../../src/ffi/libc.js"
import {
  BLOB_FLAG_USE_MAPPABLE,
  BLOB_FLAG_USE_SHAREABLE,
  BLOB_MEM_GUEST,
  CAPSET_CROSS_DOMAIN,
  EVENT_FENCE_SIGNALED,
  PARAM_3D_FEATURES,
  PARAM_CONTEXT_INIT,
  PARAM_RESOURCE_BLOB,
  PARAM_SUPPORTED_CAPSET_IDS,
  VirtGpuError,
  type VirtGpuDevice
} from "../../../src/virtgpu/device.js"
import { findRenderNode, openKernelDevice } from "../../../src/virtgpu/kernel.js"

export interface StepResult {
  readonly step: string
  readonly ok: boolean
  readonly value?: unknown
  /** VirtGpuError reason, or "Exception" for anything else. */
  readonly reason?: string
  readonly errno?: string
  readonly message?: string
  readonly ms: number
}

export interface ExerciseReport {
  readonly node: string
  readonly params: Record<string, number | null>
  readonly steps: readonly StepResult[]
}

const steps: StepResult[] = []

const step = <A>(name: string, f: () => A): A | undefined => {
  const t0 = performance.now()
  try {
    const value = f()
    steps.push({ step: name, ok: true, ...(value === undefined ? {} : { value }), ms: Math.round(performance.now() - t0) })
    return value
  } catch (e) {
    const ms = Math.round(performance.now() - t0)
    if (e instanceof VirtGpuError)
      steps.push({ step: name, ok: false, reason: e.reason, errno: describeErrno(e.errno).code, message: e.message, ms })
    else steps.push({ step: name, ok: false, reason: "Exception", message: e instanceof Error ? e.message : String(e), ms })
    return undefined
  }
}

const skip = (name: string, why: string): void => {
  steps.push({ step: name, ok: false, reason: "Skipped", message: why, ms: 0 })
}

const sleeper = new Int32Array(new SharedArrayBuffer(4))
const sleep = (ms: number): void => void Atomics.wait(sleeper, 0, 0, ms)

/** Drains fence events for up to `ms`; returns them and how long the first one took. */
const collectEvents = (dev: VirtGpuDevice, ms: number, stopAfter = 1): { events: string[]; firstMs: number | null } => {
  const t0 = performance.now()
  const events: string[] = []
  let firstMs: number | null = null
  while (performance.now() - t0 < ms) {
    for (const t of dev.readEvents()) {
      if (t !== EVENT_FENCE_SIGNALED) throw new Error(`event type 0x${t.toString(16)}, not FENCE_SIGNALED`)
      events.push(`0x${t.toString(16)}`)
      firstMs ??= Math.round(performance.now() - t0)
    }
    if (events.length >= stopAfter) break
    sleep(5)
  }
  return { events, firstMs }
}

const pattern = (size: number, seed: number): Uint8Array => {
  const b = new Uint8Array(size)
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed) & 0xff
  return b
}

const same = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && a.every((x, i) => x === b[i])

// A virgl command stream of one NOP (header: length 0, object 0, command VIRGL_CCMD_NOP = 0).
const VIRGL_NOP = new Uint8Array(4)
const EMPTY = new Uint8Array(0)
const BLOB_SIZE = 2 * 4096

const main = (): ExerciseReport => {
  const node = step("find render node", () => findRenderNode()) ?? "/dev/dri/renderD128"
  const dev = step("open", () => openKernelDevice(node))
  const params: Record<string, number | null> = {}
  if (!dev) return { node, params, steps }

  for (const p of [PARAM_3D_FEATURES, PARAM_RESOURCE_BLOB, PARAM_CONTEXT_INIT, PARAM_SUPPORTED_CAPSET_IDS]) {
    params[p] = step(`getparam ${p}`, () => dev.getParam(p)) ?? null
  }
  const mask = params[PARAM_SUPPORTED_CAPSET_IDS] ?? 0
  // The capset the positive path uses: virgl2 if offered, else virgl.
  const capset = (mask & 4) !== 0 ? 2 : (mask & 2) !== 0 ? 1 : 1

  // Capset 5 must be refused with a message that says what to do.
  step("get caps 5", () => dev.getCaps(CAPSET_CROSS_DOMAIN, 0, 16).length)
  const other = step("open second file", () => openKernelDevice(node))
  if (other) {
    step("context init 5", () => other.contextInit(CAPSET_CROSS_DOMAIN, 2, 0b10))
    other.close()
  }
  step(`get caps ${capset}`, () => dev.getCaps(capset, 0, 64).length)

  // The context: two rings, both raising events.
  const ctx = step("context init", () => {
    dev.contextInit(capset, 2, 0b11)
    return { capset, rings: 2, pollMask: 0b11 }
  })
  step("context init again", () => dev.contextInit(capset, 2, 0b11))

  // A GUEST blob: map through the MAP offset, write, read back, read through a second mapping.
  const blob = step("create guest blob", () =>
    dev.createBlob({ blobMem: BLOB_MEM_GUEST, blobFlags: BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE, size: BLOB_SIZE, blobId: 0n })
  )
  if (blob) {
    const data = pattern(BLOB_SIZE, 7)
    step("map, write, read back", () => {
      const m = dev.map(blob.handle, BLOB_SIZE)
      m.view.set(data)
      const ok = same(m.view.slice(), data)
      m.unmap()
      if (!ok) throw new Error("read back differs from what was written")
      return true
    })
    step("map again, read", () => {
      const m = dev.map(blob.handle, BLOB_SIZE)
      const ok = same(m.view.slice(), data)
      m.view[0] = 0xa5 // seen by the dma-buf mapping below
      m.unmap()
      if (!ok) throw new Error("second mapping shows other bytes")
      return true
    })
    step("resource info", () => {
      const info = dev.resourceInfo(blob.handle)
      if (info.resId !== blob.resId) throw new Error(`res_handle ${info.resId}, create said ${blob.resId}`)
      return info
    })
    const fd = step("prime export", () => dev.primeHandleToFd(blob.handle))
    if (fd !== undefined) {
      step("dma-buf mmap, read", () => {
        const address = sys.mmap(0, BLOB_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if (address < 0) throw new Error(`mmap of the dma-buf: ${describeErrno(-address).code}`)
        const view = new Uint8Array(viewOf(address, BLOB_SIZE)).slice()
        sys.munmap(address, BLOB_SIZE)
        const want = data.slice()
        want[0] = 0xa5
        if (!same(view, want)) throw new Error("dma-buf shows other bytes")
        return true
      })
      step("prime import, same file", () => {
        const h = dev.primeFdToHandle(fd)
        if (h !== blob.handle) throw new Error(`handle ${h}, expected the exporter's ${blob.handle}`)
        return h
      })
      const second = step("open importer", () => openKernelDevice(node))
      if (second) {
        // A context first: the import would otherwise create a capset-0 context implicitly.
        step("importer context init", () => second.contextInit(capset, 1, 0))
        const h2 = step("prime import, other file", () => second.primeFdToHandle(fd))
        if (h2 !== undefined) {
          step("importer resource info", () => {
            const info = second.resourceInfo(h2)
            if (info.resId !== blob.resId) throw new Error(`res_handle ${info.resId}, exporter's is ${blob.resId}`)
            return info
          })
          step("importer map, read", () => {
            const m = second.map(h2, BLOB_SIZE)
            const ok = m.view[0] === 0xa5 && m.view[1] === data[1] && m.view[BLOB_SIZE - 1] === data[BLOB_SIZE - 1]
            m.unmap()
            if (!ok) throw new Error("importer's mapping shows other bytes")
            return true
          })
          step("importer gem close", () => second.gemClose(h2))
        }
        second.close()
      }
      sys.close(fd)
    } else skip("prime import, same file", "no dma-buf")

    // Fences: a NOP on a polled ring must raise one FENCE_SIGNALED event; WAIT on a listed BO.
    if (ctx) {
      step("execbuffer ring 2 (of 2)", () => dev.execbuffer({ command: VIRGL_NOP, ringIdx: 2 }))
      step("fence event ring 0, nop", () => {
        dev.execbuffer({ command: VIRGL_NOP, ringIdx: 0, boHandles: [blob.handle] })
        const r = collectEvents(dev, 5000)
        if (r.events.length === 0) throw new Error("no event within 5 s")
        return r
      })
      step("wait on listed blob", () => dev.wait(blob.handle))
      step("fence event ring 0, empty command", () => {
        dev.execbuffer({ command: EMPTY, ringIdx: 0 })
        const r = collectEvents(dev, 5000)
        if (r.events.length === 0) throw new Error("no event within 5 s")
        return r
      })
      // Last: virgl contexts may not fence rings other than 0, leaving this fence pending.
      step("fence event ring 1, nop", () => {
        dev.execbuffer({ command: VIRGL_NOP, ringIdx: 1 })
        const r = collectEvents(dev, 3000)
        if (r.events.length === 0) throw new Error("no event within 3 s")
        return r
      })
    } else skip("fence event ring 0, nop", "no context")

    step("gem close", () => dev.gemClose(blob.handle))
    step("resource info after close", () => dev.resourceInfo(blob.handle))
  } else {
    // Without blobs: is EXECBUFFER refused as the kernel says (no 3D: ENOSYS)?
    step("execbuffer without context", () => dev.execbuffer({ command: VIRGL_NOP }))
  }
  dev.close()
  return { node, params, steps }
}

// scripts/vm/image.ts runs this on the host only to see what it loads: never touch a host's GPU.
if (process.env.SOMMELIER_VM_TRACE === undefined) {
  const report = JSON.stringify(main()) + "\n"
  // Preloaded with `node --import` before the CLI (which then finds Effect already loaded): the
  // report goes to a file so the CLI's stdout stays its own.
  const out = process.env.SOMMELIER_VM_EXERCISE_OUT
  if (out) writeFileSync(out, report)
  else process.stdout.write(report)
}
