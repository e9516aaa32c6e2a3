/**
 * In-memory fuzzing of the data path (see harness.ts for the invariants each case checks):
 * 100 000 cases per run with a fixed seed (FUZZ_SEED / FUZZ_CASES override), every fixture in
 * test/fixtures/fuzz/ replayed, and checks that the harness itself notices what it should.
 * The same cases' request side runs against a real compositor in test/robustness/.
 */
import { describe, expect, it } from "@effect/vitest"
import { runCampaign } from "./campaign.js"
import { sessions } from "./corpus.js"
import { fixtureCase, loadFixtures } from "./fixtures.js"
import { FdTracker, runCase } from "./harness.js"
import type { CaseSpec } from "./mutate.js"

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed)
const CASES = Number(process.env.FUZZ_CASES ?? 100_000)

describe("fuzz: Connection over in-memory endpoints", () => {
  it(`${CASES} mutated and random cases (seed ${SEED}) keep every invariant`, { timeout: 240_000 }, () => {
    const r = runCampaign({ seed: SEED, cases: CASES, maxFailures: 20 })
    const summary = `${r.cases} cases in ${r.ms} ms; outcomes ${JSON.stringify(r.outcomes)}; fds given ${r.fds.given}, forwarded ${r.fds.sent}, closed ${r.fds.closed}`
    process.stdout.write(`fuzz: ${summary}\n`)
    const shown = r.failures.slice(0, 5).map((f) => `case ${f.index} [${f.spec.label}]: ${f.problems.join(" | ")}`)
    expect(shown, `reproduce with: npm run fuzz -- --seed ${SEED} --from INDEX --cases 1 --save`).toEqual([])
    expect(r.cases).toBe(CASES)
    // The campaign must reach every way a connection can end, or it tests less than it claims.
    for (const k of ["ClientClosed", "cut:ClientViolation", "cut:HostViolation", "cut:HostClosed", "cut:ClientClosed", "cut:Limit:client backlog", "cut:Limit:host backlog", "cut:Limit:fds in flight"]) {
      expect(r.outcomes[k] ?? 0, `${k} in ${summary}`).toBeGreaterThan(0)
    }
    expect(r.fds.given).toBe(r.fds.sent + r.fds.closed)
    expect(r.fds.closed).toBeGreaterThan(0)
  })

  const fixtures = loadFixtures()
  it("replays every fixture in test/fixtures/fuzz/", () => {
    expect(fixtures.length).toBeGreaterThan(0)
    for (const { file, fixture } of fixtures) {
      const r = runCase(fixtureCase(fixture))
      expect(r.problems, `${file}: ${fixture.description}`).toEqual([])
    }
  })

  it("every seed session replays whole, unchanged, without ending", () => {
    for (const s of sessions()) {
      const r = runCase({ label: s.name, session: s.name, prefix: s.frames.length, steps: [], oracle: "survive" })
      expect(r.problems, s.name).toEqual([])
      expect(r.cut, s.name).toBe(false)
      expect(r.fds.given, s.name).toBe(s.frames.reduce((n, f) => n + f.fds, 0))
    }
  })

  it("the harness notices what it should", () => {
    // Double closes and closes of fds nobody handed over are reported.
    const t = new FdTracker()
    const [a] = t.give(1, "client")
    t.close(a!)
    t.close(a!)
    t.close(99)
    expect(t.problems).toHaveLength(2)
    // A request with a bad header must cut the client with INVALID_METHOD on wl_display.
    const bad: CaseSpec = {
      label: "size 6",
      session: "wayland-info",
      prefix: 0,
      steps: [{ kind: "data", direction: "request", bytes: Uint8Array.from([1, 0, 0, 0, 1, 0, 6, 0]), fds: 2 }],
      oracle: "badHeader"
    }
    const r = runCase(bad)
    expect(r.problems).toEqual([])
    expect(r.end?._tag).toBe("ClientViolation")
    expect(r.fds).toEqual({ given: 2, sent: 0, closed: 2 })
    // Claiming valid traffic survives when it does not is reported.
    expect(runCase({ ...bad, oracle: "survive" }).problems.join()).toContain("valid traffic was cut")
  })
})
