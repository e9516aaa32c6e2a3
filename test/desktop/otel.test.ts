/**
 * Span export: the endpoint rules, then real exports to a tiny OTLP/HTTP receiver (node:http on
 * 127.0.0.1, recording every POST): `bin/sommelier run --otlp` over OTLP/JSON (spans decoded and
 * their parent links checked) and `serve` stopped by SIGTERM over the default OTLP/protobuf.
 * Without an endpoint the exporter is never loaded (checked with strace on the real process).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, type Scope } from "effect"
import { readFileSync } from "node:fs"
import { createServer, type IncomingHttpHeaders } from "node:http"
import type { AddressInfo } from "node:net"
import { join } from "node:path"
import { otlpConfig } from "../../src/cli/otel.js"
import { runClientOk } from "../helpers/clients.js"
import { headlessHost } from "../helpers/weston.js"
import { binPath, cleanEnv, ensureBuilt, noFdLeak, runtimeDir, spawnProc, spawnSommelier } from "./helpers.js"

describe("endpoint rules", () => {
  it("--otlp is a base endpoint and wins over the environment", () => {
    const c = otlpConfig(Option.some("http://127.0.0.1:4318"), { OTEL_EXPORTER_OTLP_ENDPOINT: "http://elsewhere:4318" })
    expect(c).toMatchObject({ tracesUrl: "http://127.0.0.1:4318/v1/traces", protocol: "http/protobuf", serviceName: "sommelier" })
    expect(otlpConfig(Option.some("http://h:1/v1/traces"), {})).toMatchObject({ tracesUrl: "http://h:1/v1/traces" })
    expect(otlpConfig(Option.some("http://h:1/base/"), {})).toMatchObject({ tracesUrl: "http://h:1/base/v1/traces" })
  })

  it("reads the standard OTEL_* variables", () => {
    expect(otlpConfig(Option.none(), {})).toBeNull()
    expect(otlpConfig(Option.none(), { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" })).toMatchObject({ tracesUrl: "http://c:4318/v1/traces" })
    expect(
      otlpConfig(Option.none(), {
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://t:9/custom",
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
        OTEL_SERVICE_NAME: "guest-proxy",
        OTEL_EXPORTER_OTLP_HEADERS: "authorization=Bearer%20x, team=gfx"
      })
    ).toEqual({
      tracesUrl: "http://t:9/custom",
      protocol: "http/json",
      serviceName: "guest-proxy",
      headers: { authorization: "Bearer x", team: "gfx" }
    })
  })

  it("rejects what it cannot speak", () => {
    expect(otlpConfig(Option.some("grpc://c:4317"), {})).toBeInstanceOf(Error)
    expect(otlpConfig(Option.some("http://c:4318"), { OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" })).toBeInstanceOf(Error)
  })
})

interface Post {
  readonly url: string
  readonly headers: IncomingHttpHeaders
  readonly body: Buffer
}

/** A minimal OTLP/HTTP collector: answers 200 to every POST and records it. */
const receiver = (): Effect.Effect<{ url: string; posts: Post[] }, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<{ url: string; posts: Post[]; close: () => Promise<void> }>((resume) => {
      const posts: Post[] = []
      const server = createServer((req, res) => {
        const chunks: Buffer[] = []
        req.on("data", (c: Buffer) => chunks.push(c))
        req.on("end", () => {
          posts.push({ url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks) })
          res.writeHead(200, { "content-type": req.headers["content-type"] ?? "application/json" })
          res.end(req.headers["content-type"]?.includes("json") === true ? "{}" : "")
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const port = (server.address() as AddressInfo).port
        resume(
          Effect.succeed({
            url: `http://127.0.0.1:${port}`,
            posts,
            close: () =>
              new Promise<void>((done) => {
                server.closeAllConnections()
                server.close(() => done())
              })
          })
        )
      })
    }),
    (r) => Effect.promise(r.close)
  ).pipe(Effect.map(({ url, posts }) => ({ url, posts })))

interface JsonSpan {
  readonly name: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly traceId: string
  readonly attributes: ReadonlyArray<{ key: string; value: { stringValue?: string; intValue?: string | number } }>
}

const spansOf = (posts: ReadonlyArray<Post>): { spans: JsonSpan[]; services: string[] } => {
  const spans: JsonSpan[] = []
  const services: string[] = []
  for (const p of posts) {
    const doc = JSON.parse(p.body.toString()) as {
      resourceSpans: Array<{ resource: { attributes: JsonSpan["attributes"] }; scopeSpans: Array<{ spans: JsonSpan[] }> }>
    }
    for (const rs of doc.resourceSpans) {
      const name = rs.resource.attributes.find((a) => a.key === "service.name")?.value.stringValue
      if (name !== undefined) services.push(name)
      for (const ss of rs.scopeSpans) spans.push(...ss.spans)
    }
  }
  return { spans, services }
}

const attr = (s: JsonSpan, key: string): string | number | undefined => {
  const v = s.attributes.find((a) => a.key === key)?.value
  return v?.stringValue ?? (v?.intValue !== undefined ? Number(v.intValue) : undefined)
}

