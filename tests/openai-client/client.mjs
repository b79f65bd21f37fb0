// Drives the service with the official OpenAI Node client, changed only in baseURL and apiKey.
// Usage: node client.mjs http://127.0.0.1:PORT/v1 path/to/train.jsonl
import assert from "node:assert/strict";
import fs from "node:fs";
import OpenAI from "openai";

const [baseURL, trainingPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-local-test", maxRetries: 0 });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(jobId, done) {
  for (let i = 0; i < 1200; i++) {
    const job = await client.fineTuning.jobs.retrieve(jobId);
    if (done(job.status)) return job;
    await sleep(100);
  }
  throw new Error(`job ${jobId} did not finish`);
}

const file = await client.files.create({ file: fs.createReadStream(trainingPath), purpose: "fine-tune" });
assert.equal(file.object, "file");
assert.equal(file.purpose, "fine-tune");

const create = (epochs, extra = {}) => client.fineTuning.jobs.create({
  model: "tiny-llama-demo", training_file: file.id, seed: 3, suffix: "node",
  hyperparameters: { n_epochs: epochs, batch_size: 2, learning_rate_multiplier: 1 },
  adapter: { type: "lora", rank: 8, alpha: 16 },  // our extension: the client sends unknown keys as they are
  ...extra,
});

const job = await create(6, { metadata: { client: "node" } });
assert.equal(job.object, "fine_tuning.job");
assert.equal(job.adapter.type, "lora");
assert.equal(job.hyperparameters.n_epochs, 6);

const finished = await waitFor(job.id, (s) => ["succeeded", "failed", "cancelled"].includes(s));
assert.equal(finished.status, "succeeded", JSON.stringify(finished.error));
assert.ok(finished.fine_tuned_model.startsWith("ft:tiny-llama-demo:node:"));
assert.equal(finished.result_files.length, 1);   // the step metrics CSV: a header and one row per step
const results = await (await client.files.content(finished.result_files[0])).text();
assert.equal(results.trimEnd().split("\n").length, 31);

const events = await client.fineTuning.jobs.listEvents(job.id, { limit: 5 });
assert.equal(events.data.length, 5);
assert.equal(events.data[0].message, "The job has successfully completed");
let allEvents = 0;
for await (const _ of client.fineTuning.jobs.listEvents(job.id, { limit: 7 })) allEvents++;
assert.ok(allEvents > 20, `auto-paging found ${allEvents} events`);

const checkpoints = await client.fineTuning.jobs.checkpoints.list(job.id);
assert.ok(checkpoints.data.length >= 3);
assert.equal(checkpoints.data[0].step_number, 30);   // 6 epochs of 5 steps

const second = await create(50);
const cancelled = await client.fineTuning.jobs.cancel(second.id);
assert.equal(cancelled.status, "cancelled");

const third = await create(50);
await waitFor(third.id, (s) => s === "running");
const paused = await client.fineTuning.jobs.pause(third.id);
assert.equal(paused.status, "paused");
const resumed = await client.fineTuning.jobs.resume(third.id);
assert.equal(resumed.status, "queued");
await client.fineTuning.jobs.cancel(third.id);

const ids = [];
for await (const j of client.fineTuning.jobs.list({ limit: 1 })) ids.push(j.id);   // one page per job
for (const id of [job.id, second.id, third.id]) assert.ok(ids.includes(id), `jobs.list paging misses ${id}`);

const models = await client.models.list();
assert.ok(models.data.some((m) => m.id === finished.fine_tuned_model));

const chat = await client.chat.completions.create({
  model: finished.fine_tuned_model, temperature: 0, messages: [{ role: "user", content: "Who wrote Hamlet?" }],
});
assert.equal(chat.choices[0].message.content, "Shakespeare.");

let streamed = "";
const stream = await client.chat.completions.create({
  model: finished.fine_tuned_model, temperature: 0, stream: true, messages: [{ role: "user", content: "Who wrote Hamlet?" }],
});
for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? "";
assert.equal(streamed, "Shakespeare.");

