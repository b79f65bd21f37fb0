// @ts-check
// The "new job" form: uploads the files (POST /v1/files), previews the training data with the chosen base model
// (POST /v1/files/{id}/preview), then creates the job (POST /v1/fine_tuning/jobs).
import { api, ApiError, listModels } from "./api.js";
import { byId, formatBytes, formatTime, h, replace } from "./dom.js";

/** Which form field an error's "param" points at (its last segment, e.g. "hyperparameters.n_epochs"). */
const fieldOfParam = {
  training_file: "training-file", validation_file: "validation-file", model: "base-model", suffix: "suffix", seed: "seed",
  n_epochs: "n-epochs", batch_size: "batch-size", learning_rate_multiplier: "lr-multiplier", early_stopping_patience: "early-stopping",
  rank: "rank", alpha: "alpha", dropout: "dropout", target_modules: "target-modules", type: "method",
};

/**
 * A labelled field with an optional hint, wired with aria-describedby.
 * @param {string} id @param {string} label @param {HTMLElement} control @param {string} [hint]
 */
function field(id, label, control, hint) {
  control.id = id;
  if (hint) control.setAttribute("aria-describedby", `${id}-hint`);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null);
}

/** @param {Record<string, any>} attributes */
const input = (attributes) => h("input", attributes);

/** @param {HTMLElement} main */
export function newJobView(main) {
  const form = h("form", { id: "new-job", class: "card form", novalidate: true },
    h("fieldset", null, h("legend", null, "Data"),
      field("training-file", "Training file (JSONL)", input({ type: "file", accept: ".jsonl,.json,.txt" }),
        "Chat ({\"messages\": [...]}) or prompt/completion lines; at least 10 examples."),
      field("training-existing", "…or a file already uploaded", h("select", null, h("option", { value: "" }, "— upload the file above —"))),
      field("validation-file", "Validation file (optional)", input({ type: "file", accept: ".jsonl,.json,.txt" }),
        "Its loss is measured at the end of every epoch."),
      field("validation-existing", "…or a file already uploaded", h("select", null, h("option", { value: "" }, "— none, or the file above —")))),
    h("fieldset", null, h("legend", null, "Model and method"),
      field("base-model", "Base model", h("select", { required: true })),
      field("method", "Method", h("select", null, h("option", { value: "lora" }, "LoRA")),
        "Lily, RLRR, MixLoRA and DoRA are planned."),
      h("div", { class: "row" },
        field("rank", "Rank r", input({ type: "number", min: 1, max: 256, step: 1, value: 8, required: true })),
        field("alpha", "Alpha", input({ type: "number", min: 0, step: "any", placeholder: "2 × rank" }), "Scales the update by alpha / r."),
        field("dropout", "Dropout", input({ type: "number", min: 0, max: 0.99, step: 0.01, value: 0 }))),
      field("target-modules", "Target modules", input({ type: "text", value: "all-linear", spellcheck: false, autocomplete: "off" }),
        "all-linear, module names separated by commas (q_proj, v_proj), or one regular expression over module paths.")),
    h("fieldset", null, h("legend", null, "Hyperparameters"),
      h("div", { class: "row" },
        field("n-epochs", "Epochs", input({ type: "number", min: 1, max: 50, step: 1, placeholder: "auto" })),
        field("batch-size", "Batch size", input({ type: "number", min: 1, max: 256, step: 1, placeholder: "auto" })),
        field("lr-multiplier", "Learning rate multiplier", input({ type: "number", min: 0, max: 50, step: "any", placeholder: "auto" }))),
      h("div", { class: "row" },
        field("early-stopping", "Early stopping patience", input({ type: "number", min: 1, max: 50, step: 1, placeholder: "off" }),
          "Epochs without a new best validation loss; needs a validation file."),
        field("suffix", "Suffix", input({ type: "text", maxlength: 64, pattern: "[A-Za-z0-9_-]{1,64}", spellcheck: false, autocomplete: "off" }),
          "Part of the model's name: ft:base:suffix:job."),
        field("seed", "Seed", input({ type: "number", min: 0, max: 2147483647, step: 1, placeholder: "random" })))),
    h("section", { class: "preview-box", "aria-labelledby": "preview-title" },
      h("div", { class: "section-head" },
        h("h2", { id: "preview-title" }, "Data preview"),
        h("button", { type: "button", id: "preview-data", class: "secondary", onclick: () => preview() }, "Preview the training data")),
      h("p", { class: "hint" }, "The first examples as the base model will see them, rendered with its chat template; the trained part is highlighted."),
      h("div", { id: "data-preview", "aria-live": "polite" })),
    h("details", { class: "request" }, h("summary", null, "The API request this form sends"), h("pre", null, h("code", { id: "request-preview" }))),
    h("p", { id: "form-error", class: "error", role: "alert", hidden: true }),
    h("div", { class: "actions" },
      h("button", { type: "submit", id: "submit-job" }, "Start fine-tuning"),
      h("span", { id: "form-progress", role: "status" })));

  replace(main, h("div", { class: "page-head" }, h("h1", { tabindex: -1 }, "New fine-tuning job")), form);
  form.addEventListener("input", () => { byId("request-preview").textContent = JSON.stringify(jobRequest("file-…", null), null, 2); });
  form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  loadChoices();
  byId("request-preview").textContent = JSON.stringify(jobRequest("file-…", null), null, 2);
}

