/**
 * Runs the project inside a QEMU guest by hand and prints what it said:
 *
 *   npx tsx scripts/vm/run.ts [--machine 2d|gl|gl-blob|all]... [JOB]...
 *
 * JOB is one of probe (probe --json), probe-text (plain probe), exercise (the kernel-backend
 * exercise); default probe-text. Machines default to gl-blob. Fetches into the cache on first use
 * (scripts/vm/fetch.sh), builds the project and the image, starts a private Xvfb for the gl machines.
 * Exit status: 0 when every job ran (whatever it reported), 1 otherwise.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { JOBS, prepare } from "./prepare.js"
import { boot, MACHINE_SPECS, MACHINES, startXvfb, type Machine } from "./qemu.js"

const args = process.argv.slice(2)
const machines: Machine[] = []
const jobs: string[] = []
for (let i = 0; i < args.length; i++) {
  const a = args[i]!
  if (a === "--machine") {
    const m = args[++i] ?? ""
    if (m === "all") machines.push(...MACHINES)
    else if (MACHINES.includes(m as Machine)) machines.push(m as Machine)
    else throw new Error(`--machine: ${m} is not one of ${MACHINES.join(", ")}, all`)
  } else if (a === "--help" || a === "-h") {
    process.stdout.write(`usage: npx tsx scripts/vm/run.ts [--machine ${MACHINES.join("|")}|all]... [${Object.keys(JOBS).join("|")}]...\n`)
    process.exit(0)
  } else if (a in JOBS) jobs.push(a)
  else throw new Error(`unknown argument ${a}`)
}
if (machines.length === 0) machines.push("gl-blob")
if (jobs.length === 0) jobs.push("probe-text")

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sommelier-vm-run-"))
let failed = false
try {
  process.stderr.write("preparing (build, fetch, image)…\n")
  const p = await prepare(machines, path.join(dir, "initramfs.cpio"))
  const x = machines.some((m) => MACHINE_SPECS[m].gl) ? await startXvfb() : undefined
  try {
    for (const m of machines) {
      process.stdout.write(`\n=== ${m}: ${MACHINE_SPECS[m].describe}\n`)
      const why = p.unavailable[m]
      if (why) {
        process.stdout.write(`not run: ${why}\n`)
        failed = true
        continue
      }
      const r = await boot({
        machine: m,
        kernel: p.kernel.vmlinux,
        initrd: p.image.path,
        jobs,
        timeoutMs: 900_000,
        ...(x && MACHINE_SPECS[m].gl ? { display: x.display } : {})
      })
      for (const j of jobs) {
        const res = r.jobs[j]
        if (!res) {
          failed = true
          process.stdout.write(`--- ${j}: did not run\n`)
          continue
        }
        process.stdout.write(`--- ${j} (exit ${res.rc}, ${(res.ms / 1000).toFixed(1)} s in the guest)\n${res.stdout}\n`)
        if (res.stderr.trim()) process.stdout.write(`--- ${j} stderr\n${res.stderr}\n`)
      }
      process.stdout.write(`(QEMU ${(r.wallMs / 1000).toFixed(1)} s, CPU ${(r.cpuMs / 1000).toFixed(1)} s${r.timedOut ? ", TIMED OUT" : ""})\n`)
      if (r.timedOut || r.exitCode !== 0) {
        failed = true
        process.stdout.write(`QEMU exit ${r.exitCode}; console tail:\n${r.console.slice(-2000)}\n${r.qemuStderr.slice(-1000)}\n`)
      }
    }
  } finally {
    await x?.stop()
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}
process.exitCode = failed ? 1 : 0
