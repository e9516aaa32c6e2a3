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

cli(process.argv).pipe(
  Effect.provide(Layer.mergeAll(NodeContext.layer, stderrLogger)),
  NodeRuntime.runMain({ disablePrettyLogger: true })
)
