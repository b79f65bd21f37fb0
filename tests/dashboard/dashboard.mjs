// Drives the dashboard in Debian's chromium (playwright-core, no downloaded browser). Run by Api.Tests (DashboardTests).
//   node dashboard.mjs tour BASE_URL TRAINING_FILE SCREENSHOT_DIR
//     the form submits a job, the chart grows live, the badge turns succeeded, the playground streams from the new model
//   node dashboard.mjs reconnect BASE_URL JOB_ID TOTAL_STEPS SCREENSHOT_DIR
//     watches a running job; prints READY_TO_KILL, then DISCONNECTED once the page noticed; the caller restarts the
//     service meanwhile; the page must catch up to the finished job with every step on the chart exactly once
// Prints OK and exits 0 when every check passed.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const [scenario, baseUrl, ...rest] = process.argv.slice(2);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const range = (n) => Array.from({ length: n }, (_, i) => i + 1);
const say = (line) => console.log(line);
const started = Date.now();
/** A progress note with the time since the start, shown when the test fails. */
const note = (what) => console.log(`# ${((Date.now() - started) / 1000).toFixed(1)} s: ${what}`);

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "dashboard-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 900 },
  acceptDownloads: false,
});
const page = context.pages()[0] ?? await context.newPage();
const pageErrors = [];
page.on("pageerror", (error) => pageErrors.push(error));
page.on("dialog", (dialog) => dialog.accept());

/** What the job page shows: its status badge, the steps on the chart, the hub connection. */
const jobState = () => page.evaluate(() => {
  const live = document.querySelector("#live");
  return {
    status: document.querySelector("#job-status")?.dataset.status ?? null,
    steps: (document.querySelector("#loss-chart")?.dataset.steps ?? "").split(",").filter(Boolean).map(Number),
    live: live?.dataset.state ?? null,
    heardLive: Number(live?.dataset.messages ?? 0),
    eventIds: [...document.querySelectorAll("#events li")].map((li) => li.dataset.id),
    log: document.querySelector("#events")?.textContent ?? "",
  };
});

/** Polls the job page until done(state) holds, calling each(state) on the way. */
async function watch(done, { timeoutMs, each = () => {} }) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const state = await jobState();
    each(state);
    if (done(state)) return state;
    if (Date.now() > deadline) throw new Error(`timed out; the page shows ${JSON.stringify({ ...state, log: undefined })}`);
    await sleep(100);
  }
}

const shot = (dir, name) => page.screenshot({ path: path.join(dir, name), fullPage: true });
const nav = (name) => page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true });

