/**
 * Log lines go to stderr (stdout belongs to the commands' own output, e.g. `demo`'s PNG path),
 * one line each: `sommelier: LEVEL message [client=N]`.
 */
import { Cause, HashMap, Logger } from "effect"

const format = (message: unknown): string => {
  if (Array.isArray(message)) return message.map(format).join(" ")
  if (typeof message === "string") return message
  if (Cause.isCause(message)) return Cause.pretty(message)
  if (message instanceof Error) return message.message
  return JSON.stringify(message)
}

export const stderrLogger = Logger.replace(
  Logger.defaultLogger,
  Logger.make(({ annotations, cause, logLevel, message }) => {
    let line = `sommelier: ${logLevel.label} ${format(message)}`
    if (!Cause.isEmpty(cause)) line += ` ${Cause.pretty(cause)}`
    for (const [k, v] of HashMap.toEntries(annotations)) line += ` ${k}=${format(v)}`
    process.stderr.write(line + "\n")
  })
)
