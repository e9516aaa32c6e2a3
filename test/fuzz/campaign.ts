/**
 * A fuzz campaign over the in-memory harness: case i of seed s is `generateCase(Rng(caseSeed(s, i)))`,
 * so any failure is reproduced from (seed, index). Counts outcomes and fds, keeps failures, and
 * shrinks a failing case (fewer steps, no chunking, fewer fds, a shorter prefix) while it still
 * fails. Used by test/fuzz/fuzz.test.ts (CI) and scripts/fuzz.ts (`npm run fuzz`).
 */
import { runCase, type CaseResult } from "./harness.js"
import { generateCase, type CaseSpec, type GenerateOptions, type Step } from "./mutate.js"
import { caseSeed, Rng } from "./rng.js"

export interface Failure {
  readonly seed: number
  readonly index: number
  readonly spec: CaseSpec
  readonly problems: ReadonlyArray<string>
}

export interface CampaignOptions {
  readonly seed: number
  readonly cases: number
  /** Index of the first case (to continue a campaign). */
  readonly from?: number
  /** Stop early at this wall-clock time (ms since the epoch). */
  readonly deadline?: number
  readonly generate?: GenerateOptions
  /** Stop after this many failures. */
  readonly maxFailures?: number
  readonly onProgress?: (done: number) => void
}

export interface CampaignReport {
  readonly seed: number
  readonly cases: number
  readonly ms: number
  readonly failures: ReadonlyArray<Failure>
  /** How cases ended: "cut:ClientViolation", "Limit:fds in flight", "ClientClosed" (survived)… */
  readonly outcomes: Readonly<Record<string, number>>
  readonly fds: { given: number; sent: number; closed: number }
}

const outcome = (r: CaseResult): string => {
  const e = r.end
  const tag = e === null ? "none" : e._tag === "Limit" ? `Limit:${e.limit}` : e._tag
  return r.cut ? `cut:${tag}` : tag
}

export const runCampaign = (o: CampaignOptions): CampaignReport => {
  const t0 = Date.now()
  const failures: Failure[] = []
  const outcomes: Record<string, number> = {}
  const fds = { given: 0, sent: 0, closed: 0 }
  const from = o.from ?? 0
  let n = 0
  for (let i = from; i < from + o.cases; i++) {
    if (o.deadline !== undefined && (n & 255) === 0 && Date.now() > o.deadline) break
    const spec = generateCase(new Rng(caseSeed(o.seed, i)), o.generate)
    const r = runCase(spec)
    n++
    const k = outcome(r)
    outcomes[k] = (outcomes[k] ?? 0) + 1
    fds.given += r.fds.given
    fds.sent += r.fds.sent
    fds.closed += r.fds.closed
    if (r.problems.length > 0) {
      failures.push({ seed: o.seed, index: i, spec, problems: r.problems })
      if (o.maxFailures !== undefined && failures.length >= o.maxFailures) break
    }
    if (o.onProgress !== undefined && (n & 4095) === 0) o.onProgress(n)
  }
  return { seed: o.seed, cases: n, ms: Date.now() - t0, failures, outcomes, fds }
}

/** A smaller case that still fails (greedy: each simplification is kept when it still fails). */
export const shrink = (spec: CaseSpec): CaseSpec => {
  const fails = (s: CaseSpec): boolean => runCase(s).problems.length > 0
  let cur = spec
  const attempt = (next: CaseSpec): boolean => {
    if (fails(next)) {
      cur = next
      return true
    }
    return false
  }
  // Drop steps from the end, then from anywhere.
  while (cur.steps.length > 1 && attempt({ ...cur, steps: cur.steps.slice(0, -1) })) {}
  for (let i = cur.steps.length - 1; i >= 1; i--) attempt({ ...cur, steps: cur.steps.filter((_, j) => j !== i) })
  // No chunking, fewer fds.
  const mapStep = (i: number, f: (s: Step & { kind: "data" }) => Step): CaseSpec => ({
    ...cur,
    steps: cur.steps.map((s, j) => (j === i && s.kind === "data" ? f(s) : s))
  })
  for (let i = 0; i < cur.steps.length; i++) {
    const s = cur.steps[i]!
    if (s.kind !== "data") continue
    if (s.chunks !== undefined) attempt(mapStep(i, ({ chunks: _c, ...rest }) => rest))
    while (true) {
      const st = cur.steps[i]!
      if (st.kind !== "data" || st.fds === 0 || !attempt(mapStep(i, (x) => ({ ...x, fds: x.fds - 1 })))) break
    }
  }
  // A shorter prefix (only while the failure does not depend on it).
  for (let p = 0; p < cur.prefix; p = p === 0 ? 1 : p * 2) if (attempt({ ...cur, prefix: p })) break
  return cur
}
