/**
 * `sommelier serve`, `run` and `demo`. Each handler resolves paths, builds the layers it needs
 * and runs the proxy in a scope, so that SIGINT/SIGTERM (which interrupt the main fiber) stop
 * accepting, close every client and remove the socket and its lock.
 */
import { Args, Command, Options } from "@effect/cli"
import { emulateHostCommand } from "./emulate.js"
import { probeCommand } from "./probe.js"
import { Duration, Effect, Layer, Option } from "effect"
import { spawn } from "node:child_process"
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { startWeston } from "../host/weston.js"
import * as Protocols from "../protocol/registry.js"
import type { ConnectionLimits } from "../proxy/connection.js"
import { serve, type Server } from "../proxy/listener.js"
import { hostDisplayPath, samePath, ServeError, socketPath } from "../proxy/paths.js"
import type { HostConnector } from "../proxy/listener.js"
import { hostConnectorFor, type Mode } from "./mode.js"
import { makeNotifier, takeActivatedSocket, type ActivatedSocket } from "../proxy/activation.js"
import { tagHooks, tagPrefixes } from "../proxy/tag.js"
import type { ConnectionHooks } from "../proxy/connection.js"
import { otlpConfig, otlpLayer } from "./otel.js"
import { basename } from "node:path"
import * as Reactor from "../transport/reactor.js"
import { connectUnix } from "../transport/socket.js"
import { closeFd } from "../transport/socket.js"

const proxyLayer = Layer.mergeAll(Reactor.layer, Protocols.layer)

// ---------------------------------------------------------------------------------------------
// Shared options

const mode = Options.choice("mode", ["auto", "local", "cross-domain"]).pipe(
  Options.withDefault("auto" as const),
  Options.withDescription(
    "local: a socket to the host compositor per client; cross-domain: a virtio-gpu cross-domain channel per client (inside a VM); auto: cross-domain when the virtio-gpu device offers it, else local when a host compositor answers"
  )
)
const virtgpu = Options.text("virtgpu").pipe(
  Options.withPseudoName("PATH|emulated:PATH"),
  Options.optional,
  Options.withDescription(
    "cross-domain's device: a render node (default: the first virtio-gpu one in /dev/dri), or emulated:PATH for `sommelier emulate-host --listen PATH`"
  )
)
const hostDisplay = Options.text("host-display").pipe(
  Options.optional,
  Options.withDescription("local mode's host compositor: a socket name in $XDG_RUNTIME_DIR or an absolute path (default $WAYLAND_DISPLAY, else wayland-0)")
)
const trace = Options.boolean("trace").pipe(
  Options.withDescription("print every message to stderr in WAYLAND_DEBUG format, prefixed with the client's connection id and direction")
)
const maxMessageSize = Options.integer("max-message-size").pipe(
  Options.withDefault(4096),
  Options.withDescription("largest Wayland message accepted from a client or the compositor, in bytes")
)
const maxObjects = Options.integer("max-objects").pipe(Options.withDefault(100_000), Options.withDescription("objects one client may hold at once"))
const maxClientBacklog = Options.integer("max-client-backlog").pipe(
  Options.withDefault(16 * 1024 * 1024),
  Options.withDescription("bytes queued toward a client that does not read before it is disconnected")
)

const tag = Options.text("tag").pipe(
  Options.withPseudoName("TEXT"),
  Options.optional,
  Options.withDescription("mark guest windows on the host: titles become \"[TEXT] title\" and app ids \"TEXT.app_id\" (e.g. --tag vm1)")
)
const titlePrefix = Options.text("title-prefix").pipe(
  Options.withPseudoName("PREFIX"),
  Options.optional,
  Options.withDescription("put this before every window title instead of --tag's \"[TEXT] \" (\"\" leaves titles alone)")
)
const appIdPrefix = Options.text("app-id-prefix").pipe(
  Options.withPseudoName("PREFIX"),
  Options.optional,
  Options.withDescription("put this before every app id instead of --tag's \"TEXT.\" (\"\" leaves app ids alone)")
)
const otlp = Options.text("otlp").pipe(
  Options.withPseudoName("URL"),
  Options.optional,
  Options.withDescription(
    "export the connection and batch spans over OTLP/HTTP to this collector endpoint, e.g. http://127.0.0.1:4318 (default $OTEL_EXPORTER_OTLP_ENDPOINT; off when neither is set)"
  )
)

