#!/usr/bin/env node
// Bundles the built CLI (dist/cli/main.js, from tsc) into dist/sommelier.mjs, which
// bin/sommelier runs: Node then loads a couple of modules instead of ~900 (effect, @effect/cli,
// @effect/platform-node and ours), and the CLI starts in ~0.5 s instead of ~1.5–2 s.
// Dynamic imports stay separate chunks in dist/chunks/ (the OTLP exporter loads only with
// --otlp). koffi stays external (it loads a native addon). Part of `npm run build`.
import { build } from "esbuild"
import { rmSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
rmSync(join(root, "dist/chunks"), { recursive: true, force: true })
await build({
  entryPoints: { sommelier: join(root, "dist/cli/main.js") },
  outdir: join(root, "dist"),
  outExtension: { ".js": ".mjs" },
  chunkNames: "chunks/[name]-[hash]",
  splitting: true,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  external: ["koffi"],
  // CommonJS dependencies call require(); give the ES modules one.
  banner: { js: "import { createRequire as __sommelierRequire } from 'node:module'; const require = __sommelierRequire(import.meta.url);" },
  logLevel: "warning"
})
