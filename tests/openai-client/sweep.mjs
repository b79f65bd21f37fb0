// A learning-rate sweep through the official OpenAI Node client, changed only in baseURL and apiKey: the list of
// learning_rate_multiplier values goes through the client as it is (its types say number | "auto"; the body is sent as given).
// Usage: node sweep.mjs http://127.0.0.1:PORT/v1 work-folder
//
// Three multipliers train fused over one copy of tiny-llama-demo; the job must pick the member with the lowest
// validation loss, list every member's checkpoints with their hyperparameters and losses, name each member's metrics in
// its events, and serve the winner as its fine-tuned model. Then a rank sweep (adapter.rank [2, 8]) whose members'
// adapters have those ranks, and a sweep scored by an eval that picks the member with the best reported score. Bad
// sweeps get 400s naming the field, with nothing stored.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { connect, sleep } from "./service.mjs";

const [baseURL, folder] = process.argv.slice(2);
const { client, waitFor, upload } = connect(baseURL, folder);
const started = Date.now();
const lap = (what) => console.log(`${what}: ${((Date.now() - started) / 1000).toFixed(1)} s`);

const chat = (q, a) => ({ messages: [{ role: "user", content: q }, { role: "assistant", content: a }] });
const colours = ["red", "blue", "green", "pink", "grey", "gold", "teal", "navy", "lime", "rose", "sand", "jade"];
const training = await upload("train.jsonl", colours.map((c) => chat(`Colour ${c}?`, `It is ${c}.`)));
const validation = await upload("valid.jsonl", ["plum", "mint", "ruby", "iris"].map((c) => chat(`Colour ${c}?`, `It is ${c}.`)));

const values = [0.05, 1, 4];
const created = await client.fineTuning.jobs.create({
  model: "tiny-llama-demo", training_file: training.id, validation_file: validation.id, seed: 11, suffix: "sweep",
  method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 2, batch_size: 4, learning_rate_multiplier: values } } },
});
assert.deepEqual(created.sweep.values, values);
assert.equal(created.sweep.parameter, "learning_rate_multiplier");
const job = await waitFor(created.id);
assert.equal(job.status, "succeeded", JSON.stringify(job.error));

// Each member's losses as the job reports them, and as its last checkpoint does.
const members = job.sweep.members;
assert.equal(members.length, 3);
members.forEach((m, i) => {
  assert.equal(m.member, i);
  assert.equal(m.hyperparameters.learning_rate_multiplier, values[i]);
  assert.equal(m.step, 6);   // 12 examples / 4 per step × 2 epochs
  assert.ok(Number.isFinite(m.valid_loss) && Number.isFinite(m.train_loss), JSON.stringify(m));
});
// The members really trained with different rates: their losses differ.
assert.equal(new Set(members.map((m) => m.valid_loss.toFixed(6))).size, 3, JSON.stringify(members));
assert.equal(new Set(members.map((m) => m.train_loss.toFixed(6))).size, 3, JSON.stringify(members));
const lowest = members.reduce((best, m) => (m.valid_loss < best.valid_loss ? m : best));
assert.equal(job.sweep.best_member, lowest.member);
assert.equal(job.hyperparameters.learning_rate_multiplier, values[lowest.member]);
assert.equal(job.method.supervised.hyperparameters.learning_rate_multiplier, values[lowest.member]);
assert.match(job.fine_tuned_model, /^ft:tiny-llama-demo:sweep:ftjob-/);
console.log("sweep members:", members.map((m) => `lr×${m.hyperparameters.learning_rate_multiplier}: train ${m.train_loss.toFixed(4)}, valid ${m.valid_loss.toFixed(4)}`).join("; "),
  `-> best member ${job.sweep.best_member}`);

