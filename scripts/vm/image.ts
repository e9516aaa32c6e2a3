/**
 * Builds the VM test's guest image: one uncompressed initramfs (newc cpio) that holds busybox,
 * the virtio-gpu kernel modules, the host's own `node` binary with every shared library it maps,
 * and the project as built: `package.json`, `bin/sommelier`, `dist/`, the guest scripts, and of
 * `node_modules` only the files the guest entry points load. Those are found by running each entry
 * point on the host under a module-resolution hook (plus `/proc/self/maps` at exit for native
 * libraries), so nothing is listed by hand and nothing unused (dts, sources, other platforms'
 * binaries) goes in.
 *
 * The image's `/init` loads the modules, writes the kernel's view of the device (debugfs
 * `virtio-gpu-features`) and then runs the jobs named by `sommelier.jobs=a,b` on the kernel
 * command line (default: all), one after another. Everything meant for the host goes to the
 * second serial port (ttyS1) between marker lines, so kernel messages on the console never mix
 * with it; `parseGuestOutput` reads it back. Then it powers the machine off.
 *
 * Not here: fetching the kernel (`fetch.sh`) and running QEMU (`qemu.ts`).
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import ts from "typescript"

export const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..", "..")
/** Downloads and unpacked packages (fetch.sh), the stripped node binary. Kept between runs. */
export const CACHE = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "sommelier", "vm")
/** Where the project lives inside the guest. */
export const GUEST_ROOT = "/opt/sommelier"

/**
 * Runs a command without blocking the event loop (the VM test runs inside a vitest worker whose
 * RPC times out when the loop stalls). Never rejects: a failure to start is status null.
 */
export const run = (
  cmd: string,
  args: readonly string[],
  o: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}
): Promise<{ status: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    const proc = spawn(cmd, args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    proc.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    proc.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    const timer = o.timeoutMs ? setTimeout(() => proc.kill("SIGKILL"), o.timeoutMs) : undefined
    proc.once("error", (e) => {
      clearTimeout(timer)
      resolve({ status: null, stdout, stderr: stderr + e.message })
    })
    proc.once("close", (status) => {
      clearTimeout(timer)
      resolve({ status, stdout, stderr })
    })
  })

export interface Job {
  /** A shell command run by busybox sh in GUEST_ROOT. */
  readonly command: string
  /**
   * Host-side node argv (paths relative to the repo; guest scripts as `.js`) that loads the same
   * modules, for tracing; absent when another job's trace covers this one.
   */
  readonly trace?: readonly string[]
}

export interface ImageOptions {
  /** A `fetch.sh kernel` directory: vmlinux, modules/*.ko, modules/order. */
  readonly kernelDir: string
  readonly output: string
  readonly jobs: Readonly<Record<string, Job>>
  /** TypeScript files (relative to REPO) transpiled into the guest next to dist/, with `src/` imports pointed at `dist/`. */
  readonly guestScripts: readonly string[]
}

export interface ImageInfo {
  readonly path: string
  readonly bytes: number
  readonly files: number
  readonly nodeModulesFiles: number
  readonly libraries: readonly string[]
}

/** Module parameters: no fbdev console on the virtio-gpu (nothing looks at it; its damage worker warns at power-off). */
const MODULE_PARAMS: Readonly<Record<string, string>> = { drm_kms_helper: "fbdev_emulation=0" }

// ---------------------------------------------------------------------------------------------
// newc cpio

type Entry =
  | { readonly kind: "dir"; readonly mode: number }
  | { readonly kind: "file"; readonly mode: number; readonly source: string }
  | { readonly kind: "data"; readonly mode: number; readonly data: Buffer }
  | { readonly kind: "symlink"; readonly target: string }

class Cpio {
  readonly entries = new Map<string, Entry>()

  dir(p: string): void {
    const parts = p.split("/").filter(Boolean)
    for (let i = 1; i <= parts.length; i++) {
      const d = "/" + parts.slice(0, i).join("/")
      if (!this.entries.has(d)) this.entries.set(d, { kind: "dir", mode: 0o755 })
    }
  }

  private parent(p: string): void {
    const d = path.posix.dirname(p)
    if (d !== "/") this.dir(d)
  }

