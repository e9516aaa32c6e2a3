/**
 * `sommelier probe`: the verdicts (no device on this machine; "cross-domain available" on the
 * emulator), the report's contents, the CLI's output and exit statuses (0 available, 2 not).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { existsSync, readdirSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { formatReport, probe } from "../../src/virtgpu/probe.js"
import { withNoFdLeak } from "../helpers/fds.js"
import { startEmulatorProcess, type EmulatorProcess } from "../emulator/fixture.js"

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const hasRenderNodes = existsSync("/dev/dri") && readdirSync("/dev/dri").some((f) => f.startsWith("renderD"))

let emu: EmulatorProcess

beforeAll(async () => {
  // probe creates no context, so no compositor needs to answer at this path.
  emu = await startEmulatorProcess("/nonexistent/wayland-0")
}, 60_000)

afterAll(async () => {
  await emu?.stop()
})

const cli = (args: string[]): Promise<{ code: number | null; stdout: string }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(repoRoot, "src/cli/main.ts"), "probe", ...args], {
      cwd: repoRoot,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    child.once("error", reject)
    child.once("close", (code) => resolve({ code, stdout }))
  })

describe("probe", () => {
  it.skipIf(hasRenderNodes)("this machine: no virtio-gpu render node, not available", () =>
    withNoFdLeak(() => {
      const r = probe()
      expect(r.devices).toEqual([])
      expect(r.exitCode).toBe(2)
      expect(r.verdict.code).toBe("no-device")
      expect(formatReport(r)).toMatch(/^verdict: no virtio-gpu render node/m)
    })
  )

  it("the emulator: every GETPARAM, capset 5 and its capabilities, cross-domain available", () =>
    withNoFdLeak(() => {
      const r = probe(`emulated:${emu.socketPath}`)
      expect(r.exitCode).toBe(0)
      expect(r.verdict).toEqual({ available: true, code: "available", message: "cross-domain available" })
      const d = r.devices[0]!
      expect(d.driver?.name).toBe("virtio_gpu")
      expect(d.params.map((p) => [p.param, p.value ?? p.error])).toEqual([
        [1, 1],
        [2, 1],
        [3, 1],
        [4, 1],
        [5, 1],
        [6, 1],
        [7, 0x20],
        [8, "EINVAL"]
      ])
      expect(d.capsets).toEqual([5])
      expect(d.crossDomain).toEqual({ version: 1, supportedChannels: 2, supportsDmabuf: 0, supportsExternalGpuMemory: 0 })
      const text = formatReport(r)
      expect(text).toMatch(/GETPARAM 7 SUPPORTED_CAPSET_IDs: 0x20/)
      expect(text).toMatch(/cross-domain: version 1, supported_channels 0x2 \(wayland\), supports_dmabuf 0/)
      expect(text.trimEnd().split("\n").at(-1)).toBe("verdict: cross-domain available")
    })
  )

  it("no emulator at the path: not available, and says how to start one", () =>
    withNoFdLeak(() => {
      const r = probe("emulated:/nonexistent/vgpu.sock")
      expect(r.exitCode).toBe(2)
      expect(r.verdict.code).toBe("no-device")
      expect(r.verdict.message).toMatch(/sommelier emulate-host --listen \/nonexistent\/vgpu.sock/)
    })
  )

  it("the CLI: text and JSON, exit status 0 when available and 2 when not", async () => {
    const [none, emulated] = await Promise.all([cli(hasRenderNodes ? ["--device", "/dev/null"] : []), cli(["--device", `emulated:${emu.socketPath}`, "--json"])])
    expect(none.code).toBe(2)
    expect(none.stdout).toMatch(/^verdict: /m)
    expect(emulated.code).toBe(0)
    const report = JSON.parse(emulated.stdout) as { verdict: { code: string }; devices: Array<{ capsets: number[] }> }
    expect(report.verdict.code).toBe("available")
    expect(report.devices[0]?.capsets).toEqual([5])
  }, 60_000)
})
