/**
 * The kernel backend on a real guest kernel: Debian's 6.1 kernel boots under QEMU (TCG) with each
 * virtio-gpu device of scripts/vm/qemu.ts, and the project runs inside the guest from its built
 * dist/ with the host's node: `sommelier probe --json` must report exactly what the device offers
 * (checked against test/vm/expect.ts and against the kernel's own debugfs view), and the
 * kernel-backend exercise (test/vm/guest/exercise.ts) must reach the expected outcome at every step.
 *
 * Every machine must run. `SOMMELIER_VM_SKIP=gl,gl-blob` (any of 2d, gl, gl-blob) skips machines
 * on purpose; they are reported as skipped, never as passed. A summary of what ran, the timings and
 * what each guest reported is printed at the end.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { prepare, type Prepared } from "../../scripts/vm/prepare.js"
import { boot, MACHINE_SPECS, MACHINES, startXvfb, type BootResult, type Machine, type Xvfb } from "../../scripts/vm/qemu.js"
import type { ExerciseReport, StepResult } from "./guest/exercise.js"
import { EXERCISE, INFO_STEPS, OFFERS, paramsFromFeatures, parseFeatures } from "./expect.js"

const requested = (process.env.SOMMELIER_VM_SKIP ?? "").split(",").map((s) => s.trim()).filter(Boolean)
for (const s of requested) if (!MACHINES.includes(s as Machine)) throw new Error(`SOMMELIER_VM_SKIP: unknown machine "${s}" (${MACHINES.join(", ")})`)
const skipped = new Set(requested as Machine[])
const machines = MACHINES.filter((m) => !skipped.has(m))
// All three at once: CPU-bound TCG on two cores finishes soonest when no core waits for the last one.
const PARALLEL = Math.max(1, Number(process.env.SOMMELIER_VM_PARALLEL ?? 3))
/** One node process runs the exercise (preloaded) and then the CLI's probe --json. */
const PROBE = "exercise+probe"
const EXERCISE_REPORT = "exercise-report"
const BOOT_TIMEOUT_MS = Number(process.env.SOMMELIER_VM_BOOT_TIMEOUT_MS ?? 600_000)

interface Run {
  readonly result?: BootResult
  readonly error?: string
}

const runs = new Map<Machine, Run>()
let prepared: Prepared | undefined
let xvfb: Xvfb | undefined
let xvfbError: string | undefined
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), "sommelier-vm-test-"))
const t0 = Date.now()

/** Runs `f` over `items`, at most `n` at a time. */
const pool = async <A>(items: readonly A[], n: number, f: (a: A) => Promise<void>): Promise<void> => {
  const queue = [...items]
  await Promise.all(
    Array.from({ length: Math.min(n, queue.length) }, async () => {
      for (let a = queue.shift(); a !== undefined; a = queue.shift()) await f(a)
    })
  )
}

beforeAll(async () => {
  if (machines.length === 0) return
  prepared = await prepare(machines, path.join(workDir, "initramfs.cpio"))
  const runnable = machines.filter((m) => prepared!.unavailable[m] === undefined)
  if (runnable.some((m) => MACHINE_SPECS[m].gl)) {
    try {
      xvfb = await startXvfb()
    } catch (e) {
      xvfbError = `${e instanceof Error ? e.message : String(e)} (the gl machines draw through SDL+GL into an Xvfb; scripts/setup.sh installs xvfb)`
    }
  }
  await pool(runnable, PARALLEL, async (m) => {
    if (MACHINE_SPECS[m].gl && !xvfb) return void runs.set(m, { error: xvfbError ?? "no X display" })
    try {
      const result = await boot({
        machine: m,
        kernel: prepared!.kernel.vmlinux,
        initrd: prepared!.image.path,
        jobs: [PROBE, EXERCISE_REPORT],
        timeoutMs: BOOT_TIMEOUT_MS,
        ...(xvfb && MACHINE_SPECS[m].gl ? { display: xvfb.display } : {})
      })
      runs.set(m, { result })
    } catch (e) {
      runs.set(m, { error: e instanceof Error ? e.message : String(e) })
    }
  })
})

afterAll(async () => {
  await xvfb?.stop()
  fs.rmSync(workDir, { recursive: true, force: true })
  process.stdout.write(summary())
})

const s = (ms: number | undefined): string => (ms === undefined ? "?" : `${(ms / 1000).toFixed(1)} s`)

