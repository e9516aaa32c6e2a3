/**
 * `serve --mode cross-domain|auto` from the command line: one-line errors and exit status 1 when
 * cross-domain cannot run, and auto saying which mode it chose. (No virtio-gpu render node exists
 * on the test machine; `emulated:PATH` with nothing listening stands for a missing device.)
 */
import { describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..")

const sommelier = (args: string[], env: NodeJS.ProcessEnv) =>
  new Promise<{ code: number | null; stderr: string }>((done) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(repoRoot, "src/cli/main.ts"), ...args], { cwd: repoRoot, env, stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()))
    child.once("exit", (code) => done({ code, stderr }))
  })

describe("sommelier serve --mode", () => {
  it("cross-domain without a usable device: one line, exit 1", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sommelier-cli-"))
    try {
      const env = { ...process.env, XDG_RUNTIME_DIR: dir }
      const r = await sommelier(["serve", "wayland-x", "--mode", "cross-domain", "--virtgpu", `emulated:${dir}/none`], env)
      expect(r.code).toBe(1)
      expect(r.stderr.trim().split("\n")).toHaveLength(1)
      expect(r.stderr).toMatch(/^sommelier: cross-domain mode: .*emulate-host --listen/)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 60_000)

  it("auto with neither a device nor a host compositor: one line naming both, exit 1", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sommelier-cli-"))
    try {
      const env = { ...process.env, XDG_RUNTIME_DIR: dir, WAYLAND_DISPLAY: "nobody-here" }
      const r = await sommelier(["serve", "wayland-x", "--mode", "auto", "--virtgpu", `emulated:${dir}/none`], env)
      expect(r.code).toBe(1)
      expect(r.stderr.trim().split("\n")).toHaveLength(1)
      expect(r.stderr).toMatch(/^sommelier: --mode auto found neither a cross-domain device \(.*\) nor a host compositor \(nothing answers at .*nobody-here\)/)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 60_000)
})
