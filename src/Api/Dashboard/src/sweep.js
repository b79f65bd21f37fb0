// @ts-check
// A sweep job's members side by side (docs/API.md "Sweeps"): one row per member with its swept value, steps, losses
// and newest checkpoint, the winner marked once the job chose it; and every member's loss curves on one chart, one
// colour per member. Live: the rows and curves follow each member's progress as it arrives. The swept parameter and
// any further numeric field of a member (an eval's scores, say) are shown by name, whatever the service adds.
import { formatLoss, h, modelActions, replace } from "./dom.js";
import { LineChart, palette } from "./line-chart.js";

/**
 * @typedef {import("./api.js").Sweep} Sweep @typedef {import("./api.js").SweepMember} SweepMember
 * @typedef {import("./series.js").MetricsSeries} MetricsSeries
 */

/** The member fields with a column of their own; every other number of a member gets a column by its name. */
const shown = new Set(["member", "hyperparameters", "checkpoint", "step", "train_loss", "valid_loss"]);

/** A member as the events name it: "member 2 (learning_rate_multiplier=1)" is "learning_rate_multiplier=1". @param {Sweep} sweep @param {number} m */
const memberLabel = (sweep, m) => `${sweep.parameter}=${sweep.values[m]}`;

/** "learning_rate_multiplier" → "Learning rate multiplier", "eval.exact" → "Eval exact". @param {string} name */
const title = (name) => { const words = name.replace(/[_.]+/g, " ").trim(); return words.charAt(0).toUpperCase() + words.slice(1); };

/** @param {number} value */
const formatFigure = (value) => (Number.isInteger(value) ? String(value) : Math.abs(value) >= 100 ? value.toFixed(1) : value.toFixed(4));

/**
 * A member's numbers beyond those shown in their own columns: top-level numbers, and the numbers of a nested object as
 * "object.key" (e.g. {"eval": {"exact": 0.5}} gives "eval.exact"). @param {SweepMember} member @returns {[string, number][]}
 */
function extraFigures(member) {
  /** @type {[string, number][]} */
  const figures = [];
  for (const [key, value] of Object.entries(member)) {
    if (shown.has(key)) continue;
    if (typeof value === "number") figures.push([key, value]);
    else if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [inner, x] of Object.entries(value)) if (typeof x === "number") figures.push([`${key}.${inner}`, x]);
    }
  }
  return figures;
}

export class SweepMembers {
  #card;
  #canvas;
  /** @type {LineChart | undefined} */
  #chart;
  /** Hides the single-run chart this card stands in for. */
  #onShow;

