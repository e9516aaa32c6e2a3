/**
 * Failing fuzz inputs kept as regression fixtures in test/fixtures/fuzz/*.json: the case (its
 * steps as hex), where it came from, and a hash of the seed prefix it replays first, so that a
 * change to the captures cannot silently change what a fixture tests.
 */
import { createHash } from "node:crypto"
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { sessionByName } from "./corpus.js"
import type { CaseSpec, Step } from "./mutate.js"

export const fixturesDir = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures", "fuzz")

type JsonStep =
  | { kind: "data"; direction: "request" | "event"; hex: string; fds: number; chunks?: number[] }
  | { kind: "eof" | "vanish" | "drain"; side: "client" | "host" }

export interface Fixture {
  /** What the input is and what went wrong with it. */
  readonly description: string
  /** How it was found (seed and case index, or by hand). */
  readonly found: string
  readonly prefixSha256: string
  readonly spec: Omit<CaseSpec, "steps"> & { readonly steps: ReadonlyArray<JsonStep> }
}

export const prefixHash = (session: string, prefix: number): string => {
  const h = createHash("sha256")
  for (const f of sessionByName(session).frames.slice(0, prefix)) h.update(`${f.direction}:${f.fds}:`).update(f.bytes)
  return h.digest("hex")
}

const toJson = (s: Step): JsonStep =>
  s.kind === "data"
    ? { kind: "data", direction: s.direction, hex: Buffer.from(s.bytes).toString("hex"), fds: s.fds, ...(s.chunks !== undefined ? { chunks: [...s.chunks] } : {}) }
    : { kind: s.kind, side: s.side }

const fromJson = (s: JsonStep): Step =>
  s.kind === "data"
    ? { kind: "data", direction: s.direction, bytes: Uint8Array.from(Buffer.from(s.hex, "hex")), fds: s.fds, ...(s.chunks !== undefined ? { chunks: s.chunks } : {}) }
    : { kind: s.kind, side: s.side }

export const toFixture = (spec: CaseSpec, description: string, found: string): Fixture => ({
  description,
  found,
  prefixSha256: prefixHash(spec.session, spec.prefix),
  spec: { ...spec, steps: spec.steps.map(toJson) }
})

/** The case a fixture holds; throws when its seed prefix no longer matches the captures. */
export const fixtureCase = (f: Fixture): CaseSpec => {
  const h = prefixHash(f.spec.session, f.spec.prefix)
  if (h !== f.prefixSha256) throw new Error(`the seed prefix of this fixture changed (${f.spec.session}, ${f.spec.prefix} frames): re-derive it`)
  return { ...f.spec, steps: f.spec.steps.map(fromJson) }
}

export const loadFixtures = (dir = fixturesDir): Array<{ file: string; fixture: Fixture }> => {
  let files: string[]
  try {
    files = readdirSync(dir).filter((f) => f.endsWith(".json")).sort()
  } catch {
    return []
  }
  return files.map((file) => ({ file, fixture: JSON.parse(readFileSync(join(dir, file), "utf8")) as Fixture }))
}

export const saveFixture = (name: string, fixture: Fixture, dir = fixturesDir): string => {
  mkdirSync(dir, { recursive: true })
  const path = join(dir, `${name}.json`)
  writeFileSync(path, JSON.stringify(fixture, null, 2) + "\n")
  return path
}
