// @ts-check
// Playground: one prompt to one model, or to two side by side, each answer streamed as it is generated. Chat mode
// sends messages (/v1/chat/completions); completion mode sends the text as it is (/v1/completions), for bases without
// a chat template, which the page notices when a model is chosen.
import { api, ApiError, listModels, streamChat, streamCompletion } from "./api.js";
import { byId, h, replace } from "./dom.js";

/** @param {HTMLElement} main @param {URLSearchParams} query */
export function playgroundView(main, query) {
  /** @type {AbortController | null} */
  let running = null;
  const modelSelect = (/** @type {string} */ id, /** @type {string} */ label) =>
    h("div", { class: "field" }, h("label", { for: id }, label), h("select", { id }, h("option", { value: "" }, "Loading models…")));

  const form = h("form", { id: "playground-form", class: "card form" },
    h("div", { class: "row" },
      modelSelect("model-a", "Model"),
      h("div", { class: "field", id: "model-b-field", hidden: true }, h("label", { for: "model-b" }, "Second model"), h("select", { id: "model-b" }))),
    h("label", { class: "inline" }, h("input", { type: "checkbox", id: "compare" }), " Compare two models side by side"),
    h("fieldset", { class: "mode" }, h("legend", null, "Mode"),
      h("label", { class: "inline" }, h("input", { type: "radio", name: "mode", value: "chat", id: "mode-chat", checked: true }), " Chat"),
      h("label", { class: "inline" }, h("input", { type: "radio", name: "mode", value: "completion", id: "mode-completion" }), " Completion (the text as it is, no chat template)"),
      h("p", { class: "hint", id: "mode-hint", role: "status" })),
    h("div", { class: "field", id: "system-field" }, h("label", { for: "system-prompt" }, "System message (optional)"), h("textarea", { id: "system-prompt", rows: 2 })),
    h("div", { class: "field" }, h("label", { for: "prompt", id: "prompt-label" }, "Message"),
      h("textarea", { id: "prompt", rows: 4, required: true, "aria-describedby": "prompt-hint" }),
      h("p", { class: "hint", id: "prompt-hint" }, "Ctrl+Enter sends.")),
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { for: "temperature" }, "Temperature"), h("input", { type: "number", id: "temperature", min: 0, max: 2, step: 0.1, value: 0 })),
      h("div", { class: "field" }, h("label", { for: "max-tokens" }, "Max tokens"), h("input", { type: "number", id: "max-tokens", min: 1, max: 512, step: 1, value: 64 })),
      h("div", { class: "field" }, h("label", { for: "top-p" }, "Top p"), h("input", { type: "number", id: "top-p", min: 0.01, max: 1, step: "any", value: 1 }))),
    h("div", { class: "actions" },
      h("button", { type: "submit", id: "send" }, "Send"),
      h("button", { type: "button", id: "stop", class: "secondary", disabled: true, onclick: () => running?.abort() }, "Stop")));

  const answers = h("div", { id: "answers", class: "answers" });
  replace(main, h("div", { class: "page-head" }, h("h1", { tabindex: -1 }, "Playground")), form, answers);

  const compare = /** @type {HTMLInputElement} */ (byId("compare"));
  compare.addEventListener("change", () => { byId("model-b-field").hidden = !compare.checked; });
  byId("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  const completionMode = () => /** @type {HTMLInputElement} */ (byId("mode-completion")).checked;
  const showMode = () => {
    byId("system-field").hidden = completionMode();
    byId("prompt-label").textContent = completionMode() ? "Prompt" : "Message";
  };
  for (const id of ["mode-chat", "mode-completion"]) byId(id).addEventListener("change", showMode);

  /**
   * Whether the first model can chat: /tokenize renders a one-message chat with its template, and refuses when it has
   * none (or its tokenizer cannot write a template's special tokens). Such a model is switched to completion mode.
   */
  async function checkTemplate() {
    const model = /** @type {HTMLSelectElement} */ (byId("model-a")).value;
    if (!model) return;
    const hint = byId("mode-hint");
    try {
      await api("/tokenize", { method: "POST", json: { model, messages: [{ role: "user", content: "Hi" }] } });
      hint.textContent = "";
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 400 || !/use completions/.test(e.message)) return;
      /** @type {HTMLInputElement} */ (byId("mode-completion")).checked = true;
      hint.textContent = `${model} has no chat template: completion mode sends the prompt as it is.`;
      showMode();
    }
  }
  byId("model-a").addEventListener("change", checkTemplate);

  (async () => {
    try {
      const { bases, fineTuned } = await listModels();
      const wanted = query.get("model");
      const options = () => [
        h("optgroup", { label: "Base models" }, ...bases.map((m) => h("option", { value: m.id }, m.id))),
        fineTuned.length ? h("optgroup", { label: "Fine-tuned models" }, ...fineTuned.map((m) => h("option", { value: m.id }, m.id))) : null,
        // A checkpoint is not listed by /v1/models, but serves all the same.
        wanted && ![...bases, ...fineTuned].some((m) => m.id === wanted) ? h("option", { value: wanted }, wanted) : null,
      ];
      const [a, b] = [byId("model-a"), byId("model-b")].map((s) => /** @type {HTMLSelectElement} */ (s));
      replace(a, options());
      replace(b, options());
      if (wanted) a.value = wanted;
      else if (fineTuned.length) a.value = fineTuned[fineTuned.length - 1].id;
      b.value = bases[0]?.id ?? "";
      checkTemplate();
    } catch (e) {
      replace(answers, h("p", { class: "error", role: "alert" }, `Could not load the models: ${/** @type {Error} */ (e).message}`));
    }
  })();

  async function send() {
    const prompt = /** @type {HTMLTextAreaElement} */ (byId("prompt")).value;
    if (!prompt.trim()) { byId("prompt").focus(); return; }
    running?.abort();
    const controller = running = new AbortController();
    const models = [/** @type {HTMLSelectElement} */ (byId("model-a")).value];
    if (compare.checked) models.push(/** @type {HTMLSelectElement} */ (byId("model-b")).value);
    const system = /** @type {HTMLTextAreaElement} */ (byId("system-prompt")).value.trim();
    const number = (/** @type {string} */ id) => Number(/** @type {HTMLInputElement} */ (byId(id)).value);
    const completion = completionMode();
    const settings = { temperature: number("temperature"), max_tokens: number("max-tokens"), top_p: number("top-p") };
    const request = completion
      ? { prompt, ...settings, stream_options: { include_usage: true } }
      : { messages: [...(system ? [{ role: "system", content: system }] : []), { role: "user", content: prompt }], ...settings };
    answers.classList.toggle("two", models.length === 2);
    const panes = models.map((model, i) => answerPane(model, i));
    replace(answers, ...panes.map((p) => p.element));
    (/** @type {HTMLButtonElement} */ (byId("stop"))).disabled = false;
    await Promise.all(panes.map((pane) => pane.run({ ...request, model: pane.model }, completion, controller.signal)));
    if (running === controller) {
      running = null;
      const stop = document.getElementById("stop");
      if (stop) /** @type {HTMLButtonElement} */ (stop).disabled = true;
    }
  }

  return () => running?.abort();
}

