// Bundles the dashboard (src/main.js and its npm dependencies) into ../wwwroot/dist/dashboard.js.
// Run by Api.csproj before every build whose inputs changed; `node build.mjs --watch` rebuilds on save.
import * as esbuild from "esbuild";

const options = {
  entryPoints: ["src/main.js"],
  outfile: "../wwwroot/dist/dashboard.js",
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  logLevel: "warning",
};

if (process.argv.includes("--watch")) {
  const context = await esbuild.context(options);
  await context.watch();
  console.log("watching src/ for changes");
} else {
  await esbuild.build(options);
}
