// @ts-check
// A plain line chart of named series over steps: the job page's objective metrics, the comparison of runs.
import { Chart, LineController, LineElement, PointElement, LinearScale, Legend, Tooltip } from "chart.js";

Chart.register(LineController, LineElement, PointElement, LinearScale, Legend, Tooltip);

/**
 * @typedef {{ label: string, points: { x: number, y: number }[], color: string, dashed?: boolean, markers?: boolean,
 *   axis?: "left" | "right" }} Series
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
  /** @type {Series[] | null} */
  #pending = null;

  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{ left: string, right?: string, rightRange?: [number, number], describe: (series: Series[]) => string }} axes
   *   axis titles, the right axis's fixed range, and the text description for assistive technology
   */
  constructor(canvas, axes) {
    this.#canvas = canvas;
    this.#describe = axes.describe;
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
          legend: { labels: { color: text, usePointStyle: true } },
          tooltip: { callbacks: { title: (items) => `Step ${items[0]?.parsed.x}` } },
        },
        scales: {
          x: { ...axis("Step"), min: 0, ticks: { color: text, precision: 0 } },
          left: { ...axis(axes.left), position: "left" },
          ...(axes.right ? {
            right: { ...axis(axes.right), position: "right", min: axes.rightRange?.[0], max: axes.rightRange?.[1], grid: { drawOnChartArea: false } },
          } : {}),
        },
      },
    });
  }

  /** Redraws with these series, at most once per animation frame. @param {Series[]} series */
  update(series) {
    this.#pending = series;
    this.#frame ||= requestAnimationFrame(() => this.#draw());
  }

  #draw() {
    this.#frame = 0;
    const series = this.#pending;
    if (!series) return;
    this.#chart.data.datasets = series.map((s) => ({
      label: s.label, data: s.points, borderColor: s.color, backgroundColor: s.color, borderWidth: 2,
      pointRadius: s.markers ? 3 : 0, borderDash: s.dashed ? [6, 4] : [], yAxisID: s.axis === "right" ? "right" : "left",
    }));
    this.#chart.update("none");
    // What the chart holds, for the browser tests and assistive technology.
    this.#canvas.dataset.series = series.map((s) => s.label).join("|");
    this.#canvas.dataset.points = series.map((s) => s.points.length).join(",");
    this.#canvas.setAttribute("aria-label", this.#describe(series));
  }

  destroy() {
    cancelAnimationFrame(this.#frame);
    this.#chart.destroy();
  }
}
