import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

// `npm run test:vm`: the real-kernel test, alone (its QEMUs use both cores) and after the main suite.
export default defineConfig({
  root: fileURLToPath(new URL("../..", import.meta.url)),
  test: {
    include: ["test/vm/**/*.vm.ts"],
    testTimeout: 60_000,
    hookTimeout: 30 * 60_000,
    pool: "forks",
    poolOptions: { forks: { singleFork: true } }
  }
})
