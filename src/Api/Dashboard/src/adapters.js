// @ts-check
// Stored adapters (GET /v1/adapters): what they are, export as a PEFT zip, delete.
import { api } from "./api.js";
import { formatBytes, formatNumber, h, replace, toast } from "./dom.js";

/** @param {HTMLElement} main */
export function adaptersView(main) {
  const body = h("tbody");
  replace(main,
    h("div", { class: "page-head" }, h("h1", { tabindex: -1 }, "Adapters")),
    h("p", { class: "lead" }, "Every adapter is served by name on its base model, which stays loaded once for all of them."),
    h("div", { class: "table-wrap" },
      h("table", { id: "adapters" },
        h("caption", { class: "visually-hidden" }, "Stored adapters, newest first"),
        h("thead", null, h("tr", null, ...["Model name", "Method", "Base model", "Parameters", "Size", "Created", "Actions"]
          .map((c) => h("th", { scope: "col" }, c)))),
        body)));

  async function load() {
    try {
      const adapters = (await api("/v1/adapters")).data;
      if (!adapters.length) {
        replace(body, h("tr", null, h("td", { colspan: 7, class: "empty" }, "No adapters yet: a job that succeeds stores one.")));
        return;
      }
      replace(body, ...adapters.map((/** @type {any} */ a) => h("tr", { "data-adapter": a.id },
        h("th", { scope: "row", class: "adapter-name" }, h("code", { class: "model-name" }, a.model), h("br"),
          h("span", { class: "hint" }, a.fine_tuning_job ? ["from ", h("a", { href: `#/jobs/${a.fine_tuning_job}` }, a.fine_tuning_job)] : "imported")),
        h("td", null, describe(a)),
        h("td", null, a.base_model),
        h("td", { class: "number" }, formatNumber(a.parameter_count)),
        h("td", { class: "number" }, formatBytes(a.size_bytes)),
        h("td", null, new Date(a.created_at * 1000).toLocaleDateString()),
        h("td", { class: "row-actions" }, h("div", { class: "actions" },
          h("a", { class: "button secondary", href: `/v1/adapters/${a.id}/export`, download: `${a.id}.zip`, "aria-label": `Export ${a.model} as a PEFT zip` }, "Export"),
          h("a", { class: "button secondary", href: `#/playground?model=${encodeURIComponent(a.model)}`, "aria-label": `Try ${a.model} in the playground` }, "Try"),
          h("button", { type: "button", class: "danger", "aria-label": `Delete ${a.model}`, onclick: () => remove(a) }, "Delete"))))));
    } catch (e) {
      replace(body, h("tr", null, h("td", { colspan: 7, class: "error" }, `Could not load the adapters: ${/** @type {Error} */ (e).message}`)));
    }
  }

  /** @param {any} adapter */
  async function remove(adapter) {
    if (!confirm(`Delete ${adapter.model}? Its weights are removed and the name stops serving.`)) return;
    try {
      await api(`/v1/adapters/${adapter.id}`, { method: "DELETE" });
      toast(`Deleted ${adapter.model}`);
      await load();
    } catch (e) {
      toast(`Could not delete: ${/** @type {Error} */ (e).message}`, "error");
    }
  }

  load();
  return () => {};
}

/** The method and its options from the adapter's config (PEFT's names: r, lora_alpha, ...). @param {any} a */
function describe(a) {
  const c = a.config ?? {};
  const rank = c.r ?? c.rank, alpha = c.lora_alpha ?? c.alpha;
  return `${String(a.method).toUpperCase()}${rank !== undefined ? ` r=${rank}` : ""}${alpha !== undefined ? `, α=${alpha}` : ""}`;
}
