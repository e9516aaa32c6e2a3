/**
 * The pure Wayland wire codec: header constants, stream framing, table-driven argument codec.
 * No I/O, no services; fds are plain numbers in caller-owned queues.
 */
export * from "./errors.js"
export * from "./header.js"
export * from "./framer.js"
export * from "./args.js"
