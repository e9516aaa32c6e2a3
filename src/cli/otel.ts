/**
 * Span export over OTLP/HTTP: `--otlp URL`, or the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
 * / `OTEL_EXPORTER_OTLP_ENDPOINT`, installs @effect/opentelemetry's OTLP tracer, so the
 * `sommelier.connection` and `sommelier.batch` spans reach a collector (Jaeger, Tempo, the
 * OpenTelemetry Collector…).
 *
 * The exporter, its serializer and the HTTP client are imported dynamically: without an
 * endpoint none of them is loaded. It does not decide which spans exist (the listener does).
 */
import { Effect, Layer, Option } from "effect"

export interface OtlpConfig {
  /** Full URL spans are POSTed to (…/v1/traces). */
  readonly tracesUrl: string
  readonly protocol: "http/protobuf" | "http/json"
  readonly serviceName: string
  readonly headers: Readonly<Record<string, string>>
}

/** `base` + `/v1/traces`, unless it already names the traces path (the spec's endpoint rule). */
const tracesPath = (base: string): string => (/\/v1\/traces\/?$/.test(base) ? base : `${base.replace(/\/+$/, "")}/v1/traces`)

/** `OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`, values URL-encoded. */
const parseHeaders = (text: string | undefined): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const part of (text ?? "").split(",")) {
    const eq = part.indexOf("=")
    if (eq <= 0) continue
    out[part.slice(0, eq).trim()] = decodeURIComponent(part.slice(eq + 1).trim())
  }
  return out
}

/**
 * Where to export, or null when span export is off. `--otlp` is a base endpoint like
 * `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended unless present) and wins over the
 * environment; `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as it is. The protocol is
 * `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` (default http/protobuf, the spec's default).
 */
export const otlpConfig = (flag: Option.Option<string>, env: NodeJS.ProcessEnv = process.env): OtlpConfig | Error | null => {
  const nonEmpty = (v: string | undefined): string | undefined => (v === undefined || v.trim() === "" ? undefined : v.trim())
  const url = Option.isSome(flag)
    ? tracesPath(flag.value)
    : nonEmpty(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) ??
      (nonEmpty(env.OTEL_EXPORTER_OTLP_ENDPOINT) !== undefined ? tracesPath(nonEmpty(env.OTEL_EXPORTER_OTLP_ENDPOINT)!) : undefined)
  if (url === undefined) return null
  if (!/^https?:\/\//.test(url)) return new Error(`OTLP endpoint ${url}: only http:// and https:// URLs are supported (OTLP/HTTP)`)
  const protocol = nonEmpty(env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) ?? nonEmpty(env.OTEL_EXPORTER_OTLP_PROTOCOL) ?? "http/protobuf"
  if (protocol !== "http/protobuf" && protocol !== "http/json") {
    return new Error(`OTLP protocol ${protocol} is not supported: use http/protobuf or http/json`)
  }
  return {
    tracesUrl: url,
    protocol,
    serviceName: nonEmpty(env.OTEL_SERVICE_NAME) ?? "sommelier",
    headers: { ...parseHeaders(env.OTEL_EXPORTER_OTLP_HEADERS), ...parseHeaders(env.OTEL_EXPORTER_OTLP_TRACES_HEADERS) }
  }
}

/**
 * A layer installing the OTLP tracer (nothing when `config` is null). Spans are sent in batches
 * every few seconds and once more when the layer's scope closes, so provide it outside the
 * server's scope: the spans that end at shutdown are flushed after it.
 */
export const otlpLayer = (config: OtlpConfig | null, version: string): Layer.Layer<never> =>
  config === null
    ? Layer.empty
    : Layer.unwrapEffect(
        Effect.promise(async () => {
          const [OtlpTracer, OtlpSerialization, FetchHttpClient] = await Promise.all([
            import("@effect/opentelemetry/OtlpTracer"),
            import("@effect/opentelemetry/OtlpSerialization"),
            import("@effect/platform/FetchHttpClient")
          ])
          return OtlpTracer.layer({
            url: config.tracesUrl,
            resource: { serviceName: config.serviceName, serviceVersion: version },
            headers: config.headers
          }).pipe(
            Layer.provide(config.protocol === "http/json" ? OtlpSerialization.layerJson : OtlpSerialization.layerProtobuf),
            Layer.provide(FetchHttpClient.layer),
            Layer.tap(() => Effect.logInfo(`exporting spans to ${config.tracesUrl} (${config.protocol})`))
          )
        })
      )
