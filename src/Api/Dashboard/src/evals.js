// @ts-check
// Evals (#/evals): the project's evals; one eval's runs compared per testing criterion (#/evals/{id}), one row per
// model, the best of each column in bold; one run's first output items with the model's sample and grades
// (#/evals/{id}/runs/{run_id}). Everything is read from the public Evals API (docs/API.md "Evals").
import { api } from "./api.js";
import { byId, formatTime, h, replace, statusBadge } from "./dom.js";

/**
 * @typedef {{ testing_criteria: string, passed: number, failed: number, mean_score?: number | null }} CriterionResult
 * @typedef {{ id: string, eval_id: string, name: string, model: string, status: string, created_at: number,
 *   result_counts: { total: number, errored: number, failed: number, passed: number },
 *   per_testing_criteria_results: CriterionResult[] | null, fine_tuning_job_id: string | null,
 *   metadata: Record<string, string> | null, error: { message: string } | null }} EvalRun
 * @typedef {{ id: string, name: string, created_at: number, testing_criteria: { name: string, type: string }[] }} Eval
 */

const runFinished = (/** @type {string} */ status) => ["completed", "failed", "canceled"].includes(status);

/** "3/6 (50 %)" @param {number} passed @param {number} total */
const formatPassed = (passed, total) => total ? `${passed}/${total} (${Math.round((100 * passed) / total)} %)` : "—";

/** @param {HTMLElement} main */
export function evalListView(main) {
  replace(main,
    h("div", { class: "page-head" }, h("h1", { tabindex: -1 }, "Evals")),
    h("p", { class: "hint" }, "Evals are created through the API (POST /v1/evals); a run scores one model, or several at once, on the eval's items."),
    h("div", { id: "evals", class: "table-wrap" }, "Loading the evals…"));
  (async () => {
    try {
      /** @type {Eval[]} */
      const evals = (await api("/v1/evals?limit=100&order=desc")).data;
      if (!evals.length) { replace(byId("evals"), h("p", { class: "empty" }, "No evals yet.")); return; }
      replace(byId("evals"), h("table", null,
        h("caption", { class: "visually-hidden" }, "Evals"),
        h("thead", null, h("tr", null, ...["Name", "ID", "Testing criteria", "Created"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", null, ...evals.map((e) => h("tr", { "data-eval": e.id },
          h("td", null, h("a", { href: `#/evals/${e.id}` }, e.name || e.id)),
          h("td", null, h("code", null, e.id)),
          h("td", null, e.testing_criteria.map((c) => `${c.name} (${c.type})`).join(", ")),
          h("td", null, formatTime(e.created_at)))))));
    } catch (e) {
      replace(byId("evals"), h("p", { class: "error" }, `Could not load the evals: ${/** @type {Error} */ (e).message}`));
    }
  })();
}

/** What a run scored: its model, or the checkpoint and job it scored. @param {EvalRun} run */
function runLabel(run) {
  const step = run.metadata?.step;
  return [h("code", { class: "model-name" }, run.model),
    run.fine_tuning_job_id ? h("span", { class: "hint" }, " at checkpoint ", step ? `step ${step} of ` : "of ",
      h("a", { href: `#/jobs/${run.fine_tuning_job_id}` }, run.fine_tuning_job_id)) : null];
}

