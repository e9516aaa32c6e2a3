/**
 * `npm run fuzz`: a longer in-memory fuzz campaign than CI runs (test/fuzz/ holds the harness).
 *
 *   npm run fuzz -- [--seed N] [--cases N] [--from I] [--seconds S] [--save] [--max-failures N]
 *
 * Defaults: a random seed, 1 000 000 cases, no time limit. Each failure is printed with its seed
 * and index (rerun one with --seed S --from I --cases 1); with --save it is shrunk and written to
 * test/fixtures/fuzz/ as a regression fixture that `npm test` replays. Exit status 1 on failures.
 */
import { randomInt } from "node:crypto"
import { runCampaign, shrink } from "../test/fuzz/campaign.js"
import { saveFixture, toFixture } from "../test/fuzz/fixtures.js"

const args = process.argv.slice(2)
const flag = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : undefined
}
const num = (name: string, dflt: number): number => {
  const v = flag(name)
  if (v === undefined) return dflt
  const n = Number(v)
  if (!Number.isFinite(n)) {
    process.stderr.write(`fuzz: --${name} wants a number, got ${v}\n`)
    process.exit(2)
  }
  return n
}

const seed = num("seed", randomInt(0, 2 ** 31))
const cases = num("cases", 1_000_000)
const from = num("from", 0)
const seconds = num("seconds", 0)
const maxFailures = num("max-failures", 20)
const save = args.includes("--save")

process.stdout.write(`fuzz: seed ${seed}, cases ${from}..${from + cases - 1}${seconds > 0 ? `, at most ${seconds} s` : ""}\n`)
const t0 = Date.now()
const report = runCampaign({
  seed,
  cases,
  from,
  maxFailures,
  ...(seconds > 0 ? { deadline: t0 + seconds * 1000 } : {}),
  onProgress: (n) => {
    if (n % 65536 === 0) process.stdout.write(`fuzz: ${n} cases, ${Math.round(n / ((Date.now() - t0) / 1000))}/s\n`)
  }
})
process.stdout.write(
  `fuzz: ${report.cases} cases in ${(report.ms / 1000).toFixed(1)} s (${Math.round(report.cases / (report.ms / 1000))}/s); ` +
    `fds given ${report.fds.given}, forwarded ${report.fds.sent}, closed ${report.fds.closed}\n`
)
for (const [k, v] of Object.entries(report.outcomes).sort()) process.stdout.write(`  ${k.padEnd(28)} ${v}\n`)
for (const f of report.failures) {
  process.stdout.write(`FAIL seed ${f.seed} index ${f.index}: ${f.spec.label}\n  ${f.problems.join("\n  ")}\n`)
  if (save) {
    const small = shrink(f.spec)
    const path = saveFixture(`seed${f.seed}-case${f.index}`, toFixture(small, `${f.problems[0] ?? "failed"} (${small.label})`, `npm run fuzz -- --seed ${f.seed} --from ${f.index} --cases 1`))
    process.stdout.write(`  saved ${path}\n`)
  }
}
process.exit(report.failures.length > 0 ? 1 : 0)
