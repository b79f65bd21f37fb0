// @ts-check
// The dashboard's one line chart of named series over steps: a job's loss curve (loss-chart.js), its objective metrics,
// a sweep's members, the comparison of runs.
import { Chart, LineController, LineElement, PointElement, LinearScale, Legend, Tooltip } from "chart.js";

Chart.register(LineController, LineElement, PointElement, LinearScale, Legend, Tooltip);

/**
 * @typedef {{ label: string, points: { x: number, y: number }[], color: string, dashed?: boolean, markers?: boolean,
 *   axis?: "left" | "right", width?: number, unlisted?: boolean }} Series
 *   unlisted: left out of the legend (a run's validation points beside its training curve, in the same colour)
 * @typedef {{ left: string, right?: string, rightRange?: [number | undefined, number | undefined],
 *   rightTicks?: (value: number) => string, describe: (series: Series[]) => string,
 *   drawn?: (series: Series[]) => void }} Axes
 *   axis titles, the right axis's range (either end left open) and tick labels, the text description for assistive
 *   technology, and what to do after each redraw
 */

/** @param {string} name */
export const cssColor = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";

/** Colors told apart by people with the common color-vision deficiencies (Okabe and Ito's palette). */
export const palette = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442"];

export class LineChart {
  /** @type {Chart<"line", {x: number, y: number}[]>} */
  #chart;
  #canvas;
  #describe;
  #frame = 0;
  #drawn;
  /** The datasets left out of the legend. @type {Set<number>} */
  #unlisted = new Set();
  /** @type {{ series: Series[], xMax: number | undefined } | null} */
  #pending = null;

  /** @param {HTMLCanvasElement} canvas @param {Axes} axes */
  constructor(canvas, axes) {
    this.#canvas = canvas;
    this.#describe = axes.describe;
    this.#drawn = axes.drawn;
    const [grid, text] = ["--chart-grid", "--text-muted"].map(cssColor);
    /** @param {string} title */
    const axis = (title) => ({ type: /** @type {const} */ ("linear"), title: { display: true, text: title, color: text }, ticks: { color: text }, grid: { color: grid } });
    this.#chart = new Chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, parsing: false, normalized: true,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        plugins: {
          legend: { labels: { color: text, usePointStyle: true, filter: (item) => !this.#unlisted.has(item.datasetIndex ?? -1) } },
          tooltip: { callbacks: { title: (items) => `Step ${items[0]?.parsed.x}` } },
        },
        scales: {
          x: { ...axis("Step"), min: 0, ticks: { color: text, precision: 0 } },
          left: { ...axis(axes.left), position: "left" },
          ...(axes.right ? {
            right: {
              ...axis(axes.right), position: "right", min: axes.rightRange?.[0], max: axes.rightRange?.[1], grid: { drawOnChartArea: false },
              ticks: { color: text, ...(axes.rightTicks ? { callback: (/** @type {number | string} */ v) => axes.rightTicks?.(Number(v)) } : {}) },
            },
          } : {}),
        },
      },
    });
  }

  /**
   * Redraws with these series, at most once per animation frame; the step axis ends at xMax (the last point when undefined).
   * @param {Series[]} series @param {number} [xMax]
   */
  update(series, xMax) {
    this.#pending = { series, xMax };
    this.#frame ||= requestAnimationFrame(() => this.#draw());
  }

  #draw() {
    this.#frame = 0;
    if (!this.#pending) return;
    const { series, xMax } = this.#pending;
    this.#chart.data.datasets = series.map((s) => ({
      label: s.label, data: s.points, borderColor: s.color, backgroundColor: s.color, borderWidth: s.width ?? 2,
      pointRadius: s.markers ? 3 : 0, borderDash: s.dashed ? [6, 4] : [], yAxisID: s.axis === "right" ? "right" : "left",
    }));
    this.#unlisted = new Set(series.flatMap((s, i) => (s.unlisted ? [i] : [])));
    const x = /** @type {any} */ (this.#chart.options.scales?.x);
    x.max = xMax;
    this.#chart.update("none");
    // What the chart holds, for the browser tests and assistive technology.
    this.#canvas.dataset.series = series.map((s) => s.label).join("|");
    this.#canvas.dataset.points = series.map((s) => s.points.length).join(",");
    this.#canvas.setAttribute("aria-label", this.#describe(series));
    this.#drawn?.(series);
  }

  destroy() {
    cancelAnimationFrame(this.#frame);
    this.#chart.destroy();
  }
}
