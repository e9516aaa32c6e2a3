/**
 * Boots the guest image under QEMU (TCG: this machine's /dev/kvm is a nested hypervisor that
 * cannot run a guest kernel) with one of three virtio-gpu devices, and returns what the guest
 * wrote on its second serial port:
 *   2d           bookworm's QEMU 7.2, `virtio-gpu-pci`: no 3D, no capsets (the negative paths)
 *   gl           bookworm's QEMU 7.2, `virtio-gpu-gl-pci`: 3D, capsets {1,2}, no context-init
 *   gl-blob      trixie's QEMU 10.0, `virtio-gpu-gl-pci,blob=true,hostmem=256M`: context-init,
 *                blob and host-visible memory
 * The gl devices need a GL display: SDL with `gl=on` in a private Xvfb (Mesa's llvmpipe);
 * `egl-headless` gives the device no render node.
 *
 * Not here: building the image (`image.ts`) or fetching the kernel and trixie's QEMU (`fetch.sh`).
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { CACHE, parseGuestOutput, run, type GuestOutput } from "./image.js"

export type Machine = "2d" | "gl" | "gl-blob"
export const MACHINES: readonly Machine[] = ["2d", "gl", "gl-blob"]

export interface MachineSpec {
  readonly qemu: "bookworm" | "trixie"
  readonly device: string
  readonly gl: boolean
  readonly describe: string
}

export const MACHINE_SPECS: Readonly<Record<Machine, MachineSpec>> = {
  "2d": { qemu: "bookworm", device: "virtio-gpu-pci", gl: false, describe: "bookworm QEMU, virtio-gpu-pci (2D)" },
  gl: { qemu: "bookworm", device: "virtio-gpu-gl-pci", gl: true, describe: "bookworm QEMU, virtio-gpu-gl-pci" },
  "gl-blob": {
    qemu: "trixie",
    device: "virtio-gpu-gl-pci,blob=true,hostmem=256M",
    gl: true,
    describe: "trixie QEMU, virtio-gpu-gl-pci with blob and 256 MiB host-visible memory"
  }
}

export { CACHE }

/** argv prefix of a QEMU: the host's for bookworm, the fetch.sh wrapper for trixie. */
export const qemuCommand = (which: "bookworm" | "trixie"): readonly string[] =>
  which === "bookworm" ? ["qemu-system-x86_64"] : [path.join(CACHE, "qemu-trixie", "qemu")]

/** `QEMU emulator version …` of a QEMU, or an error message. */
export const qemuVersion = async (
  which: "bookworm" | "trixie"
): Promise<{ ok: true; version: string } | { ok: false; error: string }> => {
  const [cmd, ...args] = qemuCommand(which)
  const r = await run(cmd!, [...args, "--version"], { timeoutMs: 20_000 })
  if (r.status !== 0) return { ok: false, error: `${cmd} --version exited ${r.status}: ${r.stderr.trim()}` }
  return { ok: true, version: r.stdout.split("\n")[0]!.trim() }
}

export interface Xvfb {
  readonly display: string
  stop(): Promise<void>
}

/** A private Xvfb on a display number it picks itself (`-displayfd`). */
export const startXvfb = (): Promise<Xvfb> =>
  new Promise((resolve, reject) => {
    const proc = spawn("Xvfb", ["-displayfd", "3", "-screen", "0", "1024x768x24", "-nolisten", "tcp"], {
      stdio: ["ignore", "ignore", "pipe", "pipe"]
    })
    let err = ""
    let out = ""
    const timer = setTimeout(() => fail(new Error(`Xvfb reported no display within 10 s: ${err.slice(-500)}`)), 10_000)
    const fail = (e: Error) => {
      clearTimeout(timer)
      proc.kill("SIGKILL")
      reject(e)
    }
    proc.stderr!.on("data", (d: Buffer) => (err += d.toString()))
    proc.once("error", (e) => fail(new Error(`cannot start Xvfb: ${e.message}`)))
    proc.once("exit", (code) => fail(new Error(`Xvfb exited with ${code}: ${err.slice(-500)}`)))
    ;(proc.stdio[3] as NodeJS.ReadableStream).on("data", (d: Buffer) => {
      out += d.toString()
      if (!out.includes("\n")) return
      clearTimeout(timer)
      proc.removeAllListeners("exit")
      resolve({
        display: `:${out.trim()}`,
        stop: () =>
          new Promise((done) => {
            if (proc.exitCode !== null || proc.signalCode !== null) return done()
            proc.once("exit", () => done())
            proc.kill("SIGTERM")
            setTimeout(() => proc.kill("SIGKILL"), 3000).unref()
          })
      })
    })
  })

