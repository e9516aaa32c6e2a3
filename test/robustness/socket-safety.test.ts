/**
 * Socket safety from the command line (`sommelier serve` as a child process):
 * - the runtime directory must be set, exist, be a directory, belong to the user and be 0700;
 *   otherwise exit 1 with exactly one line on stderr that names the fix (and nothing is created);
 * - `--host-display` naming the socket serve would listen on (by name, by path, through a
 *   symlinked directory) is refused in one line, exit 1;
 * (That the socket is created 0700 beside its lock and both go at SIGTERM: faults.test.ts.)
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { spawnSommelier } from "./child.js"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "sommelier-safety-"))),
  (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
)

const baseEnv = (): NodeJS.ProcessEnv => {
  const env = { ...process.env }
  delete env.WAYLAND_DISPLAY
  delete env.WAYLAND_SOCKET
  return env
}

/** Runs `serve ARGS`; it must exit 1 with one stderr line; returns that line. */
const refused = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv) =>
  Effect.scoped(
    Effect.gen(function* () {
      const c = yield* spawnSommelier(["serve", ...args], env)
      const exit = yield* c.wait("150 seconds")
      const lines = exit.stderr.split("\n").filter((l) => l.trim() !== "")
      expect(exit.code, exit.stderr).toBe(1)
      expect(lines, exit.stderr).toHaveLength(1)
      return lines[0]!
    })
  )

describe("socket safety (sommelier serve)", () => {
  it.scopedLive("an unsafe or missing runtime directory: exit 1, one line naming the fix", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const host = "/nonexistent/host-socket" // never reached: the runtime directory is checked first
      const open = join(dir, "open")
      mkdirSync(open, { mode: 0o755 })
      chmodSync(open, 0o755)
      const foreign = join(dir, "foreign")
      mkdirSync(foreign, { mode: 0o700 })
      const notDir = join(dir, "file")
      writeFileSync(notDir, "")
      const isRoot = process.getuid?.() === 0
      if (isRoot) chownSync(foreign, 65534, 65534)
      const unset = baseEnv()
      delete unset.XDG_RUNTIME_DIR
      const cases: Array<[string, NodeJS.ProcessEnv, RegExp]> = [
        ["unset", unset, /XDG_RUNTIME_DIR is not set; set it to a private directory/],
        ["missing", { ...baseEnv(), XDG_RUNTIME_DIR: join(dir, "missing") }, /does not exist; create it with: mkdir -m 0700 -p /],
        ["mode 0755", { ...baseEnv(), XDG_RUNTIME_DIR: open }, /has mode 0755; other users could reach its sockets\. Fix: chmod 0700 /],
        ["not a directory", { ...baseEnv(), XDG_RUNTIME_DIR: notDir }, /is not a directory/],
        ...(isRoot ? [["another user's", { ...baseEnv(), XDG_RUNTIME_DIR: foreign }, /belongs to uid 65534, not to you/] as [string, NodeJS.ProcessEnv, RegExp]] : [])
      ]
      // --mode auto (the default) too: the runtime directory is checked before any probing.
      const lines = yield* Effect.forEach(
        cases,
        ([, env], i) => refused(["wayland-safety", ...(i === 0 ? [] : ["--mode", "local"]), "--host-display", host], env),
        { concurrency: 3 }
      )
      cases.forEach(([label, , pattern], i) => {
        expect(lines[i], label).toMatch(/^sommelier: /)
        expect(lines[i], label).toMatch(pattern)
      })
      // Nothing was created in the unsafe directories.
      expect(readdirSync(open)).toEqual([])
      expect(readdirSync(foreign)).toEqual([])
    }),
    400_000
  )

  it.scopedLive("--host-display naming our own socket is refused (by name, by path, through a symlink)", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const rt = join(dir, "rt")
      mkdirSync(rt, { mode: 0o700 })
      chmodSync(rt, 0o700)
      symlinkSync(rt, join(dir, "link"))
      const env = { ...baseEnv(), XDG_RUNTIME_DIR: rt }
      const lines = yield* Effect.forEach(
        [
          ["wayland-self", "--host-display", "wayland-self"],
          [join(rt, "self"), "--host-display", join(rt, "self")],
          ["wayland-self", "--host-display", join(dir, "link", "wayland-self")]
        ],
        (args) => refused([...args, "--mode", "local"], env),
        { concurrency: 4 }
      )
      for (const line of lines) expect(line).toMatch(/^sommelier: refusing to proxy .* to itself/)
      expect(readdirSync(rt)).toEqual([])
    }),
    400_000
  )
})
