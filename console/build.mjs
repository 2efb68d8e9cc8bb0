// Builds the console into the gateway's package (operator/maap/gateway/console_static),
// where `maap gateway` serves it and `pip install` ships it. build.json records a digest
// of the sources, so a test can tell (without Node) that the committed build is current.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = fileURLToPath(new URL(".", import.meta.url));
const out = join(here, "..", "operator", "maap", "gateway", "console_static");
// Keep in step with tests/test_console_units.py, which recomputes the digest.
const SOURCES = ["build.mjs", "index.html", "package.json", "package-lock.json", "tsconfig.json", "src"];

function files(path) {
  const full = join(here, path);
  try {
    return readdirSync(full, { withFileTypes: true })
      .flatMap((e) => files(join(path, e.name)));
  } catch {
    return [path];
  }
}

function digest() {
  const hash = createHash("sha256");
  const all = SOURCES.flatMap(files).map((p) => relative(here, join(here, p)).split("\\").join("/"));
  for (const path of all.sort()) {
    hash.update(path + "\0");
    hash.update(readFileSync(join(here, path)));
    hash.update("\0");
  }
  return hash.digest("hex");
}

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });
await esbuild.build({
  entryPoints: { console: join(here, "src", "main.tsx") },
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  jsx: "automatic",
  jsxImportSource: "preact",
  outdir: join(out, "assets"),
  legalComments: "eof",
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
writeFileSync(join(out, "build.json"), JSON.stringify({ sources: digest() }, null, 2) + "\n");
console.log(`console built into ${relative(process.cwd(), out) || out}`);