/** Only the version is shared with main.ts's `Command.run`. */
export const cliInfo = { name: "sommelier", version: "0.1.0" } as const

interface DesktopOptions {
  readonly tag: Option.Option<string>
  readonly titlePrefix: Option.Option<string>
  readonly appIdPrefix: Option.Option<string>
  readonly otlp: Option.Option<string>
}

/** `--otlp`/`OTEL_*` → the tracer layer (nothing is loaded when export is off). */
const tracingLayer = (o: DesktopOptions) => {
  const config = otlpConfig(o.otlp)
  return config instanceof Error
    ? { batchSpans: false, layer: Layer.fail(new ServeError({ reason: "Socket", message: config.message })) }
    : { batchSpans: config !== null, layer: otlpLayer(config, cliInfo.version) }
}

const maxHostBacklog = Options.integer("max-host-backlog").pipe(
  Options.withDefault(16 * 1024 * 1024),
  Options.withDescription(
    "bytes queued toward a host compositor that does not read before the client is disconnected (the client is paused at 1 MiB first)"
  )
)
const maxFdsInFlight = Options.integer("max-fds-in-flight").pipe(
  Options.withDefault(1024),
  Options.withDescription("fds a client may have in flight (received and not yet forwarded, or queued toward the compositor or toward the client) before it is disconnected")
)

const limitsFrom = (o: {
  maxMessageSize: number
  maxObjects: number
  maxClientBacklog: number
  maxHostBacklog: number
  maxFdsInFlight: number
}): Partial<ConnectionLimits> => ({
  maxMessageSize: o.maxMessageSize,
  maxObjects: o.maxObjects,
  maxClientBacklog: o.maxClientBacklog,
  maxHostBacklog: o.maxHostBacklog,
  maxFdsInFlight: o.maxFdsInFlight
})

const fail = (message: string): Effect.Effect<never, ServeError> => Effect.fail(new ServeError({ reason: "Socket", message }))

const orFail = <A>(v: A | ServeError): Effect.Effect<A, ServeError> => (v instanceof ServeError ? Effect.fail(v) : Effect.succeed(v))

/** `--mode`/`--virtgpu` → the host connector (null: local); auto says on stderr which it chose. */
const resolveMode = (m: Mode, device: Option.Option<string>, hostDisplay: Option.Option<string>) => hostConnectorFor(m, device, hostDisplay)

interface ProxyArgs extends DesktopOptions {
  readonly socket: string
  readonly hostDisplay: Option.Option<string>
  /** Cross-domain (or another non-local) connector; null/absent: local, to the host display. */
  readonly connector?: HostConnector | null
  readonly trace: boolean
  readonly limits: Partial<ConnectionLimits>
  readonly batchSpans: boolean
  /** Socket activation: serve this socket instead of binding one. */
  readonly activated?: ActivatedSocket | null
}

