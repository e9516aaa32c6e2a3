/**
 * The documentation the CLI carries: docs/USAGE.md is what scripts/usage.ts renders from the
 * current help (so it cannot drift), every command's help has an example, the shell completions
 * complete commands and the new options (run in a real bash), and the systemd units pass
 * `systemd-analyze verify`.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { execFileSync, spawnSync } from "node:child_process"
import { copyFileSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { captureCli, renderUsage, stripAnsi, usagePath } from "../../scripts/usage.js"
import { binPath, ensureBuilt, repoRoot, runtimeDir } from "./helpers.js"

describe("docs/USAGE.md", () => {
  it("is what scripts/usage.ts renders from the current help (npm test runs usage:check too)", async () => {
    const rendered = await renderUsage()
    expect(rendered, "docs/USAGE.md is stale: run npx tsx scripts/usage.ts").toBe(readFileSync(usagePath, "utf8"))
    // eslint-disable-next-line no-control-regex
    expect(rendered).not.toMatch(/\x1b/)
    for (const name of ["serve", "run", "demo"]) expect(rendered).toContain(`## sommelier ${name}`)
    expect(rendered).toContain("--tag TEXT")
    expect(rendered).toContain("--otlp URL")
  }, 60_000)

  it("strips colour and bold escapes", () => {
    expect(stripAnsi("\x1b[0;1m\x1b[0;37;1msommelier\x1b[0;1m\x1b[0m --tag")).toBe("sommelier --tag")
  })
})

describe("--help", () => {
  it("every command's description carries an example", async () => {
    const root = await captureCli(["--help"])
    expect(root).toMatch(/DESCRIPTION\n\n.*Examples?: sommelier /)
    const names = [...root.matchAll(/^\s*- ([a-z-]+) /gm)].map((m) => m[1]!)
    expect(names).toEqual(expect.arrayContaining(["serve", "run", "demo"]))
    for (const name of names) {
      const help = await captureCli([name, "--help"])
      const description = help.slice(help.indexOf("DESCRIPTION"), help.indexOf("\n\n", help.indexOf("DESCRIPTION") + 13))
      expect(description, `${name} --help`).toMatch(new RegExp(`Example: sommelier ${name}\\b`))
    }
  }, 60_000)
})

describe("shell completions", () => {
  it.scopedLive(
    "bash completes commands and the desktop options (in a real bash)",
    () =>
      Effect.gen(function* () {
        yield* ensureBuilt()
        const tmp = yield* runtimeDir()
        const file = join(tmp, "sommelier.bash")
        writeFileSync(file, execFileSync(binPath, ["--completions", "bash"], { encoding: "utf8" }))
        const complete = (words: string[]): string =>
          execFileSync(
            "bash",
            [
              "-c",
              'source "$0"; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _sommelier_bash_completions sommelier "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; echo "${COMPREPLY[*]}"',
              file,
              ...words
            ],
            { encoding: "utf8" }
          ).trim()
        expect(complete(["sommelier", "se"])).toBe("serve")
        expect(complete(["sommelier", "serve", "--ta"])).toBe("--tag")
        expect(complete(["sommelier", "run", "--ot"])).toBe("--otlp")
        expect(complete(["sommelier", "serve", "--title-"]).split(" ")).toContain("--title-prefix")
        // A hyphenated subcommand's options (@effect/cli labels its case "emulate__host"; main.ts mends it).
        expect(complete(["sommelier", "emulate-host", "--lis"])).toBe("--listen")
      }),
    60_000
  )

  it("zsh and fish scripts name every command", async () => {
    for (const shell of ["zsh", "fish"]) {
      const script = await captureCli(["--completions", shell])
      for (const name of ["serve", "run", "demo"]) expect(script, shell).toContain(name)
      expect(script, shell).toContain("tag")
    }
  }, 60_000)
})

describe("packaging/systemd", () => {
  const dir = join(repoRoot, "packaging/systemd")

  it("the units declare what the proxy relies on", () => {
    const socket = readFileSync(join(dir, "sommelier@.socket"), "utf8")
    const service = readFileSync(join(dir, "sommelier@.service"), "utf8")
    expect(socket).toMatch(/^ListenStream=%t\/%i$/m)
    expect(socket).toMatch(/^SocketMode=0600$/m)
    expect(socket).toMatch(/^Accept=no$/m)
    expect(service).toMatch(/^Type=notify$/m)
    expect(service).toMatch(/^NotifyAccess=main$/m)
    expect(service).toMatch(/^ExecStart=\/usr\/local\/bin\/sommelier serve %i \$SOMMELIER_ARGS$/m)
  })

  it.scopedLive("pass systemd-analyze verify without a warning", () =>
    Effect.gen(function* () {
      const tmp = yield* runtimeDir()
      // verify wants an executable ExecStart: point it at this checkout's launcher.
      writeFileSync(
        join(tmp, "sommelier@wayland-9.service"),
        readFileSync(join(dir, "sommelier@.service"), "utf8").replace(/^ExecStart=\/usr\/local\/bin\/sommelier /m, `ExecStart=${binPath} `)
      )
      copyFileSync(join(dir, "sommelier@.socket"), join(tmp, "sommelier@wayland-9.socket"))
      const r = spawnSync("systemd-analyze", ["verify", "--man=no", "sommelier@wayland-9.socket", "sommelier@wayland-9.service"], { cwd: tmp, encoding: "utf8" })
      // Unknown keys and bad values are only warnings (status 0): the output must be empty too.
      expect(r.stderr + r.stdout).toBe("")
      expect(r.status).toBe(0)
    })
  )
})