/** One model's answer, filled in chunk by chunk. @param {string} model @param {number} index */
function answerPane(model, index) {
  const text = h("div", { class: "answer-text", id: `answer-${index}`, "aria-live": "polite", "aria-busy": "true" });
  const footer = h("p", { class: "answer-meta", id: `answer-${index}-meta` }, "Waiting for the first token…");
  const element = h("section", { class: "card answer", "aria-label": `Answer from ${model}`, "data-model": model },
    h("h2", null, h("code", { class: "model-name" }, model)), text, footer);
  return {
    model, element,
    /** @param {object} request @param {boolean} completion @param {AbortSignal} signal */
    async run(request, completion, signal) {
      const started = performance.now();
      let tokens = 0;
      /** @type {string | null} */
      let finish = null;
      element.dataset.mode = completion ? "completion" : "chat";
      try {
        await (completion ? streamCompletion : streamChat)(request, (chunk) => {
          const choice = chunk.choices?.[0];
          const piece = completion ? choice?.text : choice?.delta?.content;
          if (piece) {
            text.textContent += piece;
            footer.textContent = "Streaming…";
          }
          if (chunk.usage) tokens = chunk.usage.completion_tokens;
          if (choice?.finish_reason) finish = choice.finish_reason;
        }, signal);
        // The usage may come in a chunk of its own after the finish reason (stream_options.include_usage).
        if (finish) {
          const seconds = (performance.now() - started) / 1000;
          footer.textContent = `Finished (${finish}): ${tokens} tokens in ${seconds.toFixed(1)} s`;
          element.dataset.finish = finish;
        }
      } catch (e) {
        const error = /** @type {Error} */ (e);
        footer.textContent = error.name === "AbortError" ? "Stopped." : `Error: ${error.message}`;
        footer.classList.toggle("error", error.name !== "AbortError");
      } finally {
        text.setAttribute("aria-busy", "false");
      }
    },
  };
}