/** Resolves paths and starts the server in the current scope. */
const startServer = (a: ProxyArgs) =>
  Effect.gen(function* () {
    const path = yield* orFail(socketPath(a.socket))
    const connector = a.connector ?? null
    const host = connector !== null ? connector.description : yield* orFail(hostDisplayPath(Option.getOrUndefined(a.hostDisplay)))
    if (connector === null && samePath(path, host)) {
      return yield* fail(`refusing to proxy ${path} to itself: --host-display names the socket sommelier would listen on`)
    }
    const hooks: ConnectionHooks[] = []
    const prefixes = tagPrefixes({
      tag: Option.getOrUndefined(a.tag),
      titlePrefix: Option.getOrUndefined(a.titlePrefix),
      appIdPrefix: Option.getOrUndefined(a.appIdPrefix)
    })
    if (prefixes !== null) hooks.push(tagHooks(yield* Protocols.Protocols, prefixes))
    const activated = a.activated ?? null
    if (activated !== null && activated.path !== null && !samePath(activated.path, path)) {
      yield* Effect.logWarning(`the activated socket is ${activated.path} but SOCKET names ${path}: the lock ${path}.lock guards the wrong name`)
    }
    const server = yield* serve({
      socketPath: path,
      hostPath: host,
      ...(connector !== null ? { connector } : {}),
      limits: a.limits,
      trace: a.trace ? (line: string) => process.stderr.write(line + "\n") : null,
      hooks,
      batchSpans: a.batchSpans,
      ...(activated !== null ? { listenFd: activated.fd } : {})
    })
    yield* Effect.logInfo(`${activated !== null ? "serving the activated socket" : "listening on"} ${path}, host compositor ${host}`)
    return server
  })

/** Errors from setup end the process with one clear line and status 1. */
const reportAndExit = <A, R>(eff: Effect.Effect<A, ServeError, R>): Effect.Effect<A | void, never, R> =>
  eff.pipe(
    Effect.catchAll((e) =>
      Effect.sync(() => {
        process.stderr.write(`sommelier: ${e.message}\n`)
        process.exit(1)
      })
    )
  )

// ---------------------------------------------------------------------------------------------
// serve

const serveCommand = Command.make(
  "serve",
  {
    socket: Args.text({ name: "SOCKET" }).pipe(
      Args.withDefault("wayland-0"),
      Args.withDescription("socket name in $XDG_RUNTIME_DIR, or an absolute path")
    ),
    mode,
    virtgpu,
    hostDisplay,
    trace,
    maxMessageSize,
    maxObjects,
    maxHostBacklog,
    maxFdsInFlight,
    maxClientBacklog,
    tag,
    titlePrefix,
    appIdPrefix,
    otlp
  },
  (o) => {
    const tracing = tracingLayer(o)
    return reportAndExit(
      Effect.scoped(
        Effect.gen(function* () {
          // systemd first: the socket unit may have bound SOCKET already (Accept=no, fd 3), and
          // LISTEN_*/NOTIFY_SOCKET leave the environment before anything else can inherit them.
          const name = basename(o.socket)
          const activated = yield* takeActivatedSocket({ acceptNames: [name, `sommelier@${name}.socket`] }).pipe(
            Effect.mapError((e) => new ServeError({ reason: "Socket", message: e.message }))
          )
          const notifier = makeNotifier()
          // An unsafe runtime directory is the first thing to hear about, before any probing.
          yield* orFail(socketPath(o.socket))
          const connector = yield* resolveMode(o.mode, o.virtgpu, o.hostDisplay)
          yield* startServer({ ...o, connector, socket: o.socket, limits: limitsFrom(o), batchSpans: tracing.batchSpans, activated })
          if (notifier !== null) {
            // Type=notify: ready once accepting; STOPPING=1 first thing at shutdown (finalizers
            // run in reverse, so this one runs before the server's).
            const say = (state: string) => notifier.notify(state).pipe(Effect.catchAll((e) => Effect.logWarning(e.message)))
            yield* say("READY=1")
            yield* Effect.addFinalizer(() => say("STOPPING=1"))
          }
          return yield* Effect.never
        })
      ).pipe(
        Effect.provide(proxyLayer),
        Effect.provide(tracing.layer),
        Effect.mapError((e) => (e instanceof ServeError ? e : new ServeError({ reason: "Socket", message: e.message })))
      )
    )
  }
).pipe(
  Command.withDescription(
    "Serve Wayland clients on SOCKET and forward each one over its own connection to the host compositor. Example: sommelier serve wayland-1 --host-display wayland-0"
  )
)

