// A learning-rate sweep through the official OpenAI Node client, changed only in baseURL and apiKey: the list of
// learning_rate_multiplier values goes through the client as it is (its types say number | "auto"; the body is sent as given).
// Usage: node sweep.mjs http://127.0.0.1:PORT/v1 work-folder
//
// Three multipliers train fused over one copy of tiny-llama-demo; the job must pick the member with the lowest
// validation loss, list every member's checkpoints with their hyperparameters and losses, name each member's metrics in
// its events, and serve the winner as its fine-tuned model. Bad sweeps get 400s naming the field, with nothing stored.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { connect, sleep } from "./service.mjs";

const [baseURL, folder] = process.argv.slice(2);
const { client, waitFor, upload } = connect(baseURL, folder);

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
assert.equal((await client.fineTuning.jobs.list({ limit: 100 })).data.length, jobsBefore);

console.log("openai client sweep: every call succeeded");
