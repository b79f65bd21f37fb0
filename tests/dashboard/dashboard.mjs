// Drives the dashboard in Debian's chromium (playwright-core, no downloaded browser). Run by Api.Tests (DashboardTests).
//   node dashboard.mjs tour BASE_URL TRAINING_FILE SCREENSHOT_DIR
//     the form submits a job, the chart grows live, the badge turns succeeded, the playground streams from the new model
//   node dashboard.mjs reconnect BASE_URL JOB_ID TOTAL_STEPS SCREENSHOT_DIR
//     watches a running job; prints READY_TO_KILL, then DISCONNECTED once the page noticed; the caller restarts the
//     service meanwhile; the page must catch up to the finished job with every step on the chart exactly once
//   node dashboard.mjs compare BASE_URL JOB_A JOB_B DPO_JOB PREVIEW_FILE EVAL_ID SCREENSHOT_DIR
//     two finished runs ticked in the job list and compared (curves, settings diff, final figures, from their events);
//     the DPO job's page shows its reward margin and preference accuracy; the new-job form previews a file with the
//     model's chat template; the playground's completion mode streams from /v1/completions; the Evals page compares
//     the eval's runs (JOB_A's checkpoints, the base and JOB_A's model) per criterion with the API's counts, and JOB_A's
//     checkpoints show their eval scores
//   node dashboard.mjs sweep BASE_URL TRAINING_FILE VALIDATION_FILE SCREENSHOT_DIR
//     a sweep of 3 learning rates, created through the API: marked "sweep ×3" in the job list; its page shows the
//     members side by side while they train (one curve each on one chart, growing live) and, finished, each member's
//     value, step and losses as the API reports them, the best one marked, its newest checkpoint to copy or try
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
  if (midway.status === "running") {
    // The worker's CPU and memory come with each step's progress.
    await page.locator('[data-stat="Worker CPU"]', { hasText: /\d+ % of \d+ %/ }).waitFor();
    assert.match(await page.locator('[data-stat="Worker memory"]').textContent(), /^\d+(\.\d)? (MiB|GiB)$/);
    await shot(shots, "job-running.png");
  }
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
  assert.match(await page.locator("#answer-0-meta").textContent(), /^Finished \((stop|length)\): [1-9]\d* tokens/);
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
  // The test paused the job right after creating it, and resumes it once the page is live on it.
  await watch((s) => s.status === "paused" && s.live === "ok", { timeoutMs: 60_000 });
  say("PAGE_LIVE");
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

/** A job's persisted metrics events, oldest first, read from the API as any client would. @param {string} jobId */
async function metricsOf(jobId) {
  const events = await (await page.request.get(`${baseUrl}/v1/fine_tuning/jobs/${jobId}/events?limit=1000`)).json();
  return events.data.filter((e) => e.type === "metrics").reverse().map((e) => e.data);
}

/** The attribute of an element once it holds what wanted() accepts. @param {string} selector @param {string} name @param {(v: string) => boolean} wanted */
async function attributeWhen(selector, name, wanted, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await page.locator(selector).getAttribute(name).catch(() => null);
    if (value !== null && wanted(value)) return value;
    if (Date.now() > deadline) throw new Error(`${selector} ${name}=${JSON.stringify(value)} after ${timeout} ms`);
    await sleep(100);
  }
}

