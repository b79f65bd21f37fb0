// Evals through the official OpenAI Node client, changed only in baseURL and apiKey.
// Usage: node evals.mjs http://127.0.0.1:PORT/v1 work-folder
//
// 1. An eval (custom item schema; string_check and text_similarity criteria) and a fine-tuning job that names it
//    (our `eval` extension, keep_best): every checkpoint is scored, as job events and checkpoint metrics.
// 2. One call (`data_source.models`, our extension) runs the eval over the base, two fine-tuned models and a
//    checkpoint; each model then runs alone, and its counts, per-criterion results and samples must be the same.
// 3. Output items; cancel and delete; bad input is a 4xx naming the field, and nothing runs for it.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { connect, sleep } from "./service.mjs";

const [baseURL, folder] = process.argv.slice(2);
const service = connect(baseURL, folder);
const client = service.client;
const BASE = "tiny-llama-demo";
const started = Date.now();
const lap = (what) => console.log(`${what}: ${((Date.now() - started) / 1000).toFixed(1)} s`);

const upload = async (name, lines) => (await service.upload(name, lines)).id;

async function finishJob(id) {
  for (let i = 0; i < 6000; i++) {
    const job = await client.fineTuning.jobs.retrieve(id);
    if (["succeeded", "failed", "cancelled"].includes(job.status)) {
      assert.equal(job.status, "succeeded", JSON.stringify(job.error));
      return job;
    }
    await sleep(100);
  }
  throw new Error(`job ${id} did not finish`);
}

async function finishRun(evalId, runId) {
  for (let i = 0; i < 6000; i++) {
    const run = await client.evals.runs.retrieve(runId, { eval_id: evalId });
    if (["completed", "failed", "canceled"].includes(run.status)) {
      assert.equal(run.status, "completed", JSON.stringify(run.error));
      return run;
    }
    await sleep(100);
  }
  throw new Error(`run ${runId} did not finish`);
}

// The task: a question per color word; the answer is the word itself, capitalised, with a full stop.
const words = ["red", "blue", "green", "gold"];
const items = words.map((w) => ({ item: { question: `Say ${w}.`, answer: `${w[0].toUpperCase()}${w.slice(1)}.` } }));
const inputMessages = { type: "template", template: [{ role: "user", content: "{{item.question}}" }] };
const dataSource = (extra) => ({
  type: "completions", input_messages: inputMessages, sampling_params: { temperature: 0, max_completion_tokens: 6, seed: 1 },
  source: { type: "file_content", content: items }, ...extra,
});

// 1. The eval, and a job that scores each checkpoint with it.
const evalObject = await client.evals.create({
  name: "colors",
  data_source_config: { type: "custom", item_schema: { type: "object", properties: { question: { type: "string" }, answer: { type: "string" } }, required: ["question", "answer"] },
    include_sample_schema: true },
  testing_criteria: [
    { type: "string_check", name: "exact", input: "{{sample.output_text}}", reference: "{{item.answer}}", operation: "eq" },
    { type: "text_similarity", name: "similar", input: "{{sample.output_text}}", reference: "{{item.answer}}", evaluation_metric: "fuzzy_match", pass_threshold: 0.6 },
  ],
});
assert.equal(evalObject.object, "eval");
assert.match(evalObject.id, /^eval_/);
assert.deepEqual(evalObject.testing_criteria.map((c) => c.name), ["exact", "similar"]);
assert.deepEqual(evalObject.data_source_config.schema.required, ["item", "sample"]);
assert.equal((await client.evals.retrieve(evalObject.id)).name, "colors");

const right = await upload("right.jsonl", words.flatMap((w, i) => [0, 1, 2].map(() =>
  ({ messages: [{ role: "user", content: items[i].item.question }, { role: "assistant", content: items[i].item.answer }] }))));
const wrong = await upload("wrong.jsonl", words.flatMap((w, i) => [0, 1, 2].map(() =>
  ({ messages: [{ role: "user", content: items[i].item.question }, { role: "assistant", content: "No." }] }))));
const hyperparameters = { n_epochs: 2, batch_size: 4, learning_rate_multiplier: 8 };
const scored = await client.fineTuning.jobs.create({
  model: BASE, training_file: right, seed: 1, suffix: "right", hyperparameters,
  eval: { id: evalObject.id, data_source: dataSource(), keep_best: "similar" },
});
const other = await client.fineTuning.jobs.create({ model: BASE, training_file: wrong, seed: 2, suffix: "wrong", hyperparameters });
const [rightJob, wrongJob] = [await finishJob(scored.id), await finishJob(other.id)];
lap("jobs trained");
assert.equal(rightJob.eval.id, evalObject.id);

