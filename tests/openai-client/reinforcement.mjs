// Reinforcement fine-tuning through the official OpenAI Node client, changed only in baseURL and apiKey.
// Usage: node reinforcement.mjs http://127.0.0.1:PORT/v1 WORKDIR
// The task: answer "sky" to any question. Held-out reward = the grader's mean over 8 sampled answers (temperature 1) to
// each of 8 questions never trained on, measured through chat completions and graded here by this file's own code.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { connect, sleep } from "./service.mjs";

const [baseURL, workdir] = process.argv.slice(2);
const service = connect(baseURL, workdir);
const client = service.client;
const BASE = "tiny-llama-demo";
const TOKENS = 8;

// fuzzy_match as the grader defines it: 2·LCS(characters) / (|a| + |b|), an implementation of its own.
function fuzzy(a, b) {
  if (a.length + b.length === 0) return 1;
  const table = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      table[i][j] = a[i - 1] === b[j - 1] ? table[i - 1][j - 1] + 1 : Math.max(table[i - 1][j], table[i][j - 1]);
  return (2 * table[a.length][b.length]) / (a.length + b.length);
}
const exact = (a, b) => (a === b ? 1 : 0);

const upload = async (name, lines) => (await service.upload(name, lines)).id;
const prompt = (question, extra = {}) => ({ messages: [{ role: "user", content: question }], ...extra });
const heldOutQuestions = Array.from({ length: 8 }, (_, i) => `another one ${i * 7}?`);

async function heldOutReward(model, score) {
  let total = 0;
  for (const question of heldOutQuestions) {
    const answer = await client.chat.completions.create({
      model, messages: [{ role: "user", content: question }], n: 8, temperature: 1, max_tokens: TOKENS, seed: 1,
    });
    total += answer.choices.reduce((sum, c) => sum + score(c.message.content ?? "", "sky"), 0) / answer.choices.length;
  }
  return total / heldOutQuestions.length;
}

async function finish(jobId) {
  for (let i = 0; i < 3000; i++) {
    const job = await client.fineTuning.jobs.retrieve(jobId);
    if (["succeeded", "failed", "cancelled"].includes(job.status)) {
      assert.equal(job.status, "succeeded", JSON.stringify(job.error));
      return job;
    }
    await sleep(100);
  }
  throw new Error(`job ${jobId} did not finish`);
}

const adapter = { type: "lora", rank: 8, alpha: 16, target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] };
const training = await upload("rl-train.jsonl", Array.from({ length: 12 }, (_, i) => prompt(`question ${i}?`, { answer: "sky" })));
const validation = await upload("rl-valid.jsonl", heldOutQuestions.map((q) => prompt(q, { answer: "sky" })));
const rl = (model, grader, extra = {}) => client.fineTuning.jobs.create({
  model, training_file: training, validation_file: validation, seed: 11, suffix: "rl", adapter,
  method: { type: "reinforcement", reinforcement: { grader, hyperparameters: {
    n_epochs: 8, batch_size: 4, learning_rate_multiplier: 4, eval_interval: 6, eval_samples: 4, max_completion_tokens: TOKENS, ...extra } } },
});
const template = { input: "{{sample.output_text}}", reference: "{{item.answer}}" };
const results = {};
const t0 = Date.now(); const lap = (what) => console.error(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);

// 1. A partial-credit grader from the base model.
{
  const before = await heldOutReward(BASE, fuzzy); lap("before");
  const created = await rl(BASE, { type: "text_similarity", name: "close", evaluation_metric: "fuzzy_match", ...template });
  assert.equal(created.method.type, "reinforcement");
  assert.equal(created.method.reinforcement.grader.evaluation_metric, "fuzzy_match");
  assert.equal(created.method.reinforcement.hyperparameters.compute_multiplier, 1);
  const job = await finish(created.id); lap("trained");
  const after = await heldOutReward(job.fine_tuned_model, fuzzy);
  results.text_similarity = { before, after };
  console.log(JSON.stringify(results));
  assert.ok(after - before >= 0.2, `held-out fuzzy_match reward ${before} → ${after}`);
  const metrics = [];
  for await (const e of client.fineTuning.jobs.listEvents(created.id, { limit: 100 })) if (e.type === "metrics") metrics.push(e.data);
  assert.ok(metrics.length >= 24, `${metrics.length} metrics events`);
  for (const m of metrics) for (const key of ["reward_mean", "reward_std", "kl"]) assert.equal(typeof m.objective?.[key], "number", JSON.stringify(m));
  assert.ok(metrics.some((m) => typeof m.objective.valid_reward_mean === "number"), "no evaluation on the validation file");
}