/** What ran, how long it took, what each guest said. */
const summary = (): string => {
  const out = ["", "── VM test: the kernel backend on a real guest kernel ──"]
  if (prepared) {
    const p = prepared
    out.push(
      `kernel ${p.kernel.version}; image ${(p.image.bytes / 2 ** 20).toFixed(0)} MiB (${p.image.files} entries, ${p.image.nodeModulesFiles} node_modules files) built in ${s(p.image.ms)}; tsc ${s(p.buildMs)}; fetch ${s(p.fetchMs)}`
    )
  }
  for (const m of MACHINES) {
    const spec = MACHINE_SPECS[m]
    const head = `${m.padEnd(8)} ${spec.describe}`
    if (skipped.has(m)) {
      out.push(`${head}\n  SKIPPED: SOMMELIER_VM_SKIP=${requested.join(",")}`)
      continue
    }
    const why = prepared?.unavailable[m]
    if (why) {
      out.push(`${head}\n  NOT RUN: ${why}`)
      continue
    }
    const run = runs.get(m)
    if (!run?.result) {
      out.push(`${head}\n  FAILED TO RUN: ${run?.error ?? "prepare failed"}`)
      continue
    }
    const r = run.result
    const ver = prepared?.qemuVersions[spec.qemu] ?? spec.qemu
    const job = (j: string) => r.jobs[j]
    out.push(
      `${head}: RAN\n  ${ver}; QEMU ${s(r.wallMs)}, CPU ${s(r.cpuMs)} (guest: /init at ${s(r.initMs)}, modules ${s(r.modulesMs)}, exercise + probe ${s(job(PROBE)?.ms)})${r.timedOut ? " TIMED OUT" : ""}`
    )
    const probe = parseJson<ProbeJson>(job(PROBE)?.stdout)
    const dev = probe?.devices?.[0]
    if (dev) {
      const params = dev.params.map((p) => `${p.name}=${p.value ?? p.error}`).join(" ")
      out.push(`  probe: ${params}; capsets [${dev.capsets.join(",")}]; verdict ${probe.verdict.code} (exit ${probe.exitCode})`)
    } else out.push(`  probe: no report (rc ${job(PROBE)?.rc}): ${(job(PROBE)?.stderr ?? "").slice(0, 300)}`)
    const ex = parseJson<ExerciseReport>(job(EXERCISE_REPORT)?.stdout)
    if (ex) {
      const bad = ex.steps.filter((st) => !INFO_STEPS.includes(st.step) && outcome(st) !== EXERCISE[m][st.step])
      out.push(`  exercise: ${ex.steps.length} steps, ${bad.length === 0 ? "all as expected" : `${bad.length} unexpected: ${bad.map((b) => `${b.step} → ${outcome(b)}`).join("; ")}`}`)
      for (const st of ex.steps.filter((x) => x.step.startsWith("fence event")))
        out.push(`  ${st.step}: ${st.ok ? `event ${JSON.stringify(st.value)}` : st.message}${INFO_STEPS.includes(st.step) ? " (observed, not judged)" : ""}`)
    } else out.push(`  exercise: no report (rc ${job(EXERCISE_REPORT)?.rc}): ${(job(PROBE)?.stderr ?? "").slice(0, 300)}`)
  }
  out.push(`total ${s(Date.now() - t0)}`, "")
  return out.join("\n") + "\n"
}

interface ProbeJson {
  readonly devices: ReadonlyArray<{
    readonly device: string
    readonly backend: string
    readonly driver: { readonly name: string } | null
    readonly params: ReadonlyArray<{ readonly param: number; readonly name: string; readonly value: number | null; readonly error: string | null }>
    readonly capsetMask: number | null
    readonly capsets: readonly number[]
    readonly crossDomain: unknown
    readonly verdict: { readonly available: boolean; readonly code: string; readonly message: string }
  }>
  readonly otherNodes: readonly unknown[]
  readonly verdict: { readonly available: boolean; readonly code: string; readonly message: string }
  readonly exitCode: number
}

const parseJson = <A>(text: string | undefined): A | undefined => {
  if (!text) return undefined
  try {
    return JSON.parse(text) as A
  } catch {
    return undefined
  }
}

const outcome = (st: StepResult): string => (st.ok ? "ok" : (st.errno ?? "no-event"))

/** The boot's result, or fail/skip the test saying why there is none. */
const resultOf = (m: Machine, ctx: { skip: (note?: string) => never }): BootResult => {
  if (skipped.has(m)) ctx.skip(`SOMMELIER_VM_SKIP=${requested.join(",")}`)
  const why = prepared?.unavailable[m]
  if (why) throw new Error(`machine ${m} cannot run here: ${why}\n(set SOMMELIER_VM_SKIP=${m} to skip it on purpose)`)
  const run = runs.get(m)
  if (!run?.result) throw new Error(`machine ${m} did not run: ${run?.error ?? "prepare failed"}`)
  return run.result
}

const context = (r: BootResult): string =>
  `\n--- QEMU: ${r.argv.join(" ")}\n--- exit ${r.exitCode}${r.timedOut ? " (timed out)" : ""}; qemu stderr:\n${r.qemuStderr.slice(-2000)}\n--- console (tail):\n${r.console.slice(-3000)}`

