// What the npm-client tests of this service share: the official client for the service under test, waiting for a job
// to end, and uploading JSONL lines written into the test's work folder.
import fs from "node:fs";
import path from "node:path";
import OpenAI from "openai";

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The client for the service at baseURL (no retries: a refusal must show as one) and helpers writing under folder. */
export function connect(baseURL, folder) {
  const client = new OpenAI({ baseURL, apiKey: "sk-local-test", maxRetries: 0 });

  /** The job once it has ended (succeeded, failed or cancelled), polled every 100 ms for at most five minutes. */
  async function waitFor(jobId) {
    for (let i = 0; i < 3000; i++) {
      const job = await client.fineTuning.jobs.retrieve(jobId);
      if (["succeeded", "failed", "cancelled"].includes(job.status)) return job;
      await sleep(100);
    }
    throw new Error(`job ${jobId} did not finish`);
  }

  /** Writes lines (objects as JSON, strings as they are) to folder/name and uploads it for fine-tuning: the file object. */
  async function upload(name, lines) {
    const file = path.join(folder, name);
    fs.writeFileSync(file, lines.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n") + "\n");
    return client.files.create({ file: fs.createReadStream(file), purpose: "fine-tune" });
  }

  return { client, waitFor, upload };
}