export interface BootOptions {
  readonly machine: Machine
  readonly kernel: string
  readonly initrd: string
  /** Jobs to run (names from the image); default: all. */
  readonly jobs?: readonly string[]
  /** X display for the gl machines. */
  readonly display?: string
  readonly timeoutMs?: number
  /** Extra kernel command line. */
  readonly append?: string
  /** vCPUs (multi-threaded TCG when > 1); default 1. */
  readonly smp?: number
  /** QEMU -cpu model; default "max". */
  readonly cpu?: string
}

export interface BootResult extends GuestOutput {
  readonly machine: Machine
  readonly argv: readonly string[]
  /** QEMU start to exit, ms. */
  readonly wallMs: number
  /** QEMU's CPU time (user + system, all threads), ms: unlike wall time, not inflated by a busy host. */
  readonly cpuMs: number
  readonly exitCode: number | null
  readonly timedOut: boolean
  /** Kernel console (ttyS0) and QEMU's own stderr, for failure messages. */
  readonly console: string
  readonly qemuStderr: string
}

const CLOCK_TICKS = 100 // USER_HZ on Linux

/** utime + stime of a process from /proc, ms; undefined once it is gone. */
const cpuTimeMs = (pid: number | undefined): number | undefined => {
  if (pid === undefined) return undefined
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS
  } catch {
    return undefined
  }
}

export const boot = async (o: BootOptions): Promise<BootResult> => {
  const spec = MACHINE_SPECS[o.machine]
  if (spec.gl && !o.display) throw new Error(`machine ${o.machine} needs an X display (Xvfb) for SDL's GL`)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `sommelier-vm-${o.machine}-`))
  const consoleLog = path.join(dir, "console")
  const outLog = path.join(dir, "out")
  const append = [
    "console=ttyS0",
    "quiet",
    "panic=-1",
    "mitigations=off",
    ...(o.jobs ? [`sommelier.jobs=${o.jobs.join(",")}`] : []),
    ...(o.append ? [o.append] : [])
  ].join(" ")
  const [cmd, ...pre] = qemuCommand(spec.qemu)
  const argv = [
    ...pre,
    "-accel", (o.smp ?? 1) > 1 ? "tcg,thread=multi" : "tcg",
    "-smp", String(o.smp ?? 1),
    "-cpu", o.cpu ?? "max",
    "-m", "1024",
    "-nodefaults",
    "-no-user-config",
    "-no-reboot",
    "-vga", "none",
    "-display", spec.gl ? "sdl,gl=on" : "none",
    "-device", spec.device,
    "-kernel", o.kernel,
    "-initrd", o.initrd,
    "-append", append,
    "-serial", `file:${consoleLog}`,
    "-serial", `file:${outLog}`
  ]
  const started = Date.now()
  const env = { ...process.env, ...(o.display ? { DISPLAY: o.display } : {}) }
  try {
    let cpuMs = 0
    const { exitCode, stderr, timedOut } = await new Promise<{ exitCode: number | null; stderr: string; timedOut: boolean }>(
      (resolve, reject) => {
        const proc = spawn(cmd!, argv, {
          stdio: ["ignore", "ignore", "pipe"],
          env
        })
        let stderr = ""
        let timedOut = false
        proc.stderr!.on("data", (d: Buffer) => (stderr += d.toString()))
        const timer = setTimeout(() => {
          timedOut = true
          proc.kill("SIGKILL")
        }, o.timeoutMs ?? 120_000)
        // Sampled: Node gives no rusage for children. The trixie wrapper execs, so the pid is QEMU's.
        const sampler = setInterval(() => {
          const t = cpuTimeMs(proc.pid)
          if (t !== undefined) cpuMs = t
        }, 250)
        const done = () => {
          clearTimeout(timer)
          clearInterval(sampler)
        }
        proc.once("error", (e) => {
          done()
          reject(new Error(`cannot start ${cmd}: ${e.message}`))
        })
        proc.once("exit", (code) => {
          done()
          resolve({ exitCode: code, stderr, timedOut })
        })
      }
    )
    const read = (p: string) => (fs.existsSync(p) ? fs.readFileSync(p, "utf8") : "")
    return {
      ...parseGuestOutput(read(outLog)),
      machine: o.machine,
      argv: [cmd!, ...argv],
      wallMs: Date.now() - started,
      cpuMs,
      exitCode,
      timedOut,
      console: read(consoleLog),
      qemuStderr: stderr
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}