describe.each(MACHINES)("VM %s", (m) => {
  it(`boots Debian's kernel and loads virtio-gpu (${MACHINE_SPECS[m].describe})`, (ctx) => {
    const r = resultOf(m, ctx)
    expect(r.timedOut, context(r)).toBe(false)
    expect(r.exitCode, context(r)).toBe(0)
    expect(r.insmodFailed, context(r)).toEqual([])
    expect(r.features, context(r)).toBeDefined()
    expect(Object.keys(r.jobs).sort(), context(r)).toEqual([PROBE, EXERCISE_REPORT].sort())
  })

  it("sommelier probe --json reports exactly what the device offers", (ctx) => {
    const r = resultOf(m, ctx)
    const job = r.jobs[PROBE]
    expect(job, context(r)).toBeDefined()
    const report = parseJson<ProbeJson>(job!.stdout)
    expect(report, `probe printed no JSON (rc ${job!.rc}):\n${job!.stdout}\n${job!.stderr}`).toBeDefined()
    const want = OFFERS[m]
    expect(report!.devices.length).toBe(1)
    expect(report!.otherNodes).toEqual([])
    const dev = report!.devices[0]!
    expect(dev.device).toBe("/dev/dri/renderD128")
    expect(dev.backend).toBe("kernel")
    expect(dev.driver?.name).toBe("virtio_gpu")
    const got = Object.fromEntries(dev.params.map((p) => [p.name, p.value ?? p.error]))
    expect(got).toEqual(want.params)
    expect(dev.capsets).toEqual(want.capsets)
    expect(dev.capsetMask).toBe(want.capsets.reduce((a, c) => a | (1 << c), 0))
    expect(dev.crossDomain).toBeNull()
    expect(dev.verdict.code).toBe(want.verdict)
    expect(report!.verdict.code).toBe(want.verdict)
    expect(report!.verdict.available).toBe(false)
    expect(report!.exitCode).toBe(2)
    expect(job!.rc).toBe(2)

    // The kernel's own view must agree with both the table and the probe.
    const f = parseFeatures(r.features ?? "")
    const fromKernel = paramsFromFeatures(f)
    for (const [name, v] of Object.entries(fromKernel)) expect(got[name], `debugfs says ${name}=${v}`).toBe(v)
    expect(Number(f["cap sets"]), "debugfs cap sets").toBe(want.capsets.length)
  })

  it("the kernel backend reaches the expected outcome at every step", (ctx) => {
    const r = resultOf(m, ctx)
    const job = r.jobs[EXERCISE_REPORT]
    expect(job, context(r)).toBeDefined()
    const report = parseJson<ExerciseReport>(job!.stdout)
    expect(report, `the exercise wrote no report:\n${r.jobs[PROBE]?.stderr}`).toBeDefined()
    const got = Object.fromEntries(report!.steps.filter((st) => !INFO_STEPS.includes(st.step)).map((st) => [st.step, outcome(st)]))
    const detail = report!.steps
      .filter((st) => outcome(st) !== EXERCISE[m][st.step])
      .map((st) => `${st.step}: ${outcome(st)} ${st.message ?? ""}`)
      .join("\n")
    expect(got, detail).toEqual(EXERCISE[m])
  })
})

describe("VM gl-blob: the cross-domain contract's kernel side", () => {
  const steps = (ctx: { skip: (note?: string) => never }): ReadonlyMap<string, StepResult> => {
    const r = resultOf("gl-blob", ctx)
    const report = parseJson<ExerciseReport>(r.jobs[EXERCISE_REPORT]?.stdout)
    if (!report) throw new Error("no exercise report")
    return new Map(report.steps.map((st) => [st.step, st]))
  }

  it("capset 5 is refused with an error that names the VMM flags", (ctx) => {
    const st = steps(ctx)
    for (const name of ["get caps 5", "context init 5"]) {
      const e = st.get(name)!
      expect(e.reason, name).toBe("Unsupported")
      expect(e.errno, name).toBe("EINVAL")
      expect(e.message, name).toMatch(/capset 5 is not offered by the VMM/)
      expect(e.message, name).toMatch(/cross-domain/)
    }
  })

  it("a GUEST blob round-trips through MAP, a second mapping, the dma-buf and a second file", (ctx) => {
    const st = steps(ctx)
    const blob = st.get("create guest blob")!.value as { handle: number; resId: number }
    expect(blob.handle).toBeGreaterThan(0)
    expect(blob.resId).toBeGreaterThan(0)
    expect(st.get("resource info")!.value).toEqual({ resId: blob.resId, size: 8192, blobMem: 1 })
    expect(st.get("importer resource info")!.value).toEqual({ resId: blob.resId, size: 8192, blobMem: 1 })
    expect(st.get("prime import, same file")!.value).toBe(blob.handle)
  })

  it("a fence on a polled ring raises one FENCE_SIGNALED event", (ctx) => {
    const st = steps(ctx)
    for (const name of ["fence event ring 0, nop", "fence event ring 0, empty command"]) {
      const v = st.get(name)!.value as { events: string[] }
      expect(v.events, name).toEqual(["0x90000000"])
    }
  })
})