// 2. Bad input: a 4xx naming the field, and nothing queued.
{
  const count = async () => { let n = 0; for await (const _ of client.fineTuning.jobs.list({ limit: 100 })) n++; return n; };
  const jobsBefore = await count();
  const refused = async (grader, param, message) => {
    await assert.rejects(rl(BASE, grader), (e) => {
      assert.equal(e.status, 400, e.message);
      assert.equal(e.error?.param, param, JSON.stringify(e.error));
      if (message) assert.match(e.error.message, message);
      return true;
    });
  };
  await refused({ type: "regex_check", name: "x", ...template }, "method.reinforcement.grader.type", /Unknown grader type 'regex_check'/);
  await refused({ type: "python", name: "x", source: "def grade(sample, item): return 1.0" }, "method.reinforcement.grader.type", /python graders run user code/);
  await refused({ type: "multi", name: "m", calculate_output: "a", graders: { a: { type: "python", source: "" } } }, "method.reinforcement.grader.graders.a.type", /python/);
  await refused({ type: "string_check", name: "x", operation: "eq", input: "{{sample.output_text}}", reference: "{{item.city}}" }, "training_file",
    /Line 1 of file .* has no field 'city'/);
  await refused({ type: "score_model", name: "judge", model: "ft:tiny-llama-demo:nobody:ftjob-missing",
    input: [{ role: "user", content: "Grade {{sample.output_text}} against {{item.answer}}" }] }, "method.reinforcement.grader.model", /does not exist/);
  await refused({ type: "multi", name: "m", calculate_output: "a + b", graders: { a: { type: "string_check", name: "a", operation: "eq", ...template } } },
    "method.reinforcement.grader.calculate_output", /'b' is not one of the graders/);
  assert.equal(await count(), jobsBefore, "a refused job was queued");
}

// 3. A pass/fail grader from a supervised model that gets the task only sometimes (three steps of supervised training).
{
  const chat = await upload("sft.jsonl", Array.from({ length: 12 }, (_, i) => ({
    messages: [{ role: "user", content: `question ${i}?` }, { role: "assistant", content: "sky" }] })));
  const sft = await finish((await client.fineTuning.jobs.create({
    model: BASE, training_file: chat, seed: 3, suffix: "sft", adapter,
    hyperparameters: { n_epochs: 1, batch_size: 4, learning_rate_multiplier: 4 } })).id);
  const before = await heldOutReward(sft.fine_tuned_model, exact); lap("supervised start");
  const created = await rl(sft.fine_tuned_model, { type: "string_check", name: "exact", operation: "eq", ...template });
  const job = await finish(created.id); lap("trained");
  const after = await heldOutReward(job.fine_tuned_model, exact);
  results.string_check = { before, after };
  console.log(JSON.stringify(results));
  assert.ok(before > 0 && before < 0.8, `the supervised model should be right only sometimes: ${before}`);
  assert.ok(after - before >= 0.2, `held-out string_check reward ${before} → ${after}`);

  // A score_model grader whose judge is a fine-tuned model served here (its replies hold no number: it scores 0, and
  // the job learns nothing; what is checked is that the worker asks the judge and records the rewards).
  const judged = await client.fineTuning.jobs.create({
    model: BASE, training_file: training, seed: 5, adapter,
    method: { type: "reinforcement", reinforcement: {
      grader: { type: "score_model", name: "judge", model: sft.fine_tuned_model, range: [0, 1], sampling_params: { max_completions_tokens: 4 },
        input: [{ role: "system", content: "Score the answer from 0 to 1." }, { role: "user", content: "Answer: {{sample.output_text}} Expected: {{item.answer}}" }] },
      hyperparameters: { n_epochs: 1, batch_size: 4, compute_multiplier: 0.25, max_completion_tokens: 4 } } },
  });
  await finish(judged.id);
  const rewards = [];
  for await (const e of client.fineTuning.jobs.listEvents(judged.id, { limit: 100 })) if (e.type === "metrics") rewards.push(e.data.objective.reward_mean);
  assert.equal(rewards.length, 3);
  assert.ok(rewards.every((r) => r >= 0 && r <= 1), JSON.stringify(rewards));
}

console.log("every call succeeded");
