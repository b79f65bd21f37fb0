// @ts-check
// The service's public REST API, as any client sees it: the dashboard has no private endpoints.

/** An OpenAI error object ({"error": {"message", "type", "param", "code"}}) or a failed request. */
export class ApiError extends Error {
  /** @param {string} message @param {number} status @param {string | null} param @param {string | null} code */
  constructor(message, status, param = null, code = null) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
  }
}

const keyStorage = "adapter-service-api-key";

/** The API key the user entered (kept in this browser's localStorage); empty when the service runs without auth. */
export function apiKey() { return localStorage.getItem(keyStorage) ?? ""; }

/** @param {string} key */
export function setApiKey(key) {
  if (key) localStorage.setItem(keyStorage, key);
  else localStorage.removeItem(keyStorage);
}

/** @returns {Record<string, string>} */
function authorization() { return apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {}; }

/**
 * @param {string} path
 * @param {{ method?: string, json?: unknown, form?: FormData, signal?: AbortSignal }} [options]
 * @returns {Promise<any>}
 */
export async function api(path, { method = "GET", json, form, signal } = {}) {
  /** @type {RequestInit} */
  const init = { method, signal, headers: { Accept: "application/json", ...authorization() } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers = { ...init.headers, "Content-Type": "application/json" };
  } else if (form) {
    init.body = form;
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** @param {Response} response */
async function errorOf(response) {
  let error = null;
  try { error = (await response.json())?.error; } catch { /* not JSON */ }
  return new ApiError(error?.message ?? `${response.status} ${response.statusText}`, response.status, error?.param ?? null, error?.code ?? null);
}

/**
 * @typedef {{ id: string, status: string, model: string, fine_tuned_model: string | null, created_at: number,
 *   finished_at: number | null, estimated_finish: number | null, error: { message: string } | null, seed: number,
 *   suffix: string | null, training_file: string, validation_file: string | null, trained_tokens: number | null,
 *   hyperparameters: { n_epochs: number, batch_size: number, learning_rate_multiplier: number, early_stopping_patience: number | null },
 *   adapter: { type: string, rank: number, alpha: number, dropout: number, target_modules: string[] },
 *   training_file_tokens: number, estimated_trained_tokens: number, method: { type: string, [section: string]: any },
 *   chat_template: string | null, sweep?: Sweep }} Job
 * @typedef {{ member: number, hyperparameters: Record<string, number>, checkpoint: string | null, step: number | null,
 *   train_loss: number | null, valid_loss: number | null, [field: string]: unknown }} SweepMember
 *   a sweep member and its newest checkpoint's losses; fields beyond these (eval scores, say) are shown by name
 * @typedef {{ parameter: string, values: number[], best_member: number | null, members: SweepMember[], scored_by?: string,
 *   eval_id?: string }} Sweep
 *   a sweep job's members (docs/API.md "Sweeps"); best_member is null until the job succeeded; scored_by is "valid_loss"
 *   (lowest wins) or "eval_{criterion}" (highest wins, the eval eval_id's)
 * @typedef {{ id: string, created_at: number, level: string, message: string, type: string, data: any }} JobEvent
 * @typedef {{ id: string, parent: string | null, description: string | null }} Model
 */

/**
 * The models that write text, base models first, then fine-tuned ones; image classifiers (ViT bases and their
 * adapters) answer /v1/classify, not chat, so they are left out. @returns {Promise<{ bases: Model[], fineTuned: Model[] }>}
 */
export async function listModels() {
  /** @type {Model[]} */
  const models = (await api("/v1/models")).data;
  /** @type {{ id: string, family: string }[]} */
  const bases = (await api("/v1/base_models")).data;
  const images = new Set(bases.filter((b) => b.family === "vit").map((b) => b.id));
  const text = models.filter((m) => !images.has(m.parent ?? m.id));
  return { bases: text.filter((m) => !m.parent), fineTuned: text.filter((m) => m.parent) };
}

/**
 * Streams a chat completion (server-sent events of chat.completion.chunk objects, then [DONE]).
 * @param {object} request the body, without "stream"
 * @param {(chunk: any) => void} onChunk called with every parsed chunk
 * @param {AbortSignal} signal
 */
export const streamChat = (request, onChunk, signal) => streamEvents("/v1/chat/completions", request, onChunk, signal);

/**
 * Streams a text completion (text_completion chunks, then [DONE]): for bases without a chat template.
 * @param {object} request the body, without "stream" @param {(chunk: any) => void} onChunk @param {AbortSignal} signal
 */
export const streamCompletion = (request, onChunk, signal) => streamEvents("/v1/completions", request, onChunk, signal);

/** @param {string} path @param {object} request @param {(chunk: any) => void} onChunk @param {AbortSignal} signal */
async function streamEvents(path, request, onChunk, signal) {
  const response = await fetch(path, {
    method: "POST", signal,
    headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authorization() },
    body: JSON.stringify({ ...request, stream: true }),
  });
  if (!response.ok || !response.body) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      onChunk(JSON.parse(data));
    }
  }
}
