// Builds the dashboard into jobqueue_grpc/dashboard/ (committed, shipped as package data):
// index.html, style.css and one bundled, minified app.js. Deterministic: the same sources give
// the same bytes, so CI can check the committed bundle is current (.ci/run step `dashboard`).
import { build } from "esbuild";
import { copyFileSync, cpSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "jobqueue_grpc", "dashboard");

// `node build.mjs gen`: copies the generated stubs of clients/typescript/src/gen (`make
// generate` writes them) into src/gen (not committed), so that they and this code resolve
// @bufbuild/protobuf to this package's one copy, for tsc and for the bundle alike.
if (process.argv[2] === "gen") {
  rmSync(join(here, "src", "gen"), { recursive: true, force: true });
  cpSync(join(here, "..", "clients", "typescript", "src", "gen"), join(here, "src", "gen"), { recursive: true });
  process.exit(0);
}

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "main.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "none",
  outfile: join(out, "app.js"),
  logLevel: "warning",
});
for (const f of readdirSync(join(here, "static"))) copyFileSync(join(here, "static", f), join(out, f));
console.log(`dashboard built into ${out}`);
