// @ts-check
// Comparing runs (#/compare?jobs=a,b,…): their loss curves overlaid, a diff of their settings, their final figures side
// by side. Every curve comes from the jobs' persisted events, so finished runs can be looked at again at any time.
import { api } from "./api.js";
import { byId, formatDuration, formatLoss, formatNumber, formatTime, h, isFinished, replace, statusBadge } from "./dom.js";
import { LineChart, palette } from "./line-chart.js";
import { formatObjective, objectiveMetric } from "./objective.js";
import { MetricsSeries } from "./series.js";

/** @typedef {import("./api.js").Job} Job @typedef {import("./api.js").JobEvent} JobEvent */
/**
 * @typedef {{ id: string, job: Job | null, series: MetricsSeries, lastEvent: number, error: string | null, member?: number }} Run
 *   member: the sweep member whose curve is the run's (undefined for other jobs)
 */

/** @param {JobEvent} event */
const eventNumber = (event) => Number(event.id.slice("ftevent-".length));

/** A run's short name in legends and column heads: its suffix, else its id. @param {Run} run */
const runName = (run) => run.job?.suffix ? `${run.job.suffix} · ${run.id.slice(-6)}` : run.id;

/**
 * The settings that make a run what it is, flattened to dotted keys: the base, the method with all its hyperparameters
 * (as resolved: "auto" already replaced), the adapter's config, the data and the seed.
 * @param {Job} job @returns {Map<string, string>}
 */
export function settingsOf(job) {
  /** @type {Map<string, string>} */
  const out = new Map();
  /** @param {string} prefix @param {any} value */
  const walk = (prefix, value) => {
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
    } else {
      out.set(prefix, value === null || value === undefined ? "—" : Array.isArray(value) ? value.join(", ") : String(value));
    }
  };
  walk("model", job.model);
  walk("method", job.method);
  walk("adapter", job.adapter);
  walk("training_file", job.training_file);
  walk("validation_file", job.validation_file);
  walk("seed", job.seed);
  walk("chat_template", job.chat_template ? "custom" : null);
  return out;
}