async function tour([trainingFile, shots]) {
  note("browser started");
  await page.goto(`${baseUrl}/`);
  await page.waitForURL(/#\/jobs$/);
  await page.getByRole("heading", { name: "Fine-tuning jobs" }).waitFor();
  await page.getByText("No jobs yet.").waitFor();
  // The skip link is the first thing the keyboard reaches.
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), "Skip to content");

  // The form, found by its labels, as a user of a screen reader would.
  await nav("New job").click();
  await page.getByRole("heading", { name: "New fine-tuning job" }).waitFor();
  await page.getByLabel("Base model").selectOption("tiny-llama-demo");
  await page.getByLabel("Training file (JSONL)").setInputFiles(trainingFile);
  await page.getByLabel("Method").selectOption("lora");
  await page.getByLabel("Rank r").fill("8");
  await page.getByLabel("Alpha").fill("16");
  await page.getByLabel("Dropout").fill("0.05");
  await page.getByLabel("Target modules").fill("q_proj, k_proj, v_proj, o_proj");
  const request = () => page.locator("#request-preview").textContent().then(JSON.parse);
  assert.deepEqual((await request()).adapter.target_modules, ["q_proj", "k_proj", "v_proj", "o_proj"]);
  await page.getByLabel("Target modules").fill("all-linear");
  await page.getByLabel("Epochs").fill("10");
  await page.getByLabel("Batch size").fill("2");
  await page.getByLabel("Learning rate multiplier").fill("2");
  await page.getByLabel("Suffix").fill("dashboard");
  await page.getByLabel("Seed").fill("7");
  const sent = await request();
  assert.deepEqual(sent.adapter, { type: "lora", rank: 8, alpha: 16, dropout: 0.05, target_modules: "all-linear" });
  assert.deepEqual(sent.hyperparameters, { n_epochs: 10, batch_size: 2, learning_rate_multiplier: 2 });
  await page.locator("details.request summary").click();
  await shot(shots, "new-job.png");

  // Every change of the badge or of the chart from here on, so that no state between two polls goes unseen.
  await page.evaluate(() => {
    const seen = (window.__updates = []);
    new MutationObserver(() => {
      const status = document.querySelector("#job-status")?.dataset.status ?? null;
      const steps = (document.querySelector("#loss-chart")?.dataset.steps ?? "").split(",").filter(Boolean).length;
      const last = seen[seen.length - 1];
      if (!last || last.status !== status || last.steps !== steps) seen.push({ status, steps });
    }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-steps", "data-status"] });
  });
  await page.getByRole("button", { name: "Start fine-tuning" }).click();
  await page.waitForURL(/#\/jobs\/ftjob-\w+$/, { timeout: 30_000 });
  const jobId = page.url().split("/").pop();
  say(`job ${jobId}`);

  // 12 examples in batches of 2 for 10 epochs: 60 steps.
  const total = 60;
  const noFailure = (s) => assert.notEqual(s.status, "failed", s.log);
  const midway = await watch((s) => (s.status === "running" && s.steps.length >= 15) || s.status === "succeeded", { timeoutMs: 60_000, each: noFailure });
  if (midway.status === "running") await shot(shots, "job-running.png");
  const finished = await watch((s) => s.status === "succeeded" && s.steps.length === total, { timeoutMs: 120_000, each: noFailure });

  const updates = await page.evaluate(() => window.__updates);
  const whileRunning = new Set(updates.filter((u) => u.status === "running" && u.steps > 0 && u.steps < total).map((u) => u.steps));
  assert.ok(whileRunning.size >= 5, `the chart grew while the badge said running: ${JSON.stringify(updates)}`);
  assert.deepEqual(finished.steps, range(total));
  assert.ok(finished.heardLive > 0, "progress arrived over SignalR");
  assert.equal(finished.live, "ok");
  assert.equal(new Set(finished.eventIds).size, finished.eventIds.length, "no event twice in the log");
  await page.locator("#events").getByText("The job has successfully completed").waitFor();
  await page.locator("#checkpoints tbody tr").nth(9).waitFor();
  assert.equal(await page.locator("#checkpoints tbody tr").count(), 10);
  await page.getByLabel("Show every step").check();
  await shot(shots, "job.png");

  // The playground, from the job page: the new model beside its base model, streamed.
  const model = `ft:tiny-llama-demo:dashboard:${jobId}`;
  await page.getByRole("link", { name: "Open in playground" }).click();
  await page.getByRole("heading", { name: "Playground" }).waitFor();
  await page.locator(`#model-a option[value="${model}"]`).waitFor({ state: "attached" });
  assert.equal(await page.getByLabel("Model", { exact: true }).inputValue(), model);
  note("job succeeded; playground");
  await page.getByLabel("Compare two models side by side").check();
  await page.getByLabel("Second model").selectOption("tiny-llama-demo");
  await page.getByLabel("Message", { exact: true }).fill("What color is the sky?");
  const streams = [];
  page.on("response", (r) => { if (r.url().endsWith("/v1/chat/completions")) streams.push(r.headers()["content-type"]); });
  await page.getByLabel("Message", { exact: true }).press("Control+Enter");
  await page.locator("section.answer[data-finish]").nth(1).waitFor({ timeout: 60_000 });
  await page.locator("section.answer[data-finish]").nth(0).waitFor();
  assert.deepEqual(streams.map((t) => t.split(";")[0]), ["text/event-stream", "text/event-stream"]);
  const answer = await page.locator("#answer-0").textContent();
  assert.ok(answer.length > 0, "the fine-tuned model answered");
  assert.match(await page.locator("#answer-0-meta").textContent(), /^Finished \((stop|length)\): \d+ tokens/);
  say(`answer ${JSON.stringify(answer)}`);
  await shot(shots, "playground.png");

  note("adapters");
  // Adapters: the new one, its export, then delete.
  await nav("Adapters").click();
  const row = page.locator("#adapters tbody tr", { hasText: model });
  await row.waitFor();
  assert.match(await row.textContent(), /LORA r=8, α=16/);
  const exportHref = await row.getByRole("link", { name: /^Export/ }).getAttribute("href");
  const zip = await page.request.get(`${baseUrl}${exportHref}`);
  assert.equal(zip.status(), 200);
  assert.equal(zip.headers()["content-type"], "application/zip");
  await shot(shots, "adapters.png");

  await nav("Jobs").click();
  await page.locator(`#jobs tr[data-job="${jobId}"] .badge[data-status="succeeded"]`).waitFor();
  await shot(shots, "jobs.png");

  // A fresh load in dark mode draws the whole finished curve from the persisted events alone.
  await page.emulateMedia({ colorScheme: "dark" });
  await page.goto(`${baseUrl}/#/jobs/${jobId}`);
  await page.reload();
  const reloaded = await watch((s) => s.status === "succeeded" && s.steps.length === total, { timeoutMs: 20_000 });
  assert.deepEqual(reloaded.steps, range(total));
  await shot(shots, "job-dark.png");
  await page.emulateMedia({ colorScheme: "light" });

  await nav("Adapters").click();
  await row.getByRole("button", { name: /^Delete/ }).click();   // the confirm dialog is accepted
  await page.getByText("No adapters yet").waitFor();
}

async function reconnect([jobId, totalSteps, shots]) {
  const total = Number(totalSteps);
  note("browser started");
  await page.goto(`${baseUrl}/#/jobs/${jobId}`);
  const before = await watch((s) => s.status === "running" && s.live === "ok" && s.steps.length >= 3, { timeoutMs: 60_000 });
  assert.ok(before.steps.length < total, "the job is still running when the service is killed");
  say(`READY_TO_KILL ${before.steps.length}`);
  await watch((s) => s.live !== "ok", { timeoutMs: 30_000 });
  await shot(shots, "reconnecting.png");
  say("DISCONNECTED");
  const after = await watch((s) => s.status === "succeeded" && s.live === "ok" && s.steps.length >= total, {
    timeoutMs: 150_000,
    each: (s) => assert.equal(new Set(s.steps).size, s.steps.length, `no step twice on the chart: ${s.steps}`),
  });
  assert.deepEqual(after.steps, range(total));
  assert.equal(new Set(after.eventIds).size, after.eventIds.length, "no event twice in the log");
  const runs = after.log.match(/Fine-tuning job (started|resumed from step \d+)/g) ?? [];
  assert.ok(runs.length >= 2, `the log shows the run before and after the restart: ${runs}`);
  await page.locator("#events").getByText("The job has successfully completed").waitFor();
  await shot(shots, "reconnect.png");
}

try {
  if (scenario === "tour") await tour(rest);
  else if (scenario === "reconnect") await reconnect(rest);
  else throw new Error(`unknown scenario ${scenario}`);
  assert.deepEqual(pageErrors.map(String), [], "no uncaught errors in the page");
  say("OK");
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