// Every member's checkpoints (one per epoch), with its hyperparameters; the last ones carry the losses above.
const checkpoints = [];
for await (const c of client.fineTuning.jobs.checkpoints.list(job.id, { limit: 2 })) checkpoints.push(c);   // pages of 2: members share steps
assert.equal(checkpoints.length, 6);
assert.equal(new Set(checkpoints.map((c) => c.id)).size, 6);
for (const m of members) {
  const own = checkpoints.filter((c) => c.sweep_member === m.member);
  assert.deepEqual(own.map((c) => c.step_number).sort(), [3, 6]);
  const last = own.find((c) => c.step_number === 6);
  assert.equal(last.fine_tuned_model_checkpoint, m.checkpoint);
  assert.equal(last.hyperparameters.learning_rate_multiplier, m.hyperparameters.learning_rate_multiplier);
  assert.equal(last.metrics.valid_loss, m.valid_loss);
}
// A member that lost is kept: its checkpoint serves as a model of its own.
const loser = members.find((m) => m.member !== job.sweep.best_member).checkpoint;
const reply = await client.chat.completions.create({ model: loser, messages: [{ role: "user", content: "Colour plum?" }], max_tokens: 4 });
assert.equal(reply.model, loser);

// The events name each member's metrics and the winner.
const events = [];
for await (const e of client.fineTuning.jobs.listEvents(job.id, { limit: 100 })) events.push(e);
for (const m of members) {
  const label = `member ${m.member + 1} (learning_rate_multiplier=${values[m.member]})`;
  const finished = events.find((e) => e.message.startsWith(`Sweep ${label} finished`));
  assert.ok(finished, `no finished event for ${label}`);
  assert.equal(finished.data.valid_loss, m.valid_loss);
  assert.ok(events.some((e) => e.type === "metrics" && e.data.sweep_member === m.member && e.message.startsWith(`Sweep ${label}: Step 6/6`)));
}
assert.ok(events.some((e) => e.data?.sweep_best === lowest.member));

// The winner is served as the fine-tuned model.
const answer = await client.chat.completions.create({ model: job.fine_tuned_model, messages: [{ role: "user", content: "Colour plum?" }], max_tokens: 4 });
assert.equal(answer.model, job.fine_tuned_model);

lap("learning-rate sweep checked");

// A rank sweep: adapter.rank [2, 8] (our extension, sent as the client sends any extra field) trains two LoRA adapters of
// those ranks fused; the one with the lower validation loss is the fine-tuned model, and the job shows its rank.
const ranks = [2, 8];
const rankCreated = await client.fineTuning.jobs.create({
  model: "tiny-llama-demo", training_file: training.id, validation_file: validation.id, seed: 11, suffix: "ranks",
  adapter: { type: "lora", rank: ranks },
  method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 1, batch_size: 4, learning_rate_multiplier: 2 } } },
});
assert.equal(rankCreated.sweep.parameter, "rank");
assert.deepEqual(rankCreated.sweep.values, ranks);
assert.equal(rankCreated.sweep.scored_by, "valid_loss");
const rankJob = await waitFor(rankCreated.id);
assert.equal(rankJob.status, "succeeded", JSON.stringify(rankJob.error));
const rankMembers = rankJob.sweep.members;
rankMembers.forEach((m, i) => {
  assert.equal(m.hyperparameters.rank, ranks[i]);
  assert.equal(m.hyperparameters.learning_rate_multiplier, 2);
  assert.ok(Number.isFinite(m.valid_loss), JSON.stringify(m));
});
const rankBest = rankMembers.reduce((best, m) => (m.valid_loss < best.valid_loss ? m : best));
assert.equal(rankJob.sweep.best_member, rankBest.member);
assert.equal(rankJob.adapter.rank, ranks[rankBest.member]);
assert.equal(rankJob.hyperparameters.learning_rate_multiplier, 2);
console.log("rank sweep:", rankMembers.map((m) => `r=${m.hyperparameters.rank}: valid ${m.valid_loss.toFixed(4)}`).join("; "), `-> best member ${rankJob.sweep.best_member}`);
// Each member's checkpoint files hold an adapter of its rank: adapter_config.json's r, and lora_A's rows in the weights.
for (const m of rankMembers) {
  const dir = path.join(folder, "data", "blobs", "jobs", rankJob.id, "checkpoints", `step-3-m${m.member + 1}`);
  assert.equal(JSON.parse(fs.readFileSync(path.join(dir, "adapter_config.json"), "utf8")).r, ranks[m.member]);
  const weights = fs.readFileSync(path.join(dir, "adapter_model.safetensors"));
  const header = JSON.parse(weights.subarray(8, 8 + Number(weights.readBigUInt64LE(0))).toString("utf8"));
  const loraA = Object.entries(header).filter(([k]) => k.endsWith("lora_A.weight"));
  assert.ok(loraA.length > 0);
  for (const [name, t] of loraA) assert.equal(t.shape[0], ranks[m.member], name);
}
// The served fine-tuned model is the winner's adapter: its stored config and parameter count (LoRA's grow with r: 8 is 4x 2).
const stored = (await client.get("/adapters")).data.find((a) => a.model === rankJob.fine_tuned_model);
assert.equal(stored.config.r, ranks[rankBest.member]);
const rankReply = await client.chat.completions.create({ model: rankJob.fine_tuned_model, messages: [{ role: "user", content: "Colour plum?" }], max_tokens: 4 });
assert.equal(rankReply.model, rankJob.fine_tuned_model);
const loserRank = rankMembers.find((m) => m.member !== rankBest.member);
assert.equal((await client.chat.completions.create({ model: loserRank.checkpoint, messages: [{ role: "user", content: "Colour plum?" }], max_tokens: 4 })).model,
  loserRank.checkpoint);