const completion = await client.completions.create({ model: "tiny-llama-demo", prompt: "Hi", max_tokens: 3, temperature: 0 });
assert.equal(completion.usage.completion_tokens, 3);

// OpenAI parity options, each sent by the client unchanged: n, logprobs, penalties, logit_bias, stream_options.
const hi = [{ role: "user", content: "Hi" }];
const scored = await client.chat.completions.create({
  model: finished.fine_tuned_model, messages: hi, max_tokens: 4, temperature: 0.7, seed: 5, n: 2,
  logprobs: true, top_logprobs: 2, presence_penalty: 0.5, frequency_penalty: 0.5, logit_bias: { 120: 5 },
});
assert.deepEqual(scored.choices.map((c) => c.index), [0, 1]);
for (const c of scored.choices) {
  assert.ok(c.logprobs.content.length > 0 || c.finish_reason === "stop");
  for (const t of c.logprobs.content) {
    assert.equal(t.top_logprobs.length, 2);
    assert.ok(Array.isArray(t.bytes) && t.logprob <= 0);
  }
}
assert.equal(scored.usage.completion_tokens, scored.choices.reduce((sum, c) => sum + c.logprobs.content.length, 0));

let usageChunk = null;
let forcedText = "";
const counted = await client.chat.completions.create({
  model: "tiny-llama-demo", messages: hi, max_tokens: 3, temperature: 0, stream: true, stream_options: { include_usage: true },
  logprobs: true, logit_bias: { 120: 100 },
});
for await (const chunk of counted) {
  if (chunk.choices.length === 0) usageChunk = chunk;
  else {
    assert.equal(chunk.usage ?? null, null);
    forcedText += chunk.choices[0].delta?.content ?? "";
  }
}
assert.equal(forcedText, "xxx");
assert.equal(usageChunk.usage.completion_tokens, 3);

const legacy = await client.completions.create({ model: "tiny-llama-demo", prompt: "Hi", max_tokens: 3, temperature: 0, n: 2, logprobs: 2, logit_bias: { 120: 100 } });
for (const c of legacy.choices) {
  assert.equal(c.text, "xxx");
  assert.deepEqual(c.logprobs.tokens, ["x", "x", "x"]);
  assert.deepEqual(c.logprobs.text_offset, [0, 1, 2]);
  assert.ok(Object.keys(c.logprobs.top_logprobs[0]).length >= 2);
}
assert.equal(legacy.usage.completion_tokens, 6);
await assert.rejects(client.chat.completions.create({ model: "tiny-llama-demo", messages: hi, n: 9 }), (e) => e.status === 400 && e.error?.param === "n");

// Structured output: response_format json_schema as the client sends it; parse() reads message.parsed from the content.
const schema = {
  type: "object", additionalProperties: false, required: ["answer", "confidence"],
  properties: { answer: { type: "string", enum: ["yes", "no"] }, confidence: { type: "integer" } },
};
const structured = await client.chat.completions.parse({
  model: finished.fine_tuned_model, temperature: 0, max_tokens: 100, messages: [{ role: "user", content: "Who wrote Hamlet?" }],
  response_format: { type: "json_schema", json_schema: { name: "verdict", strict: true, schema } },
});
const parsed = structured.choices[0].message.parsed;
assert.equal(structured.choices[0].finish_reason, "stop");
assert.deepEqual(Object.keys(parsed), ["answer", "confidence"]);
assert.ok(["yes", "no"].includes(parsed.answer));
assert.ok(Number.isInteger(parsed.confidence));
await assert.rejects(client.chat.completions.create({
  model: "tiny-llama-demo", messages: [{ role: "user", content: "Hi" }],
  response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "string", pattern: "^a" } } },
}), (e) => e.status === 400 && e.error?.param === "response_format" && e.error.message.includes("'pattern'"));

await client.models.delete(finished.fine_tuned_model);
await assert.rejects(client.models.retrieve(finished.fine_tuned_model), (e) => e.status === 404);
await assert.rejects(client.fineTuning.jobs.retrieve("ftjob-missing"), (e) => e.status === 404 && e.error?.param === "id");

console.log("openai client: every call succeeded");