  data(p: string, data: string | Buffer, mode = 0o644): void {
    this.parent(p)
    this.entries.set(p, { kind: "data", mode, data: typeof data === "string" ? Buffer.from(data) : data })
  }

  file(p: string, source: string, mode?: number): void {
    this.parent(p)
    const st = fs.statSync(source)
    this.entries.set(p, { kind: "file", mode: mode ?? st.mode & 0o777, source })
  }

  symlink(p: string, target: string): void {
    this.parent(p)
    this.entries.set(p, { kind: "symlink", target })
  }

  /**
   * Copies a host path into the image at the same path, reproducing every symlink on the way
   * (`/lib64` → `usr/lib64`, the loader's own link), so the guest resolves it as the host does.
   */
  hostPath(p: string, depth = 0): void {
    if (depth > 40) throw new Error(`symlink loop at ${p}`)
    const parts = path.resolve(p).split("/").filter(Boolean)
    let cur = ""
    for (let i = 0; i < parts.length; i++) {
      cur += "/" + parts[i]
      const st = fs.lstatSync(cur)
      if (st.isSymbolicLink()) {
        const target = fs.readlinkSync(cur)
        this.symlink(cur, target)
        const rest = parts.slice(i + 1).join("/")
        this.hostPath(path.resolve(path.dirname(cur), target, rest), depth + 1)
        return
      }
      if (i < parts.length - 1) {
        if (!this.entries.has(cur)) this.entries.set(cur, { kind: "dir", mode: st.mode & 0o777 })
      } else if (st.isDirectory()) {
        this.dir(cur)
      } else {
        this.file(cur, cur)
      }
    }
  }

