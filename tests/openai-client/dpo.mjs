// DPO through the official OpenAI Node client, changed only in baseURL and apiKey.
// Usage: node dpo.mjs http://127.0.0.1:PORT/v1 work-folder
//
// The task: a prompt names an animal ("cat …" or "dog …") and some word; the preferred answer is the animal's sound.
// A start model is fine-tuned (SFT) on both answers for every prompt, so it answers either, whatever the animal. From it,
// a DPO job on preference pairs and, beside it, an SFT job on the chosen answers alone (the baseline) continue training
// with the same steps; each is measured on held-out prompts (words never trained on): the log-probability margin of the
// preferred answer's first token over the other's (the answers differ there and are fixed after it) and the greedy answer.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { connect, sleep } from "./service.mjs";

const [baseURL, folder] = process.argv.slice(2);
const { client, waitFor, upload } = connect(baseURL, folder);

const sounds = { cat: "Meow.", dog: "Woof." };
const other = { cat: "dog", dog: "cat" };
const trainWords = ["red", "blue", "tall", "small", "old", "new", "fast", "slow", "happy", "loud", "green", "soft"];
const heldOut = ["big", "sad", "wet", "dry", "warm", "cold"];
const prompt = (animal, word) => `${animal} ${word}?`;
const user = (content) => ({ role: "user", content });
const assistant = (content) => ({ role: "assistant", content });
const pairsOf = (words) => words.flatMap((w) => ["cat", "dog"].map((a) => ({
  input: { messages: [user(prompt(a, w))] },
  preferred_output: [assistant(sounds[a])], non_preferred_output: [assistant(sounds[other[a]])],
})));

// DPO moves log-ratios fast: at the SFT learning rate it pushes both answers down and the greedy text degenerates, so both jobs run at a quarter of it.
const hyperparameters = { n_epochs: 4, batch_size: 4, learning_rate_multiplier: 0.25 };
const mixed = await upload("mixed.jsonl", trainWords.flatMap((w) => ["cat", "dog"].flatMap((a) =>
  ["cat", "dog"].map((s) => ({ messages: [user(prompt(a, w)), assistant(sounds[s])] })))));
const preferences = await upload("preferences.jsonl", pairsOf(trainWords));
const validation = await upload("validation.jsonl", pairsOf(heldOut.slice(0, 2)));
const chosen = await upload("chosen.jsonl", pairsOf(trainWords).map((p) => ({ messages: [...p.input.messages, ...p.preferred_output] })));
assert.equal(preferences.object, "file");

// The start model: both answers for every prompt.
const startJob = await client.fineTuning.jobs.create({
  model: "tiny-llama-demo", training_file: mixed.id, seed: 5, suffix: "start",
  method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 3, batch_size: 4 } } },
});
const start = await waitFor(startJob.id);
assert.equal(start.status, "succeeded", JSON.stringify(start.error));
const startModel = start.fine_tuned_model;

// From it: DPO, and the SFT-on-chosen baseline with the same hyperparameters.
const dpoJob = await client.fineTuning.jobs.create({
  model: startModel, training_file: preferences.id, validation_file: validation.id, seed: 6, suffix: "dpo",
  method: { type: "dpo", dpo: { hyperparameters } },
});
assert.equal(dpoJob.model, startModel);
assert.equal(dpoJob.method.type, "dpo");
assert.deepEqual(dpoJob.method.dpo.hyperparameters, { ...hyperparameters, beta: 0.1 });
assert.equal(dpoJob.adapter.type, start.adapter.type);
assert.equal(dpoJob.adapter.rank, start.adapter.rank);
const sftJob = await client.fineTuning.jobs.create({
  model: startModel, training_file: chosen.id, seed: 6, suffix: "sft", method: { type: "supervised", supervised: { hyperparameters } },
});
const [dpo, sft] = [await waitFor(dpoJob.id), await waitFor(sftJob.id)];
assert.equal(dpo.status, "succeeded", JSON.stringify(dpo.error));
assert.equal(sft.status, "succeeded", JSON.stringify(sft.error));

