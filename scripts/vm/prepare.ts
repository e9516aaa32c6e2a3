/**
 * Everything a VM run needs, in one call: the project built, the kernel (and, for the gl-blob
 * machine, trixie's QEMU) fetched into the cache by `fetch.sh`, and the guest image built with
 * the standard jobs. Used by the VM test and by `scripts/vm/run.ts`.
 *
 * Not here: booting (`qemu.ts`) or judging what the guest reported (test/vm/).
 */
import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { buildImage, REPO, type ImageInfo, type Job } from "./image.js"
import { CACHE, MACHINE_SPECS, qemuVersion, type Machine } from "./qemu.js"

/** The guest's jobs: the CLI exactly as a user runs it, and the kernel-backend exercise. */
export const JOBS: Readonly<Record<string, Job>> = {
  probe: { command: "bin/sommelier probe --json", trace: ["bin/sommelier", "probe", "--json"] },
  "probe-text": { command: "bin/sommelier probe" }, // loads what probe --json loads
  exercise: { command: "node test/vm/guest/exercise.js", trace: ["test/vm/guest/exercise.js"] }
}
export const GUEST_SCRIPTS = ["test/vm/guest/exercise.ts"] as const

export type Part = "kernel" | "qemu-trixie"

/** Runs fetch.sh for one part; returns its directory, or the reason it failed (with fetch.sh's stderr tail). */
export const fetchPart = (part: Part): { ok: true; dir: string; version: string; ms: number } | { ok: false; error: string } => {
  const t0 = Date.now()
  const r = spawnSync("bash", [path.join(REPO, "scripts", "vm", "fetch.sh"), part], {
    encoding: "utf8",
    timeout: 900_000,
    env: { ...process.env, SOMMELIER_VM_CACHE: CACHE }
  })
  const line = r.stdout.split("\n").find((l) => l.startsWith(`${part} `))
  if (r.status !== 0 || !line) {
    return { ok: false, error: `scripts/vm/fetch.sh ${part} exited ${r.status ?? r.signal}: ${r.stderr.trim().split("\n").slice(-8).join("\n")}` }
  }
  const dir = line.slice(part.length + 1).trim()
  return { ok: true, dir, version: fs.readFileSync(path.join(dir, "version"), "utf8").trim(), ms: Date.now() - t0 }
}

/** `npm run build` (incremental: seconds when dist/ is current). Throws with tsc's output. */
export const buildProject = (): number => {
  const t0 = Date.now()
  execFileSync(process.execPath, [path.join(REPO, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.build.json"], {
    cwd: REPO,
    stdio: "pipe"
  })
  return Date.now() - t0
}

export interface Prepared {
  readonly kernel: { readonly vmlinux: string; readonly version: string }
  readonly image: ImageInfo & { readonly ms: number }
  readonly buildMs: number
  readonly fetchMs: number
  /** Why a machine cannot run here (missing QEMU, failed fetch); absent = can run. */
  readonly unavailable: Partial<Record<Machine, string>>
  readonly qemuVersions: Partial<Record<"bookworm" | "trixie", string>>
}

/** Fetches what `machines` need, builds the project and the image. Throws when the kernel or the image cannot be had. */
export const prepare = (machines: readonly Machine[], imagePath = path.join(CACHE, "image", "initramfs.cpio")): Prepared => {
  const buildMs = buildProject()
  const t0 = Date.now()
  const kernel = fetchPart("kernel")
  if (!kernel.ok) throw new Error(kernel.error)
  const unavailable: Partial<Record<Machine, string>> = {}
  const qemuVersions: Partial<Record<"bookworm" | "trixie", string>> = {}
  const wanted = new Set(machines.map((m) => MACHINE_SPECS[m].qemu))
  if (wanted.has("trixie")) {
    const q = fetchPart("qemu-trixie")
    if (!q.ok) for (const m of machines) if (MACHINE_SPECS[m].qemu === "trixie") unavailable[m] = q.error
  }
  for (const which of wanted) {
    if (machines.every((m) => MACHINE_SPECS[m].qemu !== which || unavailable[m])) continue
    const v = qemuVersion(which)
    if (v.ok) qemuVersions[which] = v.version
    else for (const m of machines) if (MACHINE_SPECS[m].qemu === which) unavailable[m] ??= v.error
  }
  const fetchMs = Date.now() - t0
  const t1 = Date.now()
  const image = buildImage({
    kernelDir: kernel.dir,
    output: imagePath,
    jobs: JOBS,
    guestScripts: GUEST_SCRIPTS
  })
  return {
    kernel: { vmlinux: path.join(kernel.dir, "vmlinux"), version: kernel.version },
    image: { ...image, ms: Date.now() - t1 },
    buildMs,
    fetchMs,
    unavailable,
    qemuVersions
  }
}