async function compare([jobA, jobB, dpoJob, previewFile, evalId, shots]) {
  note("browser started");
  // Two runs ticked in the job list.
  await page.goto(`${baseUrl}/#/jobs`);
  await page.locator(`#jobs tr[data-job="${dpoJob}"]`).waitFor();
  await page.getByLabel(`Compare ${jobA}`).check();
  await page.getByLabel(`Compare ${jobB}`).check();
  await page.getByRole("button", { name: "Compare 2 selected runs" }).click();
  await page.waitForURL(/#\/compare\?jobs=/);
  await page.getByRole("heading", { name: "Compare runs" }).waitFor();

  // Overlaid curves from the events: 6 training points and 2 validation points per run, in the order ticked.
  const [a, b] = [await metricsOf(jobA), await metricsOf(jobB)];
  assert.equal(a.length, 6);
  const counts = await attributeWhen("#compare-chart", "data-points", (v) => v === "6,2,6,2");
  assert.equal(counts, "6,2,6,2");
  const labels = (await page.locator("#compare-chart").getAttribute("data-series")).split("|");
  assert.deepEqual(labels.map((l) => l.replace(/ · \w+/, "")), ["rank4 training", "rank4 validation", "rank8 training", "rank8 validation"]);

  // The settings diff marks what differs: rank, learning rate multiplier, seed; not the base model.
  const row = (key) => page.locator(`#settings-table tr[data-key="${key}"]`);
  await row("adapter.rank").waitFor();
  assert.deepEqual(await row("adapter.rank").locator("td").allTextContents(), ["4", "8"]);
  for (const key of ["adapter.rank", "seed", "method.supervised.hyperparameters.learning_rate_multiplier"]) {
    assert.match(await row(key).getAttribute("class") ?? "", /differs/, key);
  }
  assert.equal(await row("model").getAttribute("class"), null);
  assert.equal(await row("method.supervised.hyperparameters.n_epochs").getAttribute("class"), null);

  // Final figures side by side, the API's own numbers.
  const final = page.locator('#final-table tr[data-figure="Final training loss"] td');
  assert.deepEqual((await final.evaluateAll((tds) => tds.map((td) => Number(td.getAttribute("data-value"))))), [a[5].train_loss, b[5].train_loss]);
  const validLast = (m) => [...m].reverse().find((d) => d.valid_loss !== null && d.valid_loss !== undefined).valid_loss;
  const valid = page.locator('#final-table tr[data-figure="Final validation loss"] td');
  assert.deepEqual((await valid.evaluateAll((tds) => tds.map((td) => Number(td.getAttribute("data-value"))))), [validLast(a), validLast(b)]);
  assert.equal(await page.locator("#final-table td.best").count() >= 1, true, "the better value of a figure is marked");
  await shot(shots, "compare.png");
  await page.getByLabel("Only differences").check();
  assert.equal(await row("model").count(), 0);
  note("compared");

  // The DPO job's page: reward margin and preference accuracy over the steps, as the events report them.
  await page.goto(`${baseUrl}/#/jobs/${dpoJob}`);
  await page.locator("#objective").waitFor();
  const names = await attributeWhen("#objective-chart", "data-names", (v) => v.includes("preference_accuracy"));
  for (const name of ["reward_margin", "preference_accuracy", "chosen_reward", "rejected_reward"]) assert.ok(names.split(",").includes(name), names);
  const dpoMetrics = await metricsOf(dpoJob);
  const last = dpoMetrics[dpoMetrics.length - 1];
  assert.equal(await page.locator('dd[data-objective="preference_accuracy"]').textContent(), last.objective.preference_accuracy.toFixed(4));
  assert.equal(await page.locator('dd[data-objective="reward_margin"]').textContent(), last.objective.reward_margin.toFixed(4));
  assert.equal(await page.locator("#objective-chart").getAttribute("data-points"), names.split(",").map(() => String(dpoMetrics.length)).join(","));
  assert.match(await page.locator('[data-stat="Worker CPU"]').textContent(), /^\d+ % of \d+ %$/);
  await page.locator("#objective").scrollIntoViewIfNeeded();
  await shot(shots, "job-dpo.png");
  note("dpo");

  // The data preview: the file through tiny-llama-demo's chat template, its token counts and the example the context cuts.
  await nav("New job").click();
  await page.getByLabel("Base model").selectOption("tiny-llama-demo");
  await page.locator(`#training-existing option[value="${previewFile}"]`).waitFor({ state: "attached" });
  await page.getByLabel("…or a file already uploaded").first().selectOption(previewFile);
  await page.getByRole("button", { name: "Preview the training data" }).click();
  await page.locator("#preview-summary").waitFor();
  assert.equal(await page.locator("#preview-truncated").getAttribute("data-count"), "1");
  assert.match(await page.locator("#preview-summary").textContent(), /13 examples \(chat\)/);
  assert.match(await page.locator("#preview-summary").textContent(), /line 13\)/);
  const histogram = await page.locator("#token-histogram tbody td.number").allTextContents();
  assert.equal(histogram.map(Number).reduce((x, y) => x + y, 0), 13);
  const first = page.locator('.preview-example[data-line="1"]');
  assert.match(await first.locator("pre").textContent(), /What color is the sky\?/);
  assert.match(await first.locator("mark.trained").first().textContent(), /^Blue, on a clear day\./);
  assert.doesNotMatch(await first.locator("mark.trained").allTextContents().then((t) => t.join("")), /sky/);
  await page.locator("#new-job .preview-box").scrollIntoViewIfNeeded();
  await shot(shots, "data-preview.png");
  note("previewed");

  // The playground's completion mode: the prompt as it is, streamed from /v1/completions.
  await page.goto(`${baseUrl}/#/playground?model=tiny-llama-demo`);
  await page.getByRole("heading", { name: "Playground" }).waitFor();
  await page.getByRole("radio", { name: /Completion/ }).check();
  await page.getByLabel("Prompt", { exact: true }).fill("What color is the sky?");
  const streams = [];
  page.on("response", (r) => { if (r.url().endsWith("/v1/completions")) streams.push(r.headers()["content-type"]); });
  await page.getByLabel("Prompt", { exact: true }).press("Control+Enter");
  await page.locator("section.answer[data-finish]").waitFor({ timeout: 60_000 });
  assert.equal(await page.locator("section.answer").getAttribute("data-mode"), "completion");
  assert.deepEqual(streams.map((t) => t.split(";")[0]), ["text/event-stream"]);
  assert.match(await page.locator("#answer-0-meta").textContent(), /^Finished \((stop|length)\): [1-9]\d* tokens/);
  await shot(shots, "playground-completion.png");
  note("completion");
  await evals(evalId, jobA, shots);
}

