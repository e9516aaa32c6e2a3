/**
 * The command line (@effect/cli) and the only composition root: it builds the layers (reactor,
 * protocol tables, logger) and runs the commands. Everything below it is ignorant of the CLI.
 */
import { Command } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { commands } from "./commands.js"
import { stderrLogger } from "./logging.js"

const cli = Command.run(commands, {
  name: "sommelier",
  version: "0.1.0"
})

// @effect/cli 0.77 writes the bash case label of a hyphenated subcommand with "__"
// (`sommelier,emulate__host)`), which never matches the word typed, so `sommelier emulate-host
// --<TAB>` would complete nothing. Mend the label in the script it prints.
if (process.argv.includes("--completions") && process.argv.includes("bash")) {
  const write = process.stdout.write.bind(process.stdout)
  const mend = (text: string): string => text.replace(/^(\s*sommelier),(\w+)\)$/gm, (_, head: string, word: string) => `${head},${word.replaceAll("__", "-")})`)
  process.stdout.write = ((chunk: unknown, ...rest: unknown[]) =>
    (write as (...a: unknown[]) => boolean)(typeof chunk === "string" ? mend(chunk) : chunk, ...rest)) as typeof process.stdout.write
}

cli(process.argv).pipe(
  Effect.provide(Layer.mergeAll(NodeContext.layer, stderrLogger)),
  NodeRuntime.runMain({ disablePrettyLogger: true })
)