const checkpoints = (await client.fineTuning.jobs.checkpoints.list(rightJob.id, { limit: 10 })).data;
assert.equal(checkpoints.length, 2);
for (const c of checkpoints) {
  for (const key of ["eval_exact", "eval_similar", "eval_exact_pass_rate", "eval_similar_pass_rate"])
    assert.equal(typeof c.metrics[key], "number", JSON.stringify(c.metrics));
}
const evalEvents = [];
for await (const e of client.fineTuning.jobs.listEvents(rightJob.id, { limit: 100 })) if (e.type === "eval") evalEvents.push(e);
assert.deepEqual(evalEvents.map((e) => e.data.step).sort((a, b) => a - b), checkpoints.map((c) => c.step_number).sort((a, b) => a - b));
for (const e of evalEvents) assert.equal(e.data.result_counts.total, items.length);
// keep_best: the fine-tuned model's weights are those of the checkpoint with the highest mean 'similar' grade.
const best = checkpoints.reduce((a, b) => (b.metrics.eval_similar > a.metrics.eval_similar
  || (b.metrics.eval_similar === a.metrics.eval_similar && b.step_number > a.step_number) ? b : a));
console.log(JSON.stringify({ checkpoints: checkpoints.map((c) => ({ step: c.step_number, exact: c.metrics.eval_exact, similar: c.metrics.eval_similar })), best: best.step_number }));
const kept = [];
for await (const e of client.fineTuning.jobs.listEvents(rightJob.id, { limit: 100 })) if (e.data?.keep_best) kept.push(e.data.step);
assert.deepEqual(kept, best.step_number === Math.max(...checkpoints.map((c) => c.step_number)) ? [] : [best.step_number]);
const checkpointRuns = [];
for await (const r of client.evals.runs.list(evalObject.id)) if (r.fine_tuning_job_id === rightJob.id) checkpointRuns.push(r);
assert.equal(checkpointRuns.length, 2);

// 2. Four models in one call, then each alone.
const firstCheckpoint = checkpoints.find((c) => c.step_number === Math.min(...checkpoints.map((c) => c.step_number))).fine_tuned_model_checkpoint;
const models = [BASE, rightJob.fine_tuned_model, wrongJob.fine_tuned_model, firstCheckpoint];
const group = await client.evals.runs.create(evalObject.id, { name: "four models", data_source: dataSource({ models }) });
assert.equal(group.object, "eval.run");
assert.equal(group.runs.length, 4);
assert.deepEqual(group.runs.map((r) => r.model), models);
assert.equal(group.id, group.runs[0].id);
const together = [];
for (const r of group.runs) together.push(await finishRun(evalObject.id, r.id));
lap("four models together");
const alone = [];
for (const model of models) {
  const run = await client.evals.runs.create(evalObject.id, { name: `${model} alone`, data_source: dataSource({ model }) });
  assert.equal(run.runs, null);
  alone.push(await finishRun(evalObject.id, run.id));
}
lap("each alone");

async function samples(run) {
  const out = [];
  for await (const item of client.evals.runs.outputItems.list(run.id, { eval_id: evalObject.id })) out.push(item);
  return out;
}
const summary = [];
for (let i = 0; i < models.length; i++) {
  const [a, b] = [together[i], alone[i]];
  assert.deepEqual(a.result_counts, b.result_counts, `${models[i]}: counts together ${JSON.stringify(a.result_counts)}, alone ${JSON.stringify(b.result_counts)}`);
  assert.deepEqual(a.per_testing_criteria_results, b.per_testing_criteria_results, models[i]);
  assert.equal(a.result_counts.total, items.length);
  const [sa, sb] = [await samples(a), await samples(b)];
  assert.equal(sa.length, items.length);
  assert.deepEqual(sa.map((s) => s.sample.output[0].content), sb.map((s) => s.sample.output[0].content), models[i]);
  summary.push({ model: models[i], result_counts: a.result_counts, per_criterion: a.per_testing_criteria_results });
}
console.log(JSON.stringify(summary));
// The models differ (so the one call really mixed different adapters and the base): the base, the fine-tuned models and
// the checkpoint do not all answer alike. (The tiny model learns the answers' shape in a few steps, not the exact words.)
const answers = [];
for (const run of together) answers.push((await samples(run)).map((s) => s.sample.output[0].content));
console.log(JSON.stringify(answers));
assert.notDeepEqual(answers[0], answers[1], "the base and the fine-tuned model answered alike");
assert.notDeepEqual(answers[1], answers[2], "the two fine-tuned models answered alike");

