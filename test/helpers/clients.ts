/**
 * Real client processes for the end-to-end tests: spawn one with a chosen environment, capture
 * its stdout (as bytes) and stderr, wait for a line or for its exit with a timeout, and kill it
 * when the test's scope closes (SIGKILL, then wait until its pipes are closed, so the fd-leak
 * check that follows sees a settled process).
 *
 * Also builds the C test clients in test/clients/ (wayland-scanner + cc), cached under
 * node_modules/.cache/sommelier-test-clients keyed by a hash of their inputs.
 *
 * It knows nothing about the proxy or weston.
 */
import { Data, Duration, Effect, type Scope } from "effect"
import { execFileSync, spawn, type ChildProcess } from "node:child_process"
import { createHash } from "node:crypto"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

export class ClientError extends Data.TaggedError("ClientError")<{
  readonly reason: "Spawn" | "Timeout" | "Exited" | "Build"
  readonly message: string
}> {}

export interface ClientOptions {
  readonly env: NodeJS.ProcessEnv
  readonly cwd?: string
  /** Bytes written to stdin, which is then closed; without it stdin is /dev/null. */
  readonly input?: Uint8Array
}

export interface Exited {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: Buffer
  readonly stderr: string
}

export interface Client {
  readonly name: string
  readonly process: ChildProcess
  readonly pid: number
  /** Everything read from stdout so far. */
  readonly stdout: () => Buffer
  readonly stderr: () => string
  /** True while the process has not exited. */
  readonly alive: () => boolean
  /** Succeeds when stdout (as text) matches; fails if the process exits first or on timeout. */
  readonly waitForStdout: (pattern: RegExp, timeout?: Duration.DurationInput) => Effect.Effect<void, ClientError>
  /** Succeeds when stderr matches; fails if the process exits first or on timeout. */
  readonly waitForStderr: (pattern: RegExp, timeout?: Duration.DurationInput) => Effect.Effect<void, ClientError>
  /** Waits for the exit (and closed pipes); kills it and fails on timeout. */
  readonly wait: (timeout?: Duration.DurationInput) => Effect.Effect<Exited, ClientError>
  /** Sends a signal and waits until the process is gone. */
  readonly kill: (signal?: NodeJS.Signals) => Effect.Effect<Exited>
}

const describeExit = (name: string, e: Exited): string =>
  `${name} exited (code ${e.code}, signal ${e.signal}); stderr: ${e.stderr.slice(-2000)}; stdout: ${e.stdout.toString("utf8").slice(-500)}`

/** Starts `command args` and returns a handle; the process is killed when the scope closes. */
export const spawnClient = (command: string, args: ReadonlyArray<string>, options: ClientOptions): Effect.Effect<Client, ClientError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<Client, ClientError>((resume) => {
      const child = spawn(command, [...args], {
        env: options.env,
        ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
        stdio: [options.input !== undefined ? "pipe" : "ignore", "pipe", "pipe"]
      })
      const out: Buffer[] = []
      let outLen = 0
      let err = ""
      let exited: Exited | null = null
      const waiters = new Set<() => void>()
      const notify = (): void => {
        for (const w of [...waiters]) w()
      }
      child.stdout!.on("data", (d: Buffer) => {
        out.push(d)
        outLen += d.length
        notify()
      })
      child.stderr!.on("data", (d: Buffer) => {
        err += d.toString("utf8")
        notify()
      })
      // "close" fires after exit and after every stdio stream ended: the pipes' fds are closed.
      child.once("close", (code, signal) => {
        exited = { code, signal, stdout: Buffer.concat(out, outLen), stderr: err }
        notify()
      })
      const stdoutBuf = (): Buffer => (out.length === 1 ? out[0]! : Buffer.concat(out, outLen))

      const waitFor = (check: () => boolean, what: string, timeout: Duration.DurationInput): Effect.Effect<void, ClientError> =>
        Effect.async<void, ClientError>((done) => {
          const test = (): boolean => {
            if (check()) {
              done(Effect.void)
              return true
            }
            if (exited !== null) {
              done(Effect.fail(new ClientError({ reason: "Exited", message: `waiting for ${what}: ${describeExit(command, exited)}` })))
              return true
            }
            return false
          }
          if (test()) return
          const w = (): void => {
            if (test()) {
              waiters.delete(w)
              clearTimeout(timer)
            }
          }
          const timer = setTimeout(() => {
            waiters.delete(w)
            done(
              Effect.fail(
                new ClientError({
                  reason: "Timeout",
                  message: `${command}: no ${what} within ${Duration.format(timeout)}; stderr: ${err.slice(-2000)}; stdout: ${stdoutBuf().toString("utf8").slice(-500)}`
                })
              )
            )
          }, Duration.toMillis(timeout))
          waiters.add(w)
          return Effect.sync(() => {
            waiters.delete(w)
            clearTimeout(timer)
          })
        })

      const untilClosed: Effect.Effect<Exited> = Effect.async<Exited>((done) => {
        if (exited !== null) return done(Effect.succeed(exited))
        const w = (): void => {
          if (exited !== null) {
            waiters.delete(w)
            done(Effect.succeed(exited))
          }
        }
        waiters.add(w)
        return Effect.sync(() => waiters.delete(w))
      })

      const kill = (signal: NodeJS.Signals = "SIGKILL"): Effect.Effect<Exited> =>
        Effect.suspend(() => {
          if (exited === null && child.exitCode === null && child.signalCode === null) child.kill(signal)
          return untilClosed
        })

      const handle: Client = {
        name: command,
        process: child,
        pid: child.pid ?? -1,
        stdout: stdoutBuf,
        stderr: () => err,
        alive: () => child.exitCode === null && child.signalCode === null,
        waitForStdout: (pattern, timeout = "10 seconds") => waitFor(() => pattern.test(stdoutBuf().toString("utf8")), `stdout matching ${pattern}`, timeout),
        waitForStderr: (pattern, timeout = "10 seconds") => waitFor(() => pattern.test(err), `stderr matching ${pattern}`, timeout),
        wait: (timeout = "10 seconds") =>
          untilClosed.pipe(
            Effect.timeout(timeout),
            Effect.catchTag("TimeoutException", () =>
              kill().pipe(
                Effect.flatMap((e) =>
                  Effect.fail(new ClientError({ reason: "Timeout", message: `${command} did not exit within ${Duration.format(timeout)}: ${describeExit(command, e)}` }))
                )
              )
            )
          ),
        kill
      }
      child.once("spawn", () => {
        if (options.input !== undefined) {
          // EPIPE when the client exits without reading all of it is the client's business.
          child.stdin!.on("error", () => {})
          child.stdin!.end(Buffer.from(options.input.buffer, options.input.byteOffset, options.input.byteLength))
        }
        resume(Effect.succeed(handle))
      })
      child.once("error", (e) => {
        if (child.pid === undefined) resume(Effect.fail(new ClientError({ reason: "Spawn", message: `cannot start ${command}: ${e.message}` })))
      })
    }),
    (c) => c.kill("SIGKILL").pipe(Effect.asVoid)
  )