// A member's checkpoint continues as its own adapter: a job from the second (rank-8) member's checkpoint trains a
// rank-8 adapter further, not the job's first-listed one.
const continued = await client.fineTuning.jobs.create({ model: rankMembers[1].checkpoint, training_file: training.id, seed: 3,
  method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 1, batch_size: 4 } } } });
assert.equal(continued.adapter.rank, ranks[1]);
const continuedJob = await waitFor(continued.id);
assert.equal(continuedJob.status, "succeeded", JSON.stringify(continuedJob.error));
assert.equal((await client.get("/adapters")).data.find((a) => a.model === continuedJob.fine_tuned_model).config.r, ranks[1]);
lap("rank sweep checked");

// A sweep scored by an eval (no validation file needed): each member's checkpoints are scored, and the member whose
// last checkpoint has the highest mean grade of the eval's first criterion wins (ties: lower validation loss, then listed first).
const itemSchema = { type: "object", properties: { question: { type: "string" }, answer: { type: "string" } }, required: ["question", "answer"] };
const similar = { type: "text_similarity", name: "similar", input: "{{sample.output_text}}", reference: "{{item.answer}}", evaluation_metric: "fuzzy_match", pass_threshold: 0.6 };
const exact = { type: "string_check", name: "exact", input: "{{sample.output_text}}", reference: "{{item.answer}}", operation: "eq" };
const evalObject = await client.evals.create({
  name: "colour sentences", data_source_config: { type: "custom", item_schema: itemSchema }, testing_criteria: [similar, exact],
});
const evalSource = {
  type: "completions", input_messages: { type: "template", template: [{ role: "user", content: "{{item.question}}" }] },
  sampling_params: { temperature: 0, max_completion_tokens: 5, seed: 1 },
  source: { type: "file_content", content: ["plum", "mint", "ruby"].map((c) => ({ item: { question: `Colour ${c}?`, answer: `It is ${c}.` } })) },
};
const evalValues = [0.05, 4];
const evalCreated = await client.fineTuning.jobs.create({
  model: "tiny-llama-demo", training_file: training.id, seed: 11, suffix: "evalsweep", eval: { id: evalObject.id, data_source: evalSource },
  method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 2, batch_size: 4, learning_rate_multiplier: evalValues } } },
});
assert.equal(evalCreated.sweep.scored_by, "eval_similar");
assert.equal(evalCreated.sweep.eval_id, evalObject.id);
const evalJob = await waitFor(evalCreated.id);
assert.equal(evalJob.status, "succeeded", JSON.stringify(evalJob.error));
const evalMembers = evalJob.sweep.members;
const evalCheckpoints = (await client.fineTuning.jobs.checkpoints.list(evalJob.id, { limit: 10 })).data;
assert.equal(evalCheckpoints.length, 4);
for (const m of evalMembers) {
  assert.equal(m.valid_loss, null);
  assert.equal(typeof m.eval_score, "number", JSON.stringify(m));
  // The score is the member's last checkpoint's grade, as the checkpoint object reports it.
  const last = evalCheckpoints.find((c) => c.sweep_member === m.member && c.step_number === 6);
  assert.equal(m.eval_checkpoint, last.fine_tuned_model_checkpoint);
  assert.equal(last.metrics.eval_similar, m.eval_score);
  for (const c of evalCheckpoints.filter((c) => c.sweep_member === m.member)) assert.equal(typeof c.metrics.eval_exact, "number");
}
const evalBest = evalMembers.reduce((best, m) => (m.eval_score > best.eval_score ? m : best));
console.log("eval sweep:", evalMembers.map((m) => `lr×${m.hyperparameters.learning_rate_multiplier}: similar ${m.eval_score.toFixed(4)}`).join("; "), `-> best member ${evalJob.sweep.best_member}`);
assert.notEqual(evalMembers[0].eval_score, evalMembers[1].eval_score, "the members scored alike: the test would not tell the winner");
assert.equal(evalJob.sweep.best_member, evalBest.member);
assert.equal(evalJob.hyperparameters.learning_rate_multiplier, evalValues[evalBest.member]);
const evalEvents = [];
for await (const e of client.fineTuning.jobs.listEvents(evalJob.id, { limit: 100 })) evalEvents.push(e);
assert.equal(evalEvents.filter((e) => e.type === "eval").length, 4);
assert.deepEqual(new Set(evalEvents.filter((e) => e.type === "eval").map((e) => e.data.sweep_member)), new Set([0, 1]));
assert.ok(evalEvents.some((e) => e.data?.sweep_best === evalBest.member && e.data.eval_score === evalBest.eval_score));