describe("export to a collector", () => {
  it.scopedLive(
    "run --otlp (OTLP/JSON): a sommelier.connection span with sommelier.batch children",
    () =>
      noFdLeak(
        Effect.gen(function* () {
          yield* ensureBuilt()
          const host = yield* headlessHost()
          const collector = yield* receiver()
          const dir = yield* runtimeDir()
          const env = cleanEnv({ XDG_RUNTIME_DIR: dir, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" })
          const run = yield* spawnSommelier(
            ["run", "--socket", "wayland-otel", "--mode", "local", "--host-display", host.socketPath, "--otlp", collector.url, "--", "wayland-info"],
            { env }
          )
          const exit = yield* run.exited("120 seconds")
          expect(exit.code, run.stderr()).toBe(0)
          expect(run.stdout()).toMatch(/interface: 'wl_compositor'/)

          const traces = collector.posts.filter((p) => p.url === "/v1/traces")
          expect(traces.length).toBeGreaterThan(0)
          expect(traces[0]!.headers["content-type"]).toMatch(/application\/json/)
          const { spans, services } = spansOf(traces)
          expect(services).toContain("sommelier")
          const connections = spans.filter((s) => s.name === "sommelier.connection")
          expect(connections).toHaveLength(1)
          const conn = connections[0]!
          expect(attr(conn, "sommelier.client")).toBe(1)
          const batches = spans.filter((s) => s.name === "sommelier.batch")
          expect(batches.length).toBeGreaterThan(1)
          for (const b of batches) {
            expect(b.parentSpanId).toBe(conn.spanId)
            expect(b.traceId).toBe(conn.traceId)
          }
          const directions = new Set(batches.map((b) => attr(b, "direction")))
          expect(directions).toEqual(new Set(["request", "event"]))
          expect(batches.some((b) => Number(attr(b, "messages")) > 0 && Number(attr(b, "bytes")) > 0)).toBe(true)
        })
      ),
    240_000
  )

  it.scopedLive(
    "serve --otlp (OTLP/protobuf, the default): SIGTERM flushes the spans not yet exported",
    () =>
      noFdLeak(
        Effect.gen(function* () {
          yield* ensureBuilt()
          const host = yield* headlessHost()
          const collector = yield* receiver()
          const dir = yield* runtimeDir()
          const server = yield* spawnSommelier(["serve", "wayland-otel2", "--mode", "local", "--host-display", host.socketPath, "--otlp", collector.url], {
            env: cleanEnv({ XDG_RUNTIME_DIR: dir })
          })
          yield* server.until("listening", () => /listening on/.test(server.stderr()))
          expect(server.stderr()).toMatch(/exporting spans to http:\/\/127\.0\.0\.1:\d+\/v1\/traces \(http\/protobuf\)/)
          yield* runClientOk("wayland-info", [], { env: cleanEnv({ XDG_RUNTIME_DIR: dir, WAYLAND_DISPLAY: "wayland-otel2" }), timeout: "60 seconds" })
          server.signal("SIGTERM")
          const exit = yield* server.exited()
          expect(exit.code, server.stderr()).toBe(0)
          const traces = collector.posts.filter((p) => p.url === "/v1/traces")
          expect(traces.length).toBeGreaterThan(0)
          expect(traces[0]!.headers["content-type"]).toBe("application/x-protobuf")
          const all = Buffer.concat(traces.map((t) => t.body))
          expect(all.includes(Buffer.from("sommelier.connection"))).toBe(true)
          expect(all.includes(Buffer.from("sommelier.batch"))).toBe(true)
        })
      ),
    240_000
  )

  it.scopedLive(
    "without an endpoint no exporter module is loaded",
    () =>
      Effect.gen(function* () {
        yield* ensureBuilt()
        const host = yield* headlessHost()
        const dir = yield* runtimeDir()
        const log = join(dir, "strace.log")
        const run = yield* spawnProc(
          "strace",
          ["-f", "-qq", "-e", "trace=open,openat", "-o", log, binPath, "run", "--socket", "wayland-plain", "--mode", "local", "--host-display", host.socketPath, "--", "wayland-info"],
          { env: cleanEnv({ XDG_RUNTIME_DIR: dir }) }
        )
        const exit = yield* run.exited("150 seconds")
        expect(exit.code, run.stderr()).toBe(0)
        const opened = readFileSync(log, "utf8")
        // The trace did see the CLI's own code load (the bundle bin/sommelier runs, or the
        // modules tsc wrote), so an exporter load would show too: its modules, or its bundle
        // chunks (dist/chunks/OtlpTracer-HASH.mjs…).
        expect(opened).toMatch(/dist\/sommelier\.mjs|dist\/cli\/otel\.js/)
        expect(opened).not.toMatch(/@effect\/opentelemetry|FetchHttpClient|OtlpTracer|OtlpSerialization/)
      }),
    240_000
  )
})

