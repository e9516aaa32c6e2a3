#!/usr/bin/env node
// Bundles the built CLI (dist/cli/main.js, from tsc) into one file, dist/sommelier.mjs, which
// bin/sommelier runs: Node then loads one module instead of ~900 (effect, @effect/cli,
// @effect/platform-node and ours), and the CLI starts in ~0.5 s instead of ~1.5–2 s.
// koffi stays external (it loads a native addon). Part of `npm run build`.
import { build } from "esbuild"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
await build({
  entryPoints: [join(root, "dist/cli/main.js")],
  outfile: join(root, "dist/sommelier.mjs"),
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  external: ["koffi"],
  // CommonJS dependencies call require(); give the ES module one.
  banner: { js: "import { createRequire as __sommelierRequire } from 'node:module'; const require = __sommelierRequire(import.meta.url);" },
  logLevel: "warning"
})