  /** @param {HTMLElement} card the page's hidden sweep card @param {() => void} onShow */
  constructor(card, onShow) {
    this.#card = card;
    this.#onShow = onShow;
    this.#canvas = h("canvas", { id: "sweep-chart", role: "img", "aria-label": "Sweep chart: no steps yet" });
    replace(card,
      h("h2", { id: "sweep-title" }, "Sweep members"),
      h("p", { id: "sweep-lead", class: "lead" }),
      h("div", { id: "sweep-members", class: "table-wrap" }),
      h("p", { class: "hint" }, "Training loss per step (solid) and validation loss at epoch ends (dashed, with points), one colour per member."),
      h("div", { class: "chart-box" }, this.#canvas));
  }

  /**
   * Draws the members: the job's sweep (values, newest checkpoints, best member) with each member's live curve.
   * @param {Sweep} sweep @param {Map<number, MetricsSeries>} curves @param {string} status the job's
   */
  update(sweep, curves, status) {
    if (this.#card.hidden) {
      // Created once visible, so that the chart has a size.
      this.#card.hidden = false;
      this.#onShow();
      this.#chart = new LineChart(this.#canvas, {
        left: "Loss",
        describe: (series) => `Sweep chart: ${series.filter((s) => !s.dashed).map((s) => `${s.label} over ${s.points.length} steps`).join("; ") || "no steps yet"}`,
      });
    }
    const n = sweep.values.length;
    const curve = (/** @type {number} */ m) => curves.get(m)?.points ?? [];
    const total = Math.max(0, ...[...curves.values()].map((s) => s.latest?.totalSteps ?? 0)) || null;
    this.#chart?.update(sweep.values.flatMap((_, m) => [
      { label: memberLabel(sweep, m), points: curve(m).map((p) => ({ x: p.step, y: p.trainLoss })), color: palette[m % palette.length] },
      { label: `${memberLabel(sweep, m)} validation`, color: palette[m % palette.length], dashed: true, markers: true, unlisted: true,
        points: curve(m).filter((p) => p.validLoss !== null).map((p) => ({ x: p.step, y: /** @type {number} */ (p.validLoss) })) },
    ]), total ?? undefined);

    // Members are compared by validation loss, or by a criterion of an eval (scored_by "eval_{criterion}").
    const best = sweep.best_member;
    const criterion = sweep.scored_by?.startsWith("eval_") ? sweep.scored_by.slice("eval_".length) : null;
    const how = criterion
      ? [`the highest mean "${criterion}" grade of `, sweep.eval_id ? h("a", { href: `#/evals/${sweep.eval_id}` }, "its eval") : "its eval"]
      : ["the lowest validation loss"];
    replace(/** @type {HTMLElement} */ (this.#card.querySelector("#sweep-lead")), `${n} members over `, h("code", null, sweep.parameter),
      ", trained together on one copy of the base. ",
      best !== null && best !== undefined
        ? [`Member ${best + 1} had `, ...how, ": its adapter is the job's fine-tuned model; the others are kept as checkpoints."]
        : status === "failed" || status === "cancelled" ? "No member was chosen."
          : ["When all have finished, the one with ", ...how, " becomes the job's fine-tuned model."]);

    const extras = [...new Set(sweep.members.flatMap((m) => extraFigures(m).map(([key]) => key)))];
    const rows = sweep.values.map((value, m) => {
      const member = sweep.members.find((x) => x.member === m);
      const points = curve(m), latest = points[points.length - 1];
      // The live curve where there is one (it runs ahead of the checkpoints), else the member's newest checkpoint.
      const step = latest?.step ?? member?.step ?? null;
      const trainLoss = latest?.trainLoss ?? member?.train_loss ?? null;
      const validLoss = [...points].reverse().find((p) => p.validLoss !== null)?.validLoss ?? member?.valid_loss ?? null;
      const figures = new Map(member ? extraFigures(member) : []);
      const isBest = m === best;
      return h("tr", { "data-member": m, "data-value": value, class: isBest ? "best" : null },
        h("th", { scope: "row" }, h("span", { class: "swatch", style: `background: ${palette[m % palette.length]}` }), `${m + 1}`,
          isBest ? [" ", h("span", { class: "best-mark", "data-best": "" }, "★ best")] : null),
        h("td", { class: "number", "data-field": "value" }, String(value)),
        h("td", { class: "number", "data-field": "step", "data-value": step }, step === null ? "—" : `${step} / ${latest?.totalSteps ?? total ?? "?"}`),
        h("td", { class: "number", "data-field": "train_loss", "data-value": trainLoss }, formatLoss(trainLoss)),
        h("td", { class: "number", "data-field": "valid_loss", "data-value": validLoss }, formatLoss(validLoss)),
        ...extras.map((key) => {
          const x = figures.get(key);
          return h("td", { class: "number", "data-field": key, "data-value": x }, x === undefined ? "—" : formatFigure(x));
        }),
        h("td", { "data-field": "checkpoint" }, member?.checkpoint ? modelActions(member.checkpoint) : h("span", { class: "hint" }, "after its first epoch")));
    });
    replace(/** @type {HTMLElement} */ (this.#card.querySelector("#sweep-members")), h("table", { id: "sweep-table", "data-parameter": sweep.parameter },
      h("caption", { class: "visually-hidden" }, `Sweep members over ${sweep.parameter}; the best is marked`),
      h("thead", null, h("tr", null,
        h("th", { scope: "col" }, "Member"),
        h("th", { scope: "col", "data-field": "value", title: sweep.parameter }, title(sweep.parameter)),
        ...["Step", "Training loss", "Validation loss"].map((c) => h("th", { scope: "col" }, c)),
        ...extras.map((key) => h("th", { scope: "col", "data-field": key }, title(key))),
        h("th", { scope: "col" }, "Newest checkpoint"))),
      h("tbody", null, ...rows)));
  }

  destroy() { this.#chart?.destroy(); }
}