async function loadChoices() {
  try {
    const [{ bases }, files] = await Promise.all([listModels(), api("/v1/files?purpose=fine-tune&limit=100")]);
    replace(byId("base-model"), ...bases.map((m) => h("option", { value: m.id, title: m.description ?? "" }, m.id)));
    for (const id of ["training-existing", "validation-existing"]) {
      const select = byId(id);
      select.append(...files.data.map((/** @type {any} */ f) =>
        h("option", { value: f.id }, `${f.filename} (${formatBytes(f.bytes)}, ${formatTime(f.created_at)})`)));
    }
    byId("new-job").dispatchEvent(new Event("input"));
  } catch (e) {
    showError(`Could not load models and files: ${/** @type {Error} */ (e).message}`);
  }
}

/** @param {string} id */
const value = (id) => /** @type {HTMLInputElement} */ (byId(id)).value.trim();
/** @param {string} id @returns {number | undefined} */
const number = (id) => (value(id) === "" ? undefined : Number(value(id)));

/** "all-linear", a list of names, or a regular expression (anything with characters outside names and dots). @param {string} text */
function targetModules(text) {
  if (!text || text === "all-linear") return "all-linear";
  if (text.includes(",")) return text.split(",").map((s) => s.trim()).filter(Boolean);
  return /^[A-Za-z0-9_.]+$/.test(text) ? [text] : text;
}

/** @param {string} trainingFile @param {string | null} validationFile */
function jobRequest(trainingFile, validationFile) {
  const patience = number("early-stopping");
  return {
    model: value("base-model"),
    training_file: trainingFile,
    validation_file: validationFile ?? undefined,
    suffix: value("suffix") || undefined,
    seed: number("seed"),
    hyperparameters: {
      n_epochs: number("n-epochs") ?? "auto",
      batch_size: number("batch-size") ?? "auto",
      learning_rate_multiplier: number("lr-multiplier") ?? "auto",
      ...(patience !== undefined ? { early_stopping_patience: patience } : {}),
    },
    adapter: {
      type: value("method"), rank: number("rank"), alpha: number("alpha"), dropout: number("dropout"),
      target_modules: targetModules(value("target-modules")),
    },
  };
}

/** Files of this page already uploaded (by a preview), so the job reuses them. @type {WeakMap<File, string>} */
const uploaded = new WeakMap();

/** Uploads the chosen file, or returns the id of the one picked from the list. @param {string} inputId @param {string} selectId */
async function fileId(inputId, selectId) {
  const file = /** @type {HTMLInputElement} */ (byId(inputId)).files?.[0];
  if (!file) return value(selectId) || null;
  const known = uploaded.get(file);
  if (known) return known;
  byId("form-progress").textContent = `Uploading ${file.name}…`;
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file);
  try {
    const id = (await api("/v1/files", { method: "POST", form })).id;
    uploaded.set(file, id);
    return id;
  } catch (e) {
    if (e instanceof ApiError) e.param = inputId === "training-file" ? "training_file" : "validation_file";
    throw e;
  }
}

async function submit() {
  const button = /** @type {HTMLButtonElement} */ (byId("submit-job"));
  button.disabled = true;
  showError(null);
  try {
    const training = await fileId("training-file", "training-existing");
    if (!training) throw new ApiError("Choose a training file to upload, or one already uploaded.", 400, "training_file");
    const validation = await fileId("validation-file", "validation-existing");
    byId("form-progress").textContent = "Creating the job…";
    const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: jobRequest(training, validation) });
    location.hash = `#/jobs/${job.id}`;
  } catch (e) {
    const error = /** @type {ApiError} */ (e);
    showError(error.message, error.param);
  } finally {
    button.disabled = false;
    const progress = document.getElementById("form-progress");   // gone once the job page shows
    if (progress) progress.textContent = "";
  }
}

/** @param {string | null} message @param {string | null} [param] */
function showError(message, param = null) {
  const box = byId("form-error");
  box.hidden = !message;
  box.textContent = message ?? "";
  for (const el of document.querySelectorAll("#new-job [aria-invalid]")) el.removeAttribute("aria-invalid");
  const key = /** @type {keyof typeof fieldOfParam} */ (param?.split(".").pop()?.replace(/\[\d+\]$/, ""));
  const id = key && fieldOfParam[key];
  if (id) {
    const control = byId(id);
    control.setAttribute("aria-invalid", "true");
    control.focus();
  }
}