/** @param {HTMLElement} main @param {URLSearchParams} query */
export function compareView(main, query) {
  /** @type {Map<string, Run>} */
  const runs = new Map();
  for (const id of (query.get("jobs") ?? "").split(",").map((s) => s.trim()).filter(Boolean)) {
    runs.set(id, { id, job: null, series: new MetricsSeries(), lastEvent: 0, error: null });
  }
  const lossCanvas = h("canvas", { id: "compare-chart", role: "img", "aria-label": "Loss curves: loading" });
  const objectiveCanvas = h("canvas", { id: "compare-objective-chart", role: "img", "aria-label": "Objective curves: none" });
  const onlyDiffs = h("input", { type: "checkbox", id: "only-differences", onchange: () => renderSettings() });
  const objectiveSelect = h("select", { id: "objective-metric", onchange: () => renderObjective() });
  replace(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / Compare"),
    h("div", { class: "page-head" }, h("h1", { tabindex: -1 }, "Compare runs")),
    h("section", { class: "card", "aria-labelledby": "runs-title" },
      h("h2", { id: "runs-title" }, "Runs"),
      h("p", { class: "hint" }, "Tick two or more jobs; finished ones are read back from their events, running ones follow along."),
      h("div", { id: "run-picker", class: "run-picker" }, "Loading the jobs…")),
    h("section", { class: "card", "aria-labelledby": "curves-title" },
      h("h2", { id: "curves-title" }, "Loss curves"),
      h("p", { class: "hint" }, "Training loss per step (solid), validation loss at epoch ends (dashed, with points)."),
      h("div", { class: "chart-box" }, lossCanvas)),
    h("section", { class: "card", id: "compare-objective", "aria-labelledby": "compare-objective-title", hidden: true },
      h("div", { class: "section-head" },
        h("h2", { id: "compare-objective-title" }, "Objective"),
        h("div", { class: "field inline-field" }, h("label", { for: "objective-metric" }, "Metric"), objectiveSelect)),
      h("div", { class: "chart-box" }, objectiveCanvas)),
    h("section", { class: "card", "aria-labelledby": "final-title" },
      h("h2", { id: "final-title" }, "Final figures"),
      h("div", { id: "final-metrics", class: "table-wrap" })),
    h("section", { class: "card", "aria-labelledby": "settings-title" },
      h("div", { class: "section-head" },
        h("h2", { id: "settings-title" }, "Settings"),
        h("label", { class: "inline" }, onlyDiffs, " Only differences")),
      h("div", { id: "settings-diff", class: "table-wrap" })));

  const lossChart = new LineChart(lossCanvas, {
    left: "Loss",
    describe: (series) => series.length ? `Loss curves of ${runs.size} runs: ${series.map((s) => `${s.label}, ${s.points.length} points`).join("; ")}` : "Loss curves: no run chosen",
  });
  /** @type {LineChart | undefined} */
  let objectiveChart;
  let disposed = false;

  /** Reads a run's job and the events it has not seen yet (newest first, page by page, until a known one). @param {Run} run */
  async function load(run) {
    try {
      run.job = await api(`/v1/fine_tuning/jobs/${run.id}`);
      // A sweep is compared as its chosen member (its fine-tuned model; the first member until one is chosen), the
      // member its hyperparameters show: read again from the start when the choice is made.
      const member = run.job?.sweep ? (run.job.sweep.best_member ?? 0) : undefined;
      if (member !== run.member) Object.assign(run, { member, series: new MetricsSeries(), lastEvent: 0 });
      let after = "";
      for (;;) {
        const page = await api(`/v1/fine_tuning/jobs/${run.id}/events?limit=1000${after}`);
        /** @type {JobEvent[]} */
        const events = page.data;
        const unseen = events.filter((e) => eventNumber(e) > run.lastEvent);
        for (const e of unseen) if (e.data?.sweep_member === run.member) run.series.addEvent(e);
        if (!page.has_more || unseen.length < events.length || !events.length) {
          run.lastEvent = Math.max(run.lastEvent, ...events.map(eventNumber));
          break;
        }
        after = `&after=${events[events.length - 1].id}`;
      }
      run.error = null;
    } catch (e) {
      run.error = /** @type {Error} */ (e).message;
    }
  }

  async function refresh() {
    await Promise.all([...runs.values()].filter((r) => !r.job || !isFinished(r.job.status)).map(load));
    if (disposed) return;
    render();
  }

  function render() {
    const list = [...runs.values()];
    lossChart.update(list.flatMap((run, i) => [
      { label: `${runName(run)} training`, points: run.series.points.map((p) => ({ x: p.step, y: p.trainLoss })), color: palette[i % palette.length] },
      { label: `${runName(run)} validation`, color: palette[i % palette.length], dashed: true, markers: true,
        points: run.series.points.filter((p) => p.validLoss !== null).map((p) => ({ x: p.step, y: /** @type {number} */ (p.validLoss) })) },
    ].filter((s) => s.points.length)));
    lossCanvas.dataset.runs = list.map((r) => r.id).join(",");
    renderObjective();
    renderFinal();
    renderSettings();
  }

  function renderObjective() {
    const list = [...runs.values()];
    const names = [...new Set(list.flatMap((r) => r.series.objectiveNames))].filter((n) => objectiveMetric(n).axis !== null);
    const card = byId("compare-objective");
    card.hidden = !names.length;
    if (!names.length) return;
    const chosen = names.includes(objectiveSelect.value) ? objectiveSelect.value : names[0];
    if (objectiveSelect.options.length !== names.length) {
      replace(objectiveSelect, ...names.map((n) => h("option", { value: n }, objectiveMetric(n).label)));
    }
    objectiveSelect.value = chosen;
    objectiveChart ??= new LineChart(objectiveCanvas, {
      left: "Value", describe: (series) => `${objectiveMetric(objectiveSelect.value).label} of ${series.length} runs`,
    });
    objectiveChart.update(list.map((run, i) => ({
      label: runName(run), points: run.series.objectiveSeries(chosen), color: palette[i % palette.length],
      markers: objectiveMetric(chosen).markers,
    })).filter((s) => s.points.length));
  }

  /** A table with one column per run. @param {string} id @param {string} caption @param {HTMLElement[]} rows */
  function runTable(id, caption, rows) {
    const list = [...runs.values()];
    return h("table", { id, class: "compare-table" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", null, h("tr", null, h("th", { scope: "col" }, ""),
        ...list.map((run, i) => h("th", { scope: "col", "data-job": run.id },
          h("span", { class: "swatch", style: `background: ${palette[i % palette.length]}`, "aria-hidden": "true" }),
          h("a", { href: `#/jobs/${run.id}` }, runName(run)))))),
      h("tbody", null, rows));
  }

  function renderFinal() {
    const list = [...runs.values()];
    /** @type {[string, (run: Run) => number | null | undefined, (v: number) => string, "low" | "high" | null][]} */
    const figures = [
      ["Final training loss", (r) => r.series.latest?.trainLoss, formatLoss, "low"],
      ["Final validation loss", (r) => [...r.series.points].reverse().find((p) => p.validLoss !== null)?.validLoss, formatLoss, "low"],
      ["Best validation loss", (r) => {
        const v = r.series.points.map((p) => p.validLoss).filter((x) => x !== null);
        return v.length ? Math.min(.../** @type {number[]} */ (v)) : null;
      }, formatLoss, "low"],
      ["Steps", (r) => r.series.latest?.step, formatNumber, null],
      ["Trained tokens", (r) => r.job?.trained_tokens, formatNumber, null],
      ["Tokens/s (mean)", (r) => r.series.size ? r.series.points.reduce((a, p) => a + p.tokensPerSecond, 0) / r.series.size : null, (v) => formatNumber(Math.round(v)), "high"],
      ["Duration", (r) => r.job?.finished_at ? r.job.finished_at - r.job.created_at : null, formatDuration, null],
    ];
    for (const name of [...new Set(list.flatMap((r) => r.series.objectiveNames))]) {
      const metric = objectiveMetric(name);
      figures.push([metric.label, (r) => { const s = r.series.objectiveSeries(name); return s[s.length - 1]?.y; }, (v) => formatObjective(v),
        name === "preference_accuracy" || name.includes("reward_mean") || name === "reward_margin" ? "high" : null]);
    }
    const rows = [
      h("tr", null, h("th", { scope: "row" }, "Status"), ...list.map((r) => h("td", null, r.error ? h("span", { class: "error" }, r.error) : r.job ? statusBadge(r.job.status) : "…"))),
      ...figures.map(([label, get, format, better]) => {
        const values = list.map((r) => get(r) ?? null);
        const known = /** @type {number[]} */ (values.filter((v) => v !== null));
        const best = better && known.length > 1 ? (better === "low" ? Math.min(...known) : Math.max(...known)) : null;
        return h("tr", { "data-figure": label }, h("th", { scope: "row" }, label),
          ...values.map((v) => h("td", { class: v !== null && v === best ? "number best" : "number", "data-value": v ?? "" },
            v === null ? "—" : format(v), v !== null && v === best ? h("span", { class: "visually-hidden" }, " (best)") : null)));
      }),
      h("tr", null, h("th", { scope: "row" }, "Created"), ...list.map((r) => h("td", null, formatTime(r.job?.created_at)))),
    ];
    replace(byId("final-metrics"), runTable("final-table", "Final figures of each run", rows));
  }

  function renderSettings() {
    const list = [...runs.values()].filter((r) => r.job);
    if (!list.length) { replace(byId("settings-diff"), h("p", { class: "empty" }, "No run chosen.")); return; }
    const settings = list.map((r) => settingsOf(/** @type {Job} */ (r.job)));
    // Options no run has (another adapter method's) are left out.
    const keys = [...new Set(settings.flatMap((s) => [...s.keys()]))].filter((k) => settings.some((s) => (s.get(k) ?? "—") !== "—"));
    const only = /** @type {HTMLInputElement} */ (onlyDiffs).checked;
    const rows = keys.map((key) => {
      const values = settings.map((s) => s.get(key) ?? "—");
      const differs = new Set(values).size > 1;
      if (only && !differs) return null;
      return h("tr", { "data-key": key, class: differs ? "differs" : null },
        h("th", { scope: "row" }, h("code", null, key), differs ? h("span", { class: "differs-mark" }, " differs") : null),
        ...values.map((v) => h("td", null, v)));
    }).filter((r) => r !== null);
    replace(byId("settings-diff"), runTable("settings-table", "Settings of each run; rows that differ are marked", /** @type {HTMLElement[]} */ (rows)));
  }

  /** The picker: recent jobs, ticked when in the comparison; a change reloads what is needed and keeps the address bookmarkable. */
  async function loadPicker() {
    try {
      /** @type {Job[]} */
      const jobs = (await api("/v1/fine_tuning/jobs?limit=100")).data;
      for (const id of runs.keys()) if (!jobs.some((j) => j.id === id)) jobs.push(/** @type {Job} */ ({ id, status: "?", model: "" }));
      replace(byId("run-picker"), h("ul", { class: "plain" }, ...jobs.map((job) => h("li", null, h("label", { class: "inline" },
        h("input", { type: "checkbox", value: job.id, checked: runs.has(job.id), onchange: (/** @type {Event} */ e) => toggle(job.id, /** @type {HTMLInputElement} */ (e.target).checked) }),
        " ", h("code", null, job.id), " ", job.suffix ? `${job.suffix} · ` : "", job.model, " ", job.status !== "?" ? statusBadge(job.status) : null)))));
    } catch (e) {
      replace(byId("run-picker"), h("p", { class: "error" }, `Could not load the jobs: ${/** @type {Error} */ (e).message}`));
    }
  }

  /** @param {string} id @param {boolean} on */
  async function toggle(id, on) {
    if (on) runs.set(id, { id, job: null, series: new MetricsSeries(), lastEvent: 0, error: null });
    else runs.delete(id);
    history.replaceState(null, "", `#/compare?jobs=${[...runs.keys()].join(",")}`);
    await refresh();
  }

  loadPicker();
  refresh();
  const timer = setInterval(() => {
    if (!document.hidden && [...runs.values()].some((r) => !r.job || !isFinished(r.job.status))) refresh();
  }, 5000);
  return () => { disposed = true; clearInterval(timer); lossChart.destroy(); objectiveChart?.destroy(); };
}