/** The Evals page: every run of the eval in a row with the API's own counts; JOB_A's checkpoints with their scores. */
async function evals(evalId, jobA, shots) {
  const get = async (p) => (await page.request.get(`${baseUrl}${p}`)).json();
  const ev = await get(`/v1/evals/${evalId}`);
  const runs = (await get(`/v1/evals/${evalId}/runs?limit=100`)).data;
  // Two checkpoint runs of JOB_A (one per epoch) and the call's two: the base and JOB_A's model.
  assert.equal(runs.length, 4);
  assert.deepEqual(runs.filter((r) => r.fine_tuning_job_id === jobA).length, 2);
  assert.ok(runs.some((r) => r.model === "tiny-llama-demo"));
  await nav("Evals").click();
  await page.locator(`#evals tr[data-eval="${evalId}"] a`).click();
  await page.waitForURL(new RegExp(`#/evals/${evalId}$`));
  await page.getByRole("heading", { name: ev.name }).waitFor();
  await page.locator("#eval-runs-table").waitFor();
  const table = await page.locator("#eval-runs-table tbody tr").evaluateAll((trs) => trs.map((tr) => ({
    run: tr.getAttribute("data-run"),
    cells: Object.fromEntries([...tr.querySelectorAll("td[data-criterion]")].map((td) => [td.getAttribute("data-criterion"),
      { passed: Number(td.getAttribute("data-passed")), total: Number(td.getAttribute("data-total")), mean: td.getAttribute("data-mean"),
        best: td.classList.contains("best"), text: td.textContent }])),
  })));
  assert.deepEqual(table.map((r) => r.run), runs.map((r) => r.id));
  const names = ev.testing_criteria.map((c) => c.name);
  assert.deepEqual(names, ["exact", "similar"]);
  for (const [i, run] of runs.entries()) {
    const row = table[i].cells;
    assert.equal(row.all.passed, run.result_counts.passed, run.id);
    assert.equal(row.all.total, run.result_counts.total, run.id);
    assert.equal(run.result_counts.total, 4);
    for (const name of names) {
      const c = run.per_testing_criteria_results.find((x) => x.testing_criteria === name);
      assert.equal(row[name].passed, c.passed, `${run.id} ${name}`);
      assert.equal(row[name].total, c.passed + c.failed, `${run.id} ${name}`);
      assert.equal(Number(row[name].mean), c.mean_score, `${run.id} ${name}`);
      assert.match(row[name].text, new RegExp(`^${c.passed}/${c.passed + c.failed} \\(.* mean ${c.mean_score.toFixed(3)}`));
    }
  }
  // The best of each column is bold: the highest pass rate, ties broken by the mean grade; nothing when all are equal.
  for (const column of ["all", ...names]) {
    const keys = table.map((r) => [r.cells[column].passed / r.cells[column].total, Number(r.cells[column].mean ?? 0)]);
    const top = keys.reduce((a, b) => (b[0] > a[0] || (b[0] === a[0] && b[1] > a[1]) ? b : a));
    const allEqual = keys.every((k) => k[0] === top[0] && k[1] === top[1]);
    assert.deepEqual(table.map((r) => r.cells[column].best), keys.map((k) => !allEqual && k[0] === top[0] && k[1] === top[1]), column);
  }
  assert.ok(table.some((r) => r.cells.similar.best), "the runs' similarity differs, so one is best");
  await shot(shots, "evals.png");

  // A run's output items: the item, the model's sample and each criterion's grade.
  const base = runs.find((r) => r.model === "tiny-llama-demo");
  await page.locator(`#eval-runs-table tr[data-run="${base.id}"]`).getByRole("link", { name: "Output items" }).click();
  await page.locator("#output-items-table").waitFor();
  const items = (await get(`/v1/evals/${evalId}/runs/${base.id}/output_items?limit=10`)).data;
  assert.equal(await page.locator("#output-items-table tbody tr").count(), items.length);
  const first = page.locator("#output-items-table tbody tr").first();
  assert.equal((await first.locator("td").nth(2).textContent()), items[0].sample.output.map((o) => o.content).join("\n"));
  assert.deepEqual(await first.locator("li[data-grade]").evaluateAll((lis) => lis.map((li) => li.getAttribute("data-grade"))), names);
  note("evals");

  // JOB_A's checkpoints carry their eval scores, one column per criterion, as the API's checkpoint metrics.
  await page.goto(`${baseUrl}/#/jobs/${jobA}`);
  const checkpoints = (await get(`/v1/fine_tuning/jobs/${jobA}/checkpoints?limit=100`)).data;
  await page.locator('#checkpoints-table td[data-criterion="exact"]').first().waitFor();
  for (const c of checkpoints) {
    for (const name of names) {
      const td = page.locator(`#checkpoints-table tr[data-step="${c.step_number}"] td[data-criterion="${name}"]`);
      assert.equal(Number(await td.getAttribute("data-mean")), c.metrics[`eval_${name}`]);
      assert.equal(Number(await td.getAttribute("data-pass-rate")), c.metrics[`eval_${name}_pass_rate`]);
      assert.equal(await td.locator("a").getAttribute("href"), `#/evals/${evalId}/runs/${c.metrics.eval_run_id}`);
    }
  }
}