// Ranks scored by an eval with keep_best, with a validation file: each member's score is its best checkpoint's grade
// (the latest of equals), the checkpoint a job alone would keep; the winner's kept checkpoint is the fine-tuned model,
// an adapter of the winner's rank.
// (An eval whose first criterion is another: keep_best names the one members are scored by.)
const exactFirst = await client.evals.create({
  name: "colour sentences, exact first", data_source_config: { type: "custom", item_schema: itemSchema }, testing_criteria: [exact, similar],
});
const keptCreated = await client.fineTuning.jobs.create({
  model: "tiny-llama-demo", training_file: training.id, validation_file: validation.id, seed: 12, suffix: "rankeval", adapter: { rank: ranks },
  eval: { id: exactFirst.id, data_source: evalSource, keep_best: "similar" },
  method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 2, batch_size: 4, learning_rate_multiplier: 4 } } },
});
assert.equal(keptCreated.sweep.scored_by, "eval_similar");
const keptJob = await waitFor(keptCreated.id);
assert.equal(keptJob.status, "succeeded", JSON.stringify(keptJob.error));
const keptCheckpoints = (await client.fineTuning.jobs.checkpoints.list(keptJob.id, { limit: 10 })).data;
for (const m of keptJob.sweep.members) {
  const best = keptCheckpoints.filter((c) => c.sweep_member === m.member)
    .reduce((a, b) => (b.metrics.eval_similar > a.metrics.eval_similar || (b.metrics.eval_similar === a.metrics.eval_similar && b.step_number > a.step_number) ? b : a));
  assert.equal(m.eval_checkpoint, best.fine_tuned_model_checkpoint);
  assert.equal(m.eval_score, best.metrics.eval_similar);
}
// The highest score; equal scores go to the lower validation loss (here the file only breaks ties), then the first listed.
const keptBest = [...keptJob.sweep.members].sort((a, b) => b.eval_score - a.eval_score || a.valid_loss - b.valid_loss || a.member - b.member)[0];
assert.equal(keptJob.sweep.best_member, keptBest.member);
assert.equal(keptJob.adapter.rank, ranks[keptBest.member]);
assert.equal((await client.get("/adapters")).data.find((a) => a.model === keptJob.fine_tuned_model).config.r, ranks[keptBest.member]);
console.log("rank sweep with keep_best:", keptJob.sweep.members.map((m) => `r=${m.hyperparameters.rank}: similar ${m.eval_score.toFixed(4)} at ${m.eval_checkpoint.split(":").at(-1)}, valid ${m.valid_loss.toFixed(4)}`).join("; "),
  `-> best member ${keptJob.sweep.best_member}`);