async function metricsOf(jobId) {
  const found = [];
  for await (const e of client.fineTuning.jobs.listEvents(jobId, { limit: 100 })) if (e.type === "metrics") found.push(e.data);
  return found.sort((a, b) => a.step - b.step);
}
// Continuing trains the start model's weights: the baseline's first loss is far below the start job's first (a new adapter's).
const [startMetrics, sftMetrics] = [await metricsOf(start.id), await metricsOf(sft.id)];
assert.ok(sftMetrics[0].train_loss < startMetrics[0].train_loss / 2, `continued from the start model: ${sftMetrics[0].train_loss} vs ${startMetrics[0].train_loss}`);

// DPO's metrics: the loss, the reward margin and the preference accuracy, per step; validation at epoch ends.
const metrics = await metricsOf(dpo.id);
assert.equal(metrics.length, 24);   // 4 epochs of 24 pairs in batches of 4
for (const m of metrics) for (const key of ["reward_margin", "preference_accuracy", "chosen_reward", "rejected_reward"]) assert.equal(typeof m.objective[key], "number");
assert.ok(Math.abs(metrics[0].train_loss - Math.log(2)) < 0.05, `DPO starts at ln 2 (the policy is its reference): ${metrics[0].train_loss}`);
const last = metrics.slice(-6);
const mean = (xs) => xs.reduce((s, x) => s + x, 0) / xs.length;
assert.ok(mean(last.map((m) => m.objective.reward_margin)) > metrics[0].objective.reward_margin, "the reward margin grows");
assert.ok(metrics.some((m) => typeof m.valid_loss === "number"), "validation pairs are measured at epoch ends");

// Held-out prompts: the first-token log-prob margin (preferred − other, each forced by logit_bias; logprobs are of the
// raw logits) and the greedy answer.
const firstToken = { "Meow.": 77, "Woof.": 87 };   // the byte-level tokenizer's ids for "M" and "W"
async function logprob(model, content, token) {
  const r = await client.chat.completions.create({
    model, messages: [user(content)], max_tokens: 1, temperature: 0, logprobs: true, logit_bias: { [token]: 100 },
  });
  return r.choices[0].logprobs.content[0].logprob;
}
async function measure(model) {
  const rows = [];
  for (const w of heldOut) for (const a of ["cat", "dog"]) {
    const p = prompt(a, w);
    const margin = (await logprob(model, p, firstToken[sounds[a]])) - (await logprob(model, p, firstToken[sounds[other[a]]]));
    const greedy = (await client.chat.completions.create({ model, messages: [user(p)], max_tokens: 8, temperature: 0 })).choices[0].message.content;
    rows.push({ margin, preferred: greedy === sounds[a] });
  }
  return rows;
}
const [before, afterDpo, afterSft] = [await measure(startModel), await measure(dpo.fine_tuned_model), await measure(sft.fine_tuned_model)];
const summary = (rows) => ({
  mean_margin: mean(rows.map((r) => r.margin)), preferred: rows.filter((r) => r.preferred).length,
  switched: rows.filter((r, i) => r.preferred && !before[i].preferred).length,
});
const result = { prompts: before.length, start: summary(before), dpo: summary(afterDpo), sft: summary(afterSft),
  dpo_last_margin: last.at(-1).objective.reward_margin, dpo_last_accuracy: last.at(-1).objective.preference_accuracy };
console.log("RESULT " + JSON.stringify(result));
const needed = before.filter((r) => !r.preferred).length;
assert.ok(result.dpo.mean_margin > result.start.mean_margin + 1, `DPO raises the held-out margin: ${JSON.stringify(result)}`);
assert.ok(result.dpo.preferred >= 0.75 * before.length, `DPO's greedy answer is the preferred one on most held-out prompts: ${JSON.stringify(result)}`);
assert.ok(needed === 0 || result.dpo.switched >= needed / 2, `the greedy answer switches on most prompts that needed it: ${JSON.stringify(result)}`);

