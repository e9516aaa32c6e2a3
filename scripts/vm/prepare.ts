/**
 * Everything a VM run needs, in one call: the project built, the kernel (and, for the gl-blob
 * machine, trixie's QEMU) fetched into the cache by `fetch.sh`, and the guest image built with
 * the standard jobs. Used by the VM test and by `scripts/vm/run.ts`.
 *
 * Not here: booting (`qemu.ts`) or judging what the guest reported (test/vm/).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { buildImage, REPO, run, type ImageInfo, type Job } from "./image.js"
import { CACHE, MACHINE_SPECS, qemuVersion, type Machine } from "./qemu.js"

/**
 * The guest's jobs: the CLI exactly as a user runs it, the kernel-backend exercise, and both in one
 * node process (`exercise+probe`: the exercise preloaded with --import writes its report to a file
 * that `exercise-report` prints, then the CLI runs `probe --json` as the main module), which saves
 * one start of node and Effect: ~25 s of guest CPU under TCG.
 */
export const JOBS: Readonly<Record<string, Job>> = {
  probe: { command: "bin/sommelier probe --json", trace: ["bin/sommelier", "probe", "--json"] },
  "probe-text": { command: "bin/sommelier probe" }, // loads what probe --json loads
  exercise: { command: "node test/vm/guest/exercise.js", trace: ["test/vm/guest/exercise.js"] },
  "exercise+probe": {
    command: "SOMMELIER_VM_EXERCISE_OUT=/tmp/exercise.json node --import ./test/vm/guest/exercise.js bin/sommelier probe --json"
  },
  "exercise-report": { command: "cat /tmp/exercise.json" }
}
export const GUEST_SCRIPTS = ["test/vm/guest/exercise.ts"] as const

export type Part = "kernel" | "qemu-trixie"

/** Runs fetch.sh for one part; returns its directory, or the reason it failed (with fetch.sh's stderr tail). */
export const fetchPart = async (
  part: Part
): Promise<{ ok: true; dir: string; version: string; ms: number } | { ok: false; error: string }> => {
  const t0 = Date.now()
  const r = await run("bash", [path.join(REPO, "scripts", "vm", "fetch.sh"), part], {
    timeoutMs: 900_000,
    env: { ...process.env, SOMMELIER_VM_CACHE: CACHE }
  })
  const line = r.stdout.split("\n").find((l) => l.startsWith(`${part} `))
  if (r.status !== 0 || !line) {
    return { ok: false, error: `scripts/vm/fetch.sh ${part} exited ${r.status}: ${r.stderr.trim().split("\n").slice(-8).join("\n")}` }
  }
  const dir = line.slice(part.length + 1).trim()
  return { ok: true, dir, version: fs.readFileSync(path.join(dir, "version"), "utf8").trim(), ms: Date.now() - t0 }
}

/** Every file below `dir`. */
const walk = (dir: string): string[] =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((d) => (d.isDirectory() ? walk(path.join(dir, d.name)) : [path.join(dir, d.name)]))

/** Every src/**.ts has its dist/**.js, no older than it. */
const distIsCurrent = (): boolean => {
  const src = path.join(REPO, "src")
  return walk(src)
    .filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))
    .every((f) => {
      const js = path.join(REPO, "dist", path.relative(src, f).replace(/\.ts$/, ".js"))
      return fs.existsSync(js) && fs.statSync(js).mtimeMs >= fs.statSync(f).mtimeMs
    })
}

/** dist/sommelier.mjs exists and nothing in dist/ is newer (bin/sommelier's own rule). */
const bundleIsCurrent = (): boolean => {
  const bundle = path.join(REPO, "dist", "sommelier.mjs")
  if (!fs.existsSync(bundle)) return false
  const at = fs.statSync(bundle).mtimeMs
  return walk(path.join(REPO, "dist")).every((f) => !f.endsWith(".js") || fs.statSync(f).mtimeMs <= at)
}

/** `npm run build` unless dist/ is current (tsc takes ~9 s of CPU even with nothing to do). Throws with tsc's output. */
export const buildProject = async (): Promise<number> => {
  const t0 = Date.now()
  if (!distIsCurrent()) {
    const r = await run(process.execPath, [path.join(REPO, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.build.json"], {
      cwd: REPO
    })
    if (r.status !== 0) throw new Error(`npm run build failed:\n${r.stdout}${r.stderr}`)
  } else if (bundleIsCurrent()) return 0
  // The bundle bin/sommelier prefers: the guest loads a couple of modules instead of ~900.
  const b = await run(process.execPath, [path.join(REPO, "scripts", "bundle.mjs")], { cwd: REPO })
  if (b.status !== 0) throw new Error(`bundling dist/ failed:\n${b.stdout}${b.stderr}`)
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
export const prepare = async (machines: readonly Machine[], imagePath: string): Promise<Prepared> => {
  const buildMs = await buildProject()
  const t0 = Date.now()
  const kernel = await fetchPart("kernel")
  if (!kernel.ok) throw new Error(kernel.error)
  const unavailable: Partial<Record<Machine, string>> = {}
  const qemuVersions: Partial<Record<"bookworm" | "trixie", string>> = {}
  const wanted = new Set(machines.map((m) => MACHINE_SPECS[m].qemu))
  if (wanted.has("trixie")) {
    const q = await fetchPart("qemu-trixie")
    if (!q.ok) for (const m of machines) if (MACHINE_SPECS[m].qemu === "trixie") unavailable[m] = q.error
  }
  for (const which of wanted) {
    if (machines.every((m) => MACHINE_SPECS[m].qemu !== which || unavailable[m])) continue
    const v = await qemuVersion(which)
    if (v.ok) qemuVersions[which] = v.version
    else for (const m of machines) if (MACHINE_SPECS[m].qemu === which) unavailable[m] ??= v.error
  }
  const fetchMs = Date.now() - t0
  const t1 = Date.now()
  const image = await buildImage({
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