/** Asks the API how the training file looks to the chosen base model, and shows it. */
async function preview() {
  const button = /** @type {HTMLButtonElement} */ (byId("preview-data"));
  const box = byId("data-preview");
  button.disabled = true;
  showError(null);
  try {
    const training = await fileId("training-file", "training-existing");
    if (!training) throw new ApiError("Choose a training file to upload, or one already uploaded.", 400, "training_file");
    replace(box, h("p", { class: "hint" }, "Reading the file…"));
    const result = await api(`/v1/files/${training}/preview`, { method: "POST", json: { model: value("base-model"), max_examples: 3 } });
    replace(box, ...renderPreview(result));
  } catch (e) {
    const error = /** @type {ApiError} */ (e);
    replace(box);
    showError(error.message, error.param === "id" ? "training_file" : error.param);
  } finally {
    button.disabled = false;
    const progress = document.getElementById("form-progress");
    if (progress) progress.textContent = "";
  }
}

/**
 * A bar chart as a table: one row per bin or label, its count and a bar (the numbers stay readable without the bars).
 * @param {string} id @param {string} caption @param {string} head @param {[string, number, string?][]} rows label, count, a note
 */
function barTable(id, caption, head, rows) {
  const most = Math.max(1, ...rows.map(([, n]) => n));
  return h("table", { id, class: "bars" },
    h("caption", null, caption),
    h("thead", null, h("tr", null, h("th", { scope: "col" }, head), h("th", { scope: "col" }, "Examples"), h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Bar")))),
    h("tbody", null, ...rows.map(([label, n, note]) => h("tr", { class: note ? "over" : null }, h("th", { scope: "row" }, label, note ? h("span", { class: "hint" }, ` ${note}`) : null),
      h("td", { class: "number" }, n),
      h("td", { class: "bar-cell" }, n ? h("span", { class: "bar", style: `width: ${(100 * n / most).toFixed(1)}%` }) : null)))));
}

/** @param {any} p the preview's answer @returns {HTMLElement[]} */
function renderPreview(p) {
  const out = [];
  if (p.label_counts) {
    out.push(h("p", { id: "preview-summary" }, `${p.examples} labelled images, ${Object.keys(p.label_counts).length} labels.`));
    out.push(barTable("label-counts", "Images per label", "Label", Object.entries(p.label_counts)));
    out.push(h("ol", { class: "preview-examples" }, ...p.data.map((/** @type {any} */ e) =>
      h("li", { "data-line": e.line }, `Line ${e.line}: “${e.label}”, ${e.image_size.replace("x", "×")} pixels`))));
    return out;
  }
  const counts = p.token_counts;
  out.push(h("p", { id: "preview-summary" },
    `${p.examples} examples (${p.format.replace("_", "/")}); `,
    counts ? `${counts.min}–${counts.max} tokens each, ${counts.mean} on average` : "", counts && counts.counted < p.examples ? ` (of the first ${counts.counted})` : "", ". ",
    h("strong", { id: "preview-truncated", "data-count": p.truncated, class: p.truncated ? "warn-text" : null },
      p.truncated ? `${p.truncated} longer than the context of ${p.context_length} tokens would be cut` : `None is longer than the context of ${p.context_length} tokens`),
    p.truncated ? ` (line${p.truncated > 1 ? "s" : ""} ${p.truncated_lines.join(", ")}${p.truncated > p.truncated_lines.length ? ", …" : ""}).` : "."));
  if (counts) out.push(barTable("token-histogram", "Tokens per example", "Tokens", counts.histogram.map((/** @type {any} */ b) =>
    /** @type {[string, number, string?]} */ ([`${b.from}–${b.to}`, b.count, b.to > p.context_length ? (b.from >= p.context_length ? "cut" : "partly cut") : undefined]))));
  const sideNames = p.format === "preference" ? ["Chosen", "Rejected"] : [];
  out.push(h("div", { class: "preview-examples" }, ...p.data.map((/** @type {any} */ e) => h("article", { class: "preview-example", "data-line": e.line },
    h("h3", null, `Line ${e.line}`),
    ...e.sequences.map((/** @type {any} */ s, /** @type {number} */ i) => h("div", null,
      h("p", { class: "hint" }, sideNames[i] ? `${sideNames[i]}: ` : "", `${s.tokens} tokens, ${s.trained_tokens} trained`, s.truncated ? ", cut to the context" : ""),
      h("pre", { class: "rendered" }, ...s.segments.map((/** @type {any} */ g) => g.trained ? h("mark", { class: "trained", title: "trained on" }, g.text) : g.text))))))));
  return out;
}
