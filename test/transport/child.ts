/** Spawning the TypeScript fixtures in test/transport/fixtures/ as separate node processes. */
import { spawn, type ChildProcess, type StdioOptions } from "node:child_process"
import { fileURLToPath } from "node:url"
import { dirname, join } from "node:path"

const here = dirname(fileURLToPath(import.meta.url))
const repoRoot = join(here, "..", "..")

export const fixture = (name: string): string => join(here, "fixtures", name)

export const spawnFixture = (name: string, args: readonly string[], stdio: StdioOptions = ["pipe", "pipe", "pipe"]): ChildProcess =>
  spawn(process.execPath, ["--import", "tsx", fixture(name), ...args], { cwd: repoRoot, stdio })

export interface Finished {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

/** Collect output and wait for exit; kills the child and rejects after `timeoutMs`. */
export const finished = (child: ChildProcess, timeoutMs = 20_000): Promise<Finished> =>
  new Promise((resolve, reject) => {
    let stdout = ""
    let stderr = ""
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()))
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`child did not exit within ${timeoutMs} ms; stdout: ${stdout}; stderr: ${stderr}`))
    }, timeoutMs)
    child.on("exit", (code, signal) => {
      clearTimeout(timer)
      // Let the pipes drain.
      setImmediate(() => resolve({ code, signal, stdout, stderr }))
    })
  })

/** Resolves with the first stdout line. */
export const firstLine = (child: ChildProcess): Promise<string> =>
  new Promise((resolve, reject) => {
    let buf = ""
    const onData = (d: Buffer): void => {
      buf += d.toString()
      const nl = buf.indexOf("\n")
      if (nl >= 0) {
        child.stdout?.off("data", onData)
        resolve(buf.slice(0, nl))
      }
    }
    child.stdout?.on("data", onData)
    child.on("exit", () => reject(new Error(`child exited before printing a line: ${buf}`)))
  })