async function sweep([trainingFile, validationFile, shots]) {
  note("browser started");
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: baseUrl });
  await page.goto(`${baseUrl}/#/jobs`);
  await page.getByText("No jobs yet.").waitFor();
  const values = [0.05, 1, 4];
  // 12 examples in batches of 2 for 2 epochs: 12 steps per member, a validation loss and a checkpoint per epoch.
  const total = 12;
  const created = await page.request.post(`${baseUrl}/v1/fine_tuning/jobs`, { data: {
    model: "tiny-llama-demo", training_file: trainingFile, validation_file: validationFile, seed: 4, suffix: "sweep",
    method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 2, batch_size: 2, learning_rate_multiplier: values } } },
  } });
  assert.equal(created.status(), 200, await created.text());
  const jobId = (await created.json()).id;
  say(`job ${jobId}`);

  // Every change of the badge or of the members' chart from here on, so that no state between two polls goes unseen.
  await page.evaluate(() => {
    const seen = (window.__updates = []);
    new MutationObserver(() => {
      const status = document.querySelector("#job-status")?.dataset.status ?? null;
      const points = document.querySelector("#sweep-chart")?.dataset.points ?? "";
      const last = seen[seen.length - 1];
      if (!last || last.status !== status || last.points !== points) seen.push({ status, points });
    }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-points", "data-status"] });
  });
  await page.goto(`${baseUrl}/#/jobs/${jobId}`);
  await page.locator("#sweep-table").waitFor();
  note("members shown");
  assert.equal(await page.locator("#training-chart").isHidden(), true, "the members' chart stands in for the single-run chart");

  // Per member: its training curve (solid) and validation points (dashed), all 18 and 3 of them in the end.
  const done = `${total},2,${total},2,${total},2`;
  const points = await attributeWhen("#sweep-chart", "data-points", (v) => v === done, 150_000);
  assert.equal(points, done);
  await page.locator('#job-status[data-status="succeeded"]').waitFor({ timeout: 30_000 });
  note("sweep succeeded");
  const updates = await page.evaluate(() => window.__updates);
  const whileRunning = new Set(updates.filter((u) => u.status === "running" && u.points && u.points !== done).map((u) => u.points));
  assert.ok(whileRunning.size >= 3, `the members' curves grew while the badge said running: ${JSON.stringify(updates)}`);
  assert.ok(Number(await page.locator("#live").getAttribute("data-messages")) > 0, "progress arrived over SignalR");
  const labels = (await page.locator("#sweep-chart").getAttribute("data-series")).split("|");
  assert.deepEqual(labels, values.flatMap((v) => [`learning_rate_multiplier=${v}`, `learning_rate_multiplier=${v} validation`]));
  const metrics = await metricsOf(jobId);
  for (const m of [0, 1, 2]) assert.equal(metrics.filter((d) => d.sweep_member === m).length, total, `member ${m}'s steps`);

  // The table: one row per member with the API's own figures once the job (and its newest checkpoints) are read back.
  const job = await (await page.request.get(`${baseUrl}/v1/fine_tuning/jobs/${jobId}`)).json();
  assert.equal(job.status, "succeeded");
  const best = job.sweep.best_member;
  const lowest = job.sweep.members.reduce((a, b) => (b.valid_loss < a.valid_loss ? b : a));
  assert.equal(best, lowest.member);
  await page.locator(`#sweep-table tr[data-member="${best}"].best`).waitFor();
  assert.equal(job.sweep.scored_by, "valid_loss");
  assert.match(await page.locator("#sweep-lead").textContent(), new RegExp(`Member ${best + 1} had the lowest validation loss`));
  assert.equal(await page.locator("#sweep-table th[data-field=value]").textContent(), "Learning rate multiplier");
  const rows = await page.locator("#sweep-table tbody tr").evaluateAll((trs) => trs.map((tr) => ({
    member: Number(tr.getAttribute("data-member")), value: Number(tr.getAttribute("data-value")), best: tr.classList.contains("best"),
    marked: tr.querySelector("[data-best]") !== null, text: tr.textContent,
    fields: Object.fromEntries([...tr.querySelectorAll("td[data-field]")].map((td) => [td.getAttribute("data-field"), td.getAttribute("data-value") ?? td.textContent])),
  })));
  assert.equal(rows.length, 3);
  for (const [i, { fields, ...row }] of rows.entries()) {
    const member = job.sweep.members[i];
    assert.equal(row.member, i);
    assert.equal(row.value, values[i]);
    assert.equal(Number(fields.value), values[i]);
    assert.equal(Number(fields.step), total);
    assert.equal(member.step, total);
    // The last step's losses, as the metrics events and the member's newest checkpoint (the API's sweep) both report them.
    const last = metrics.filter((d) => d.sweep_member === i).at(-1);
    assert.equal(Number(fields.train_loss), last.train_loss);
    assert.equal(Number(fields.train_loss), member.train_loss);
    assert.equal(Number(fields.valid_loss), member.valid_loss);
    assert.equal(row.best, i === best);
    assert.equal(row.marked, i === best);
    assert.equal(fields.checkpoint, `${member.checkpoint} Copy Try it`);
  }
  assert.equal(new Set(rows.map((r) => r.fields.valid_loss)).size, 3, "the members trained with different rates");
  assert.equal(await page.locator('[data-stat="Members"]').textContent(), "3");
  // Every member's checkpoints, each naming its member's value.
  assert.equal(await page.locator("#checkpoints-table tbody tr").count(), 6);
  assert.equal(await page.locator(`#checkpoints-table tr[data-step="${total}"][data-member="2"] td`).nth(1).textContent(), "3 (4)");
  await page.locator("#sweep").scrollIntoViewIfNeeded();
  await shot(shots, "sweep.png");
  note("table checked");

  // A losing member's checkpoint: copied, then tried in the playground.
  const loser = job.sweep.members.find((m) => m.member !== best);
  const loserRow = page.locator(`#sweep-table tr[data-member="${loser.member}"]`);
  await loserRow.getByRole("button", { name: `Copy ${loser.checkpoint}` }).click();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), loser.checkpoint);
  await loserRow.getByRole("link", { name: "Try it" }).click();
  await page.getByRole("heading", { name: "Playground" }).waitFor();
  await page.locator(`#model-a option[value="${loser.checkpoint}"]`).waitFor({ state: "attached" });
  assert.equal(await page.getByLabel("Model", { exact: true }).inputValue(), loser.checkpoint);

  // Compared with other runs, the sweep is its chosen member (its fine-tuned model): one curve, not three interleaved.
  await page.goto(`${baseUrl}/#/compare?jobs=${jobId}`);
  assert.equal(await attributeWhen("#compare-chart", "data-points", (v) => v === `${total},2`), `${total},2`);
  const finalTrain = page.locator('#final-table tr[data-figure="Final training loss"] td');
  assert.equal(Number(await finalTrain.getAttribute("data-value")), job.sweep.members[best].train_loss);

  // The job list marks it as a sweep of 3, its values in the tooltip.
  await nav("Jobs").click();
  const tag = page.locator(`#jobs tr[data-job="${jobId}"] .tag`);
  assert.equal(await tag.textContent(), "sweep ×3");
  assert.equal(await tag.getAttribute("title"), "A sweep of learning_rate_multiplier: 0.05, 1, 4");
}

try {
  if (scenario === "tour") await tour(rest);
  else if (scenario === "compare") await compare(rest);
  else if (scenario === "reconnect") await reconnect(rest);
  else if (scenario === "sweep") await sweep(rest);
  else throw new Error(`unknown scenario ${scenario}`);
  assert.deepEqual(pageErrors.map(String), [], "no uncaught errors in the page");
  say("OK");
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