// ---------------------------------------------------------------------------------------------
// run

const runCommand = Command.make(
  "run",
  {
    socket: Options.text("socket").pipe(Options.optional, Options.withDescription("socket name (default sommelier-PID)")),
    mode,
    virtgpu,
    hostDisplay,
    trace,
    maxMessageSize,
    maxObjects,
    maxHostBacklog,
    maxFdsInFlight,
    maxClientBacklog,
    tag,
    titlePrefix,
    appIdPrefix,
    otlp,
    program: Args.text({ name: "PROG" }).pipe(Args.withDescription("program to run with WAYLAND_DISPLAY pointing at the proxy")),
    args: Args.text({ name: "ARGS" }).pipe(Args.repeated)
  },
  (o) => {
    const tracing = tracingLayer(o)
    return reportAndExit(
      Effect.scoped(
        Effect.gen(function* () {
          const connector = yield* resolveMode(o.mode, o.virtgpu, o.hostDisplay)
          const name = Option.getOrElse(o.socket, () => `sommelier-${process.pid}`)
          const server = yield* startServer({ ...o, connector, socket: name, limits: limitsFrom(o), batchSpans: tracing.batchSpans })
          const status = yield* runChild(o.program, o.args, { ...process.env, WAYLAND_DISPLAY: server.socketPath })
          return status
        })
      ).pipe(
        Effect.provide(proxyLayer),
        Effect.provide(tracing.layer),
        Effect.mapError((e) => (e instanceof ServeError ? e : new ServeError({ reason: "Socket", message: e.message })))
      )
    ).pipe(Effect.flatMap((status) => Effect.sync(() => process.exit(typeof status === "number" ? status : 1))))
  }
).pipe(Command.withDescription("Serve, run PROG with WAYLAND_DISPLAY set to the proxy, and exit with PROG's status. Example: sommelier run --tag vm1 -- foot"))

/** Runs a child to completion; its exit status (128+signal when killed). */
const runChild = (program: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv, cwd?: string): Effect.Effect<number, ServeError> =>
  Effect.async<number, ServeError>((resume) => {
    const child = spawn(program, [...args], { env, stdio: "inherit", ...(cwd !== undefined ? { cwd } : {}) })
    child.once("error", (e) => resume(Effect.fail(new ServeError({ reason: "Socket", message: `cannot run ${program}: ${e.message}` }))))
    child.once("exit", (code, signal) => resume(Effect.succeed(code ?? 128 + (signal === null ? 0 : signalNumber(signal)))))
    return Effect.sync(() => {
      if (child.exitCode === null) child.kill("SIGTERM")
    })
  })

const signalNumber = (s: NodeJS.Signals): number => ({ SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGSEGV: 11, SIGTERM: 15, SIGABRT: 6 })[s as string] ?? 0

// ---------------------------------------------------------------------------------------------
// demo

/** True when something accepts connections on `path`. */
const reachable = (path: string): Effect.Effect<boolean> =>
  connectUnix(path).pipe(
    Effect.map((fd) => {
      closeFd(fd)
      return true
    }),
    Effect.orElseSucceed(() => false)
  )