// 3. Output items, one item, cancel and delete.
const items0 = await samples(together[1]);
const one = await client.evals.runs.outputItems.retrieve(items0[0].id, { eval_id: evalObject.id, run_id: together[1].id });
assert.equal(one.object, "eval.run.output_item");
assert.equal(one.datasource_item_id, 0);
assert.deepEqual(one.datasource_item, items[0].item);
assert.ok(["pass", "fail"].includes(one.status));
assert.deepEqual(one.results.map((r) => r.name), ["exact", "similar"]);
assert.equal(one.results[0].passed, one.sample.output[0].content === items[0].item.answer);
await assert.rejects(client.evals.runs.cancel(together[1].id, { eval_id: evalObject.id }), (e) => e.status === 400);
const deleted = await client.evals.runs.delete(alone[0].id, { eval_id: evalObject.id });
assert.equal(deleted.deleted, true);
await assert.rejects(client.evals.runs.retrieve(alone[0].id, { eval_id: evalObject.id }), (e) => e.status === 404);

// 4. Bad input: 4xx naming the field; nothing runs.
const countRuns = async () => { let n = 0; for await (const _ of client.evals.runs.list(evalObject.id)) n++; return n; };
const runsBefore = await countRuns();
const refused = async (promise, status, param, message) => {
  await assert.rejects(promise, (e) => {
    assert.equal(e.status, status, e.message);
    assert.equal(e.error?.param, param, JSON.stringify(e.error));
    if (message) assert.match(e.error.message, message);
    return true;
  });
};
await refused(client.evals.runs.create(evalObject.id, { data_source: dataSource({ model: BASE, source: { type: "file_content", content: [{ item: { question: "Say red.", answer: "Red." } }, { item: { question: "Say blue." } }] } }) }),
  400, "data_source.source.content[1].item.answer", /answer/);
await refused(client.evals.runs.create(evalObject.id, { data_source: dataSource({ model: "ft:tiny-llama-demo:nobody:ftjob-missing" }) }), 404, "data_source.model", /does not exist/);
await refused(client.evals.runs.create(evalObject.id, { data_source: dataSource({ models: [BASE, "no-such-model"] }) }), 404, "data_source.models[1]", /no-such-model/);
await refused(client.evals.runs.create(evalObject.id, { data_source: dataSource({ model: BASE, input_messages: { type: "template", template: [{ role: "user", content: "{{item.prompt}}" }] } }) }),
  400, "data_source.source.content[0].item.prompt", /item\.prompt/);
assert.equal(await countRuns(), runsBefore, "a refused run was created");
await refused(client.evals.create({ data_source_config: { type: "custom", item_schema: { type: "object" } },
  testing_criteria: [{ type: "regex_check", name: "x", input: "{{sample.output_text}}", reference: "a" }] }), 400, "testing_criteria[0].type", /Unknown grader type 'regex_check'/);
await refused(client.evals.create({ data_source_config: { type: "custom", item_schema: { type: "object" } },
  testing_criteria: [{ type: "python", name: "x", source: "def grade(s, i): return 1" }] }), 400, "testing_criteria[0].type", /python/);
await refused(client.evals.runs.create("eval_missing", { data_source: dataSource({ model: BASE }) }), 404, "eval_id");
const jobsBefore = (await client.fineTuning.jobs.list({ limit: 100 })).data.length;
await refused(client.fineTuning.jobs.create({ model: BASE, training_file: right, eval: { id: evalObject.id, data_source: dataSource({ source: { type: "file_content", content: [{ item: { question: "x" } }] } }) } }),
  400, "eval.data_source.source.content[0].item.answer");
await refused(client.fineTuning.jobs.create({ model: BASE, training_file: right, eval: { id: evalObject.id, data_source: dataSource(), keep_best: "nope" } }), 400, "eval.keep_best");
await refused(client.fineTuning.jobs.create({ model: BASE, training_file: right, eval: { id: "eval_missing", data_source: dataSource() } }), 404, "eval.id");
assert.equal((await client.fineTuning.jobs.list({ limit: 100 })).data.length, jobsBefore, "a refused job was queued");

// Deleting the eval takes its runs with it.
assert.equal((await client.evals.delete(evalObject.id)).deleted, true);
await refused(client.evals.retrieve(evalObject.id), 404, "eval_id");
lap("done");
console.log("every call succeeded");