/** @param {HTMLElement} main @param {string} evalId */
export function evalView(main, evalId) {
  replace(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/evals" }, "Evals"), " / ", h("code", null, evalId)),
    h("div", { class: "page-head" }, h("h1", { tabindex: -1, id: "eval-title" }, "Eval")),
    h("section", { class: "card", "aria-labelledby": "eval-runs-title" },
      h("h2", { id: "eval-runs-title" }, "Runs compared"),
      h("p", { class: "hint" }, "Per criterion: items passed of those graded, and the mean grade. The best of each column (pass rate, then mean grade) is in bold."),
      h("div", { id: "eval-runs", class: "table-wrap" }, "Loading the runs…")));
  /** @type {Eval | null} */
  let evalObject = null;
  /** @type {EvalRun[]} */
  let runs = [];
  let disposed = false;

  async function refresh() {
    try {
      evalObject ??= await api(`/v1/evals/${evalId}`);
      /** @type {EvalRun[]} */
      const all = [];
      let after = "";
      for (;;) {
        const page = await api(`/v1/evals/${evalId}/runs?limit=100${after}`);
        all.push(...page.data);
        if (!page.has_more || !page.data.length) break;
        after = `&after=${page.data[page.data.length - 1].id}`;
      }
      runs = all;
      if (!disposed) render();
    } catch (e) {
      if (!disposed) replace(byId("eval-runs"), h("p", { class: "error" }, `Could not load the eval: ${/** @type {Error} */ (e).message}`));
    }
  }

  function render() {
    const ev = /** @type {Eval} */ (evalObject);
    replace(byId("eval-title"), ev.name || ev.id);
    if (!runs.length) { replace(byId("eval-runs"), h("p", { class: "empty" }, "No runs yet: POST /v1/evals/{id}/runs scores a model.")); return; }
    const criteria = ev.testing_criteria.map((c) => c.name);
    /** One figure per column: a run's value (null when it has none), best is the highest. @type {[string, (r: EvalRun) => { text: string, mean: number | null, value: number | null, data: Record<string, number> } ][]} */
    const columns = [
      ["All criteria", (r) => ({
        text: formatPassed(r.result_counts.passed, r.result_counts.total), mean: null,
        value: r.result_counts.total ? r.result_counts.passed / r.result_counts.total : null,
        data: { passed: r.result_counts.passed, total: r.result_counts.total, errored: r.result_counts.errored },
      })],
      ...criteria.map((name) => /** @type {[string, (r: EvalRun) => { text: string, mean: number | null, value: number | null, data: Record<string, number> }]} */ ([name, (r) => {
        const c = r.per_testing_criteria_results?.find((x) => x.testing_criteria === name);
        if (!c) return { text: "—", mean: null, value: null, data: {} };
        const total = c.passed + c.failed;
        const mean = c.mean_score ?? null;
        return {
          text: formatPassed(c.passed, total), mean,
          value: total ? c.passed / total : null,
          data: { passed: c.passed, total, ...(mean === null ? {} : { mean }) },
        };
      }])),
    ];
    const cells = runs.map((r) => columns.map(([, get]) => get(r)));
    // The best of a column: the highest pass rate, ties broken by the mean grade; none when every run scored the same.
    const key = (/** @type {{ value: number | null, data: Record<string, number> }} */ cell) => cell.value === null ? null : [cell.value, cell.data.mean ?? 0];
    const best = columns.map((_, j) => {
      const known = /** @type {number[][]} */ (cells.map((row) => key(row[j])).filter((k) => k !== null));
      if (known.length < 2 || known.every((k) => k[0] === known[0][0] && k[1] === known[0][1])) return null;
      return known.reduce((a, b) => (b[0] > a[0] || (b[0] === a[0] && b[1] > a[1]) ? b : a));
    });
    replace(byId("eval-runs"), h("table", { id: "eval-runs-table", class: "compare-table" },
      h("caption", { class: "visually-hidden" }, "The eval's runs, one per row, compared per testing criterion"),
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "Model"), h("th", { scope: "col" }, "Status"),
        ...columns.map(([name], j) => h("th", { scope: "col", "data-criterion": j ? name : null }, name)),
        h("th", { scope: "col" }, "Output"))),
      h("tbody", null, ...runs.map((r, i) => h("tr", { "data-run": r.id, "data-model": r.model },
        h("th", { scope: "row" }, runLabel(r)),
        h("td", null, statusBadge(r.status), r.error ? h("span", { class: "error" }, ` ${r.error.message}`) : null),
        ...cells[i].map((cell, j) => {
          const k = key(cell), top = best[j];
          const isBest = k !== null && top !== null && k[0] === top[0] && k[1] === top[1];
          return h("td", {
            class: isBest ? "number best" : "number", "data-criterion": j ? columns[j][0] : "all",
            ...Object.fromEntries(Object.entries(cell.data).map(([k, v]) => [`data-${k}`, v])),
          }, cell.text, cell.mean === null ? null : h("span", { class: "score" }, ` mean ${cell.mean.toFixed(3)}`),
          isBest ? h("span", { class: "visually-hidden" }, " (best)") : null);
        }),
        h("td", null, h("a", { href: `#/evals/${evalId}/runs/${r.id}` }, "Output items")))))));
  }

  refresh();
  const timer = setInterval(() => { if (!document.hidden && runs.some((r) => !runFinished(r.status))) refresh(); }, 5000);
  return () => { disposed = true; clearInterval(timer); };
}

/** How many output items a run's page shows: the first few, enough to see what the model answers. */
const itemsShown = 10;

/** @param {HTMLElement} main @param {string} evalId @param {string} runId */
export function evalRunView(main, evalId, runId) {
  replace(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/evals" }, "Evals"), " / ", h("a", { href: `#/evals/${evalId}` }, h("code", null, evalId)), " / ", h("code", null, runId)),
    h("div", { class: "page-head" }, h("h1", { tabindex: -1, id: "run-title" }, "Eval run")),
    h("section", { class: "card", "aria-labelledby": "items-title" },
      h("h2", { id: "items-title" }, `First ${itemsShown} output items`),
      h("div", { id: "output-items", class: "table-wrap" }, "Loading the output items…")));
  (async () => {
    try {
      /** @type {EvalRun} */
      const run = await api(`/v1/evals/${evalId}/runs/${runId}`);
      replace(byId("run-title"), `${run.name || run.id} · `, h("code", { class: "model-name" }, run.model), " ", statusBadge(run.status));
      /** @type {any[]} */
      const items = (await api(`/v1/evals/${evalId}/runs/${runId}/output_items?limit=${itemsShown}`)).data;
      if (!items.length) { replace(byId("output-items"), h("p", { class: "empty" }, "No output items yet.")); return; }
      replace(byId("output-items"), h("table", { id: "output-items-table" },
        h("caption", { class: "visually-hidden" }, "Output items: the item, the model's answer and each criterion's grade"),
        h("thead", null, h("tr", null, ...["#", "Item", "Sample output", "Grades", "Status"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", null, ...items.map((item) => h("tr", { "data-item": item.id },
          h("td", { class: "number" }, item.datasource_item_id),
          h("td", null, h("code", null, JSON.stringify(item.datasource_item))),
          h("td", null, item.sample?.error ? h("span", { class: "error" }, item.sample.error.message ?? String(item.sample.error))
            : (item.sample?.output ?? []).map((/** @type {any} */ o) => o.content).join("\n")),
          h("td", null, h("ul", { class: "plain" }, ...(item.results ?? []).map((/** @type {any} */ g) => h("li", { "data-grade": g.name },
            `${g.name}: ${g.score === null || g.score === undefined ? "—" : Number(g.score).toFixed(3)} `,
            g.error ? h("span", { class: "error" }, String(g.error)) : g.passed ? "passed" : "failed")))),
          h("td", null, statusBadge(item.status)))))));
    } catch (e) {
      replace(byId("output-items"), h("p", { class: "error" }, `Could not load the run: ${/** @type {Error} */ (e).message}`));
    }
  })();
}