// Continuing from a checkpoint by its id: the adapter and chat template are the start's; a conflicting adapter is refused.
const checkpoint = (await client.fineTuning.jobs.checkpoints.list(start.id)).data[0];
const fromCheckpoint = await client.fineTuning.jobs.create({ model: checkpoint.id, training_file: preferences.id, method: { type: "dpo" } });
assert.equal(fromCheckpoint.model, checkpoint.fine_tuned_model_checkpoint);
assert.equal(fromCheckpoint.adapter.rank, start.adapter.rank);
await client.fineTuning.jobs.cancel(fromCheckpoint.id);

// Bad input: a 4xx naming the line or field, and nothing stored or queued.
const jobsBefore = (await client.fineTuning.jobs.list({ limit: 100 })).data.length;
const filesBefore = (await client.files.list()).data.length;
const rejects = (promise, status, param, phrase) => assert.rejects(promise, (e) =>
  e.status === status && e.error?.param === param && (!phrase || e.error.message.includes(phrase)) || assert.fail(`${e.status} ${JSON.stringify(e.error)}`));
const pair = JSON.stringify(pairsOf(["x"])[0]);
const malformed = (name, bad) => {
  const file = path.join(folder, name);
  fs.writeFileSync(file, [pair, bad, pair].join("\n"));
  return client.files.create({ file: fs.createReadStream(file), purpose: "fine-tune" });
};
await rejects(malformed("broken.jsonl", pair.slice(0, -5)), 400, "file", "Line 2: the line is not valid JSON");
await rejects(malformed("missing.jsonl", JSON.stringify({ input: { messages: [user("x")] }, preferred_output: [assistant("a")] })), 400, "file",
  "Line 2: non_preferred_output is missing");
await rejects(malformed("role.jsonl", JSON.stringify({ input: { messages: [user("x")] }, preferred_output: [user("a")], non_preferred_output: [assistant("b")] })), 400, "file",
  "Line 2: preferred_output[0].role must be \"assistant\"");
const create = (body) => client.fineTuning.jobs.create({ model: "tiny-llama-demo", training_file: preferences.id, ...body });
await rejects(create({}), 400, "training_file", "preference format");                              // a DPO file to an SFT job
await rejects(create({ training_file: mixed.id, method: { type: "dpo" } }), 400, "training_file", "chat format");
await rejects(create({ method: { type: "dpo", dpo: { hyperparameters: { beta: 0 } } } }), 400, "method.dpo.hyperparameters.beta");
await rejects(create({ method: { type: "dpo", dpo: { hyperparameters: { gamma: 1 } } } }), 400, "method.dpo.hyperparameters.gamma");
await rejects(create({ method: { type: "dpo", dpo: { hyperparameters: { n_epochs: 0 } } } }), 400, "method.dpo.hyperparameters.n_epochs");
await rejects(create({ method: { type: "ppo" } }), 400, "method.type");
await rejects(create({ method: { type: "dpo" }, validation_file: mixed.id }), 400, "validation_file", "chat format");
await rejects(create({ model: startModel, method: { type: "dpo" }, adapter: { type: "lora", rank: 2 } }), 400, "adapter.rank");
await rejects(create({ model: startModel, method: { type: "dpo" }, adapter: { type: "dora" } }), 400, "adapter.type");
await rejects(create({ model: "ft:tiny-llama-demo::ftjob-missing", method: { type: "dpo" } }), 404, "model");
assert.equal((await client.fineTuning.jobs.list({ limit: 100 })).data.length, jobsBefore);
assert.equal((await client.files.list()).data.length, filesBefore);

console.log("openai client dpo: every call succeeded");