  /** Writes the archive; parents sort before children, so every directory exists when used. */
  async write(out: string): Promise<{ bytes: number; files: number }> {
    const fh = await fs.promises.open(out, "w")
    let offset = 0
    let ino = 1
    const pad = (n: number) => (4 - (n % 4)) % 4
    const zeros = Buffer.alloc(4)
    const record = async (name: string, mode: number, body: Buffer | null, size: number) => {
      const nameBuf = Buffer.from(name + "\0")
      const fields = [ino++, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, nameBuf.length, 0]
      const parts = [
        Buffer.from("070701" + fields.map((f) => f.toString(16).padStart(8, "0")).join("")),
        nameBuf,
        zeros.subarray(0, pad(110 + nameBuf.length)),
        ...(body ? [body] : []),
        zeros.subarray(0, pad(size))
      ]
      await fh.writev(parts)
      for (const b of parts) offset += b.length
    }
    try {
      const names = [...this.entries.keys()].sort()
      for (const name of names) {
        const e = this.entries.get(name)!
        const rel = name.slice(1)
        switch (e.kind) {
          case "dir":
            await record(rel, 0o040000 | e.mode, null, 0)
            break
          case "symlink": {
            const b = Buffer.from(e.target)
            await record(rel, 0o120777, b, b.length)
            break
          }
          case "data":
            await record(rel, 0o100000 | e.mode, e.data, e.data.length)
            break
          case "file": {
            const b = await fs.promises.readFile(e.source)
            await record(rel, 0o100000 | e.mode, b, b.length)
            break
          }
        }
      }
      await record("TRAILER!!!", 0, null, 0)
      return { bytes: offset, files: names.length }
    } finally {
      await fh.close()
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tracing what an entry point loads

const TRACE_HOOK = `
import { register } from "node:module"
import Module from "node:module"
import { appendFileSync, readFileSync } from "node:fs"
const out = process.env.SOMMELIER_VM_TRACE
const note = (p) => appendFileSync(out, p + "\\n")
register("data:text/javascript," + encodeURIComponent(\`
import { appendFileSync } from "node:fs"
export async function resolve(s, c, next) {
  const r = await next(s, c)
  if (r.url.startsWith("file://")) appendFileSync(\${JSON.stringify(out)}, decodeURIComponent(r.url.slice(7)) + "\\\\n")
  return r
}\`))
const resolveFilename = Module._resolveFilename
Module._resolveFilename = function (...args) {
  const r = resolveFilename.apply(this, args)
  if (r.startsWith("/")) note(r)
  return r
}
process.on("exit", () => {
  for (const line of readFileSync("/proc/self/maps", "utf8").split("\\n")) {
    const p = line.split(/\\s+/)[5]
    if (p && p.startsWith("/") && /\\.so(\\.|$)|\\.node$/.test(p)) note("maps:" + p)
  }
})
`

interface Trace {
  readonly files: ReadonlySet<string>
  readonly libraries: ReadonlySet<string>
}

const trace = async (argv: readonly string[], cwd: string): Promise<Trace> => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sommelier-vm-trace-"))
  try {
    const hook = path.join(dir, "hook.mjs")
    const out = path.join(dir, "out")
    fs.writeFileSync(hook, TRACE_HOOK)
    fs.writeFileSync(out, "")
    // The entry may fail (no device on the host): only what it loaded matters.
    await run(process.execPath, ["--import", hook, ...argv], {
      cwd,
      env: { ...process.env, SOMMELIER_VM_TRACE: out },
      timeoutMs: 120_000
    })
    const files = new Set<string>()
    const libraries = new Set<string>()
    for (const line of fs.readFileSync(out, "utf8").split("\n")) {
      if (line.startsWith("maps:")) libraries.add(line.slice(5))
      else if (line) files.add(line)
    }
    if (libraries.size === 0) throw new Error(`tracing ${argv.join(" ")} recorded nothing (did node start?)`)
    return { files, libraries }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------------------------
// Guest scripts

/** Transpiles a guest script; its `../../../src/x.js` imports become `../../../dist/x.js`. */
const transpile = (rel: string): string => {
  const source = fs.readFileSync(path.join(REPO, rel), "utf8")
  const out = ts.transpileModule(source, {
    fileName: rel,
    compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: false }
  }).outputText
  const depth = rel.split("/").length - 1
  const up = "../".repeat(depth)
  return out.replaceAll(`"${up}src/`, `"${up}dist/`)
}

const guestJsPath = (rel: string): string => rel.replace(/\.ts$/, ".js")

/**
 * node without its symbols (~12% smaller: less for the guest kernel to unpack), cached per
 * binary; the binary itself when `strip` (binutils) is missing.
 */
const strippedNode = async (nodeBin: string): Promise<string> => {
  const st = fs.statSync(nodeBin)
  const dir = path.join(CACHE, "node", `${process.version}-${st.size}-${Math.floor(st.mtimeMs)}`)
  const out = path.join(dir, "node")
  if (fs.existsSync(out)) return out
  fs.mkdirSync(dir, { recursive: true })
  const tmp = `${out}.${process.pid}`
  const r = await run("strip", ["-o", tmp, nodeBin])
  if (r.status !== 0) return nodeBin
  fs.renameSync(tmp, out)
  return out
}

// ---------------------------------------------------------------------------------------------
// /init

const initScript = (jobs: readonly string[], modules: readonly string[]): string => `#!/bin/busybox sh
# Generated by scripts/vm/image.ts: load virtio-gpu, run the jobs, power off.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME=/root TMPDIR=/tmp
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
OUT=/dev/ttyS1
say() { echo "$*" >"$OUT"; }
cs() { cut -d' ' -f1 /proc/uptime | tr -d .; }
say "@@vm init $(cs)"
${modules.map((m) => `insmod /modules/${m}.ko ${MODULE_PARAMS[m] ?? ""} || say "@@vm insmod-failed ${m}"`).join("\n")}
i=0
while [ ! -e /dev/dri/renderD128 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
say "@@vm modules $(cs)"
say "@@vm begin features"
cat /sys/kernel/debug/dri/0/virtio-gpu-features >"$OUT" 2>&1
say "@@vm end features"
jobs=${jobs.join(",")}
for a in $(cat /proc/cmdline); do case "$a" in sommelier.jobs=*) jobs="\${a#sommelier.jobs=}" ;; esac; done
for j in $(echo "$jobs" | tr , ' '); do
  t0=$(cs)
  if [ -f "/etc/sommelier-vm/$j" ]; then
    (cd ${GUEST_ROOT} && sh "/etc/sommelier-vm/$j" >/tmp/$j.out 2>/tmp/$j.err)
    rc=$?
  else
    echo "no such job: $j" >/tmp/$j.err; : >/tmp/$j.out; rc=127
  fi
  t1=$(cs)
  say "@@vm begin $j stdout"; cat /tmp/$j.out >"$OUT"; say ""; say "@@vm end $j stdout"
  say "@@vm begin $j stderr"; cat /tmp/$j.err >"$OUT"; say ""; say "@@vm end $j stderr"
  say "@@vm job $j rc=$rc cs=$((t1 - t0))"
done
say "@@vm done $(cs)"
sync
poweroff -f
`

// ---------------------------------------------------------------------------------------------

export const buildImage = async (o: ImageOptions): Promise<ImageInfo> => {
  const cpio = new Cpio()
  const dist = path.join(REPO, "dist")
  if (!fs.existsSync(path.join(dist, "cli", "main.js"))) throw new Error(`${dist} is not built: run npm run build`)

  // Guest scripts, transpiled into a staging tree laid out like the repo (dist/, node_modules/
  // and package.json linked in), so tracing runs them exactly as the guest will.
  const stage = fs.mkdtempSync(path.join(os.tmpdir(), "sommelier-vm-stage-"))
  try {
    for (const name of ["bin", "dist", "node_modules", "package.json"]) fs.symlinkSync(path.join(REPO, name), path.join(stage, name))
    for (const rel of o.guestScripts) {
      const js = transpile(rel)
      fs.mkdirSync(path.join(stage, path.dirname(rel)), { recursive: true })
      fs.writeFileSync(path.join(stage, guestJsPath(rel)), js)
      cpio.data(path.posix.join(GUEST_ROOT, guestJsPath(rel)), js)
    }

    // Trace every job's entry point on the host (node resolves the links to the repo's paths).
    const files = new Set<string>()
    const libraries = new Set<string>()
    for (const job of Object.values(o.jobs)) {
      if (!job.trace) continue
      const t = await trace(job.trace, stage)
      for (const f of t.files) files.add(f)
      for (const l of t.libraries) libraries.add(l)
    }

    // The project: package.json, the launcher, all of dist/ (no source maps).
    cpio.file(`${GUEST_ROOT}/package.json`, path.join(REPO, "package.json"))
    cpio.file(`${GUEST_ROOT}/bin/sommelier`, path.join(REPO, "bin", "sommelier"), 0o755)
    const walk = (dir: string): string[] =>
      fs.readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
        const p = path.join(dir, d.name)
        // .mjs: dist/sommelier.mjs, the bundle bin/sommelier runs (its dependencies are traced, not main.js's).
        return d.isDirectory() ? walk(p) : d.name.endsWith(".js") || d.name.endsWith(".mjs") ? [p] : []
      })
    for (const f of walk(dist)) cpio.file(path.posix.join(GUEST_ROOT, path.relative(REPO, f)), f)

    // node_modules: traced files and every package.json between them and node_modules/.
    const nm = path.join(REPO, "node_modules")
    let nodeModulesFiles = 0
    for (const f of files) {
      if (!f.startsWith(nm + "/")) continue
      cpio.file(path.posix.join(GUEST_ROOT, path.relative(REPO, f)), f)
      nodeModulesFiles++
      for (let d = path.dirname(f); d.startsWith(nm + "/"); d = path.dirname(d)) {
        const pj = path.join(d, "package.json")
        if (fs.existsSync(pj)) cpio.file(path.posix.join(GUEST_ROOT, path.relative(REPO, pj)), pj)
      }
    }

    // node and the shared libraries it maps (libc, libstdc++, …, the loader), at their host paths.
    const nodeBin = fs.realpathSync(process.execPath)
    cpio.file("/usr/bin/node", await strippedNode(nodeBin), 0o755)
    const interp = (await run("readelf", ["-l", nodeBin])).stdout.match(/interpreter: (\S+)\]/)?.[1]
    if (!interp) throw new Error(`no ELF interpreter in ${nodeBin}`)
    cpio.hostPath(interp)
    const libs = [...libraries].filter((l) => !l.startsWith(nm + "/")).sort()
    for (const l of libs) {
      cpio.hostPath(l)
      // The names the loader looks for (libstdc++.so.6) are links beside the mapped file.
      const dir = path.dirname(l)
      for (const name of fs.readdirSync(dir)) {
        const p = path.join(dir, name)
        if (fs.lstatSync(p).isSymbolicLink() && path.resolve(dir, fs.readlinkSync(p)) === l) cpio.symlink(p, fs.readlinkSync(p))
      }
    }

    // busybox, modules, jobs, init.
    const busybox = "/bin/busybox"
    if (!fs.existsSync(busybox)) throw new Error(`${busybox} is missing: install busybox-static (scripts/setup.sh does)`)
    const elf = await run("readelf", ["-l", busybox])
    if (elf.status !== 0) throw new Error(`readelf -l ${busybox} failed (binutils missing?): ${elf.stderr}`)
    if (/interpreter:/.test(elf.stdout))
      throw new Error(`${busybox} is dynamically linked: install busybox-static (scripts/setup.sh does)`)
    cpio.file("/bin/busybox", busybox, 0o755)
    const modules = fs
      .readFileSync(path.join(o.kernelDir, "modules", "order"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((m) => m.replace(/\.ko$/, ""))
    // Not under /lib: that is the host's /lib -> usr/lib link in the image.
    for (const m of modules) cpio.file(`/modules/${m}.ko`, path.join(o.kernelDir, "modules", `${m}.ko`))
    for (const [name, job] of Object.entries(o.jobs)) cpio.data(`/etc/sommelier-vm/${name}`, job.command + "\n")
    cpio.data("/init", initScript(Object.keys(o.jobs), modules), 0o755)
    for (const d of ["/proc", "/sys", "/dev", "/tmp", "/run", "/root"]) cpio.dir(d)

    fs.mkdirSync(path.dirname(o.output), { recursive: true })
    const { bytes, files: count } = await cpio.write(o.output)
    return { path: o.output, bytes, files: count, nodeModulesFiles, libraries: libs }
  } finally {
    fs.rmSync(stage, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------------------------
// Reading the guest's output (ttyS1)

export interface JobResult {
  readonly stdout: string
  readonly stderr: string
  readonly rc: number
  /** Wall time in the guest, ms (centisecond resolution). */
  readonly ms: number
}

export interface GuestOutput {
  /** Guest uptime when /init started and when the modules were loaded, ms. */
  readonly initMs: number | undefined
  readonly modulesMs: number | undefined
  readonly doneMs: number | undefined
  /** debugfs virtio-gpu-features, the kernel's own view of what the device offers. */
  readonly features: string | undefined
  readonly insmodFailed: readonly string[]
  readonly jobs: Readonly<Record<string, JobResult>>
}

export const parseGuestOutput = (text: string): GuestOutput => {
  const lines = text.replace(/\r/g, "").split("\n")
  const sections = new Map<string, string[]>()
  const jobs: Record<string, JobResult> = {}
  const marks = new Map<string, number>()
  const insmodFailed: string[] = []
  let open: string[] | undefined
  for (const line of lines) {
    const m = /^@@vm (\S+)(?: (.*))?$/.exec(line)
    if (!m) {
      open?.push(line)
      continue
    }
    const [, word, rest = ""] = m
    if (word === "begin") sections.set(rest, (open = []))
    else if (word === "end") open = undefined
    else if (word === "job") {
      const j = /^(\S+) rc=(\d+) cs=(\d+)$/.exec(rest)
      if (j) {
        const name = j[1]!
        const strip = (s: string[] | undefined) => (s ?? []).slice(0, -1).join("\n") // drop the separator line
        jobs[name] = {
          stdout: strip(sections.get(`${name} stdout`)),
          stderr: strip(sections.get(`${name} stderr`)),
          rc: Number(j[2]),
          ms: Number(j[3]) * 10
        }
      }
    } else if (word === "insmod-failed") insmodFailed.push(rest)
    else if (word !== undefined) marks.set(word, Number(rest) * 10)
  }
  return {
    initMs: marks.get("init"),
    modulesMs: marks.get("modules"),
    doneMs: marks.get("done"),
    features: sections.get("features")?.join("\n"),
    insmodFailed,
    jobs
  }
}