lap("eval-scored sweeps checked");

// Bad sweeps: a 400 naming the field, and nothing stored.
const jobsBefore = (await client.fineTuning.jobs.list({ limit: 100 })).data.length;
const rejects = (promise, status, param, phrase) => assert.rejects(promise, (e) =>
  e.status === status && e.error?.param === param && (!phrase || e.error.message.includes(phrase)) || assert.fail(`${e.status} ${JSON.stringify(e.error)}`));
const create = (hyperparameters, extra = {}) => client.fineTuning.jobs.create({
  model: "tiny-llama-demo", training_file: training.id, validation_file: validation.id,
  method: { type: "supervised", supervised: { hyperparameters } }, ...extra,
});
const lr = "method.supervised.hyperparameters.learning_rate_multiplier";
await rejects(create({ learning_rate_multiplier: [0.5, 1, 2, 4, 8] }), 400, lr, "2 to 4 values, got 5");
await rejects(create({ learning_rate_multiplier: [1] }), 400, lr, "2 to 4 values, got 1");
await rejects(create({ learning_rate_multiplier: [1, 1] }), 400, lr, "twice");
await rejects(create({ learning_rate_multiplier: [1, 0] }), 400, lr, "got 0");
await rejects(create({ learning_rate_multiplier: [1, "auto"] }), 400, lr);
await rejects(create({ learning_rate_multiplier: [1, 2], n_epochs: [1, 2] }), 400, "method.supervised.hyperparameters.n_epochs", "cannot be a list");
await rejects(create({ learning_rate_multiplier: [1, 2] }, { validation_file: undefined }), 400, "validation_file", "needs a validation_file");
await rejects(client.fineTuning.jobs.create({ model: "tiny-llama-demo", training_file: training.id, validation_file: validation.id,
  hyperparameters: { learning_rate_multiplier: [1, 2, 3, 4, 5] } }), 400, "hyperparameters.learning_rate_multiplier");
const withAdapter = (adapter, hyperparameters = {}, extra = {}) => create(hyperparameters, { adapter, ...extra });
await rejects(withAdapter({ rank: [2, 4, 8, 16, 32] }), 400, "adapter.rank", "2 to 4 values, got 5");
await rejects(withAdapter({ rank: [4, 4] }), 400, "adapter.rank", "twice");
await rejects(withAdapter({ rank: [2, 0] }), 400, "adapter.rank", "got 0");
await rejects(withAdapter({ rank: [2, 300] }), 400, "adapter.rank", "got 300");
await rejects(withAdapter({ rank: [2, 2.5] }), 400, "adapter.rank", "got 2.5");
await rejects(withAdapter({ rank: "eight" }), 400, "adapter.rank", "integer");
await rejects(withAdapter({ type: "rlrr", rank: [2, 100] }), 400, "adapter.rank");
await rejects(withAdapter({ rank: [2, 8] }, { learning_rate_multiplier: [1, 2] }), 400, "adapter.rank", "one setting");
await rejects(withAdapter({ rank: [2, 8] }, {}, { validation_file: undefined }), 400, "validation_file", "or an eval");
await rejects(withAdapter({ rank: [2, 8] }, {}, { model: rankJob.fine_tuned_model }), 400, "adapter.rank", "continues from");
assert.equal((await client.fineTuning.jobs.list({ limit: 100 })).data.length, jobsBefore);

console.log("openai client sweep: every call succeeded");