const demoCommand = Command.make(
  "demo",
  {
    hostDisplay,
    output: Options.text("output").pipe(Options.withDefault("sommelier-demo.png"), Options.withDescription("where to save the screenshot of the host output")),
    client: Options.text("client").pipe(Options.withDefault("weston-simple-shm"), Options.withDescription("client to run through the proxy")),
    seconds: Options.integer("seconds").pipe(Options.withDefault(2), Options.withDescription("how long the client runs before the screenshot"))
  },
  (o) =>
    reportAndExit(
      Effect.scoped(
        Effect.gen(function* () {
          // The host: the user's compositor when one answers, else an embedded headless weston.
          const userHost = hostDisplayPath(Option.getOrUndefined(o.hostDisplay))
          let hostPath: string
          let embedded = false
          if (!(userHost instanceof ServeError) && (yield* reachable(userHost))) {
            hostPath = userHost
            yield* Effect.logInfo(`using the running host compositor at ${hostPath}`)
          } else {
            const w = yield* startWeston({ debug: true, width: 800, height: 600 }).pipe(
              Effect.mapError((e) => new ServeError({ reason: "HostDisplay", message: e.message }))
            )
            hostPath = w.socketPath
            embedded = true
            yield* Effect.logInfo(`no host compositor running: started an embedded headless weston (pid ${w.pid}) at ${hostPath}`)
          }
          // The proxy on a private socket.
          const dir = mkdtempSync(join(tmpdir(), "sommelier-demo-"))
          yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
          const server: Server = yield* serve({ socketPath: join(dir, "wayland-demo"), hostPath })
          // A client through the proxy, for a few seconds, then a screenshot of the host.
          const clientEnv = { ...process.env, XDG_RUNTIME_DIR: dir, WAYLAND_DISPLAY: "wayland-demo" }
          const child = spawn(o.client, [], { env: clientEnv, stdio: ["ignore", "ignore", "inherit"] })
          yield* Effect.addFinalizer(() => Effect.sync(() => child.exitCode === null && child.kill("SIGTERM")))
          yield* Effect.sleep(Duration.seconds(o.seconds))
          if (child.exitCode !== null) return yield* fail(`${o.client} exited early with status ${child.exitCode}`)
          let png: string | null = null
          if (embedded) {
            const shotDir = join(dir, "shot")
            const env = { ...process.env, XDG_RUNTIME_DIR: hostPath.slice(0, hostPath.lastIndexOf("/")), WAYLAND_DISPLAY: hostPath }
            yield* Effect.sync(() => mkdirSync(shotDir, { recursive: true }))
            const status = yield* runChild("weston-screenshooter", [], env, shotDir)
            const file = readdirSync(shotDir).find((f) => f.endsWith(".png"))
            if (status !== 0 || file === undefined) return yield* fail(`weston-screenshooter failed (status ${status})`)
            png = resolve(o.output)
            copyFileSync(join(shotDir, file), png)
          }
          child.kill("SIGTERM")
          yield* Effect.sleep(Duration.millis(200))
          const s = server.stats()
          if (png !== null) process.stdout.write(`${png}\n`)
          else process.stdout.write("no screenshot: the running compositor is not the embedded weston (weston --debug is needed)\n")
          process.stdout.write(
            `sommelier demo: ${server.totalClients()} client(s), ${s.requests + s.events} messages (${s.requests} requests, ${s.events} events), ` +
              `${s.requestBytes + s.eventBytes} bytes, ${s.requestFds + s.eventFds} fds forwarded through ${o.client}\n`
          )
        })
      ).pipe(Effect.provide(proxyLayer), Effect.mapError((e) => (e instanceof ServeError ? e : new ServeError({ reason: "Socket", message: e.message }))))
    )
).pipe(
  Command.withDescription(
    "Run a client through the proxy to a host compositor (an embedded headless weston when none is running), save a screenshot and print a summary. Example: sommelier demo --output /tmp/shot.png"
  )
)


export const commands = Command.make("sommelier").pipe(
  Command.withDescription(
    "Wayland proxy for virtual machine guests: unmodified Wayland applications in a VM show their windows on the host's desktop. " +
      "Examples: sommelier serve wayland-1 --host-display wayland-0 --tag vm1; sommelier run -- foot; sommelier serve --help; " +
      "sommelier --completions bash > ~/.local/share/bash-completion/completions/sommelier"
  ),
  Command.withSubcommands([serveCommand, runCommand, demoCommand, emulateHostCommand, probeCommand])
)