/** Runs `command args` to completion (default timeout 10 s) and returns its exit and output. */
export const runClient = (
  command: string,
  args: ReadonlyArray<string>,
  options: ClientOptions & { readonly timeout?: Duration.DurationInput }
): Effect.Effect<Exited, ClientError, Scope.Scope> =>
  Effect.flatMap(spawnClient(command, args, options), (c) => c.wait(options.timeout ?? "10 seconds"))

/** Like `runClient` but fails unless the exit code is 0. */
export const runClientOk = (
  command: string,
  args: ReadonlyArray<string>,
  options: ClientOptions & { readonly timeout?: Duration.DurationInput }
): Effect.Effect<Exited, ClientError, Scope.Scope> =>
  Effect.flatMap(runClient(command, args, options), (e) =>
    e.code === 0 ? Effect.succeed(e) : Effect.fail(new ClientError({ reason: "Exited", message: describeExit(command, e) }))
  )

// -------------------------------------------------------------------------------------------------
// C test clients

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..")
const clientsDir = join(repoRoot, "test/clients")
const cacheDir = join(repoRoot, "node_modules/.cache/sommelier-test-clients")
const XDG_SHELL_XML = "/usr/share/wayland-protocols/stable/xdg-shell/xdg-shell.xml"

/**
 * Compiles test/clients/NAME.c (with xdg-shell glue from wayland-scanner) and returns the
 * binary's path. Cached by a hash of the source and the protocol XML; safe when two vitest
 * workers build at once (each builds in its own directory and renames into place).
 */
export const buildClient = (name: "solid"): Effect.Effect<string, ClientError> =>
  Effect.try({
    try: () => {
      const source = readFileSync(join(clientsDir, `${name}.c`))
      const xml = readFileSync(XDG_SHELL_XML)
      const hash = createHash("sha256").update(source).update(xml).digest("hex").slice(0, 16)
      const target = join(cacheDir, `${name}-${hash}`)
      if (existsSync(target)) return target
      mkdirSync(cacheDir, { recursive: true })
      const work = mkdtempSync(join(cacheDir, `build-${name}-`))
      try {
        const header = join(work, "xdg-shell-client-protocol.h")
        const glue = join(work, "xdg-shell-protocol.c")
        execFileSync("wayland-scanner", ["client-header", XDG_SHELL_XML, header])
        execFileSync("wayland-scanner", ["private-code", XDG_SHELL_XML, glue])
        const flags = execFileSync("pkg-config", ["--cflags", "--libs", "wayland-client"], { encoding: "utf8" }).trim().split(/\s+/).filter((s) => s !== "")
        const out = join(work, name)
        execFileSync("cc", ["-std=c11", "-O1", "-Wall", "-Werror", `-I${work}`, "-o", out, join(clientsDir, `${name}.c`), glue, ...flags], {
          stdio: ["ignore", "pipe", "pipe"]
        })
        renameSync(out, target)
      } finally {
        rmSync(work, { recursive: true, force: true })
      }
      return target
    },
    catch: (e) => {
      const err = e as { message?: string; stderr?: Buffer | string }
      return new ClientError({ reason: "Build", message: `cannot build test client ${name}: ${err.message ?? String(e)} ${err.stderr?.toString() ?? ""}` })
    }
  })
