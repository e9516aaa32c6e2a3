/**
 * Public face of the protocol layer: descriptor types, per-message Schema codecs and the
 * interface registry. Importing this module loads every generated protocol table (via the
 * registry); code that only needs the types should import `./types.js` directly.
 */
export * from "./types.js"
export * from "./codec.js"
export * from "./registry.js"
export { safeIdentifier } from "./build.js"
