// @ts-check
// The live training chart: training and validation loss on the left axis, learning rate on the right.
import { Chart, LineController, LineElement, PointElement, LinearScale, Legend, Tooltip } from "chart.js";

Chart.register(LineController, LineElement, PointElement, LinearScale, Legend, Tooltip);

/** @typedef {import("./series.js").MetricPoint} MetricPoint */

/** @param {string} name */
const color = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";

export class LossChart {
  /** @type {Chart<"line", {x: number, y: number}[]>} */
  #chart;
  #canvas;
  /** @type {number} */
  #frame = 0;
  /** @type {{ points: MetricPoint[], totalSteps: number | null } | null} */
  #pending = null;

  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.#canvas = canvas;
    const [train, valid, rate, grid, text] = ["--chart-train", "--chart-valid", "--chart-rate", "--chart-grid", "--text-muted"].map(color);
    this.#chart = new Chart(canvas, {
      type: "line",
      data: {
        datasets: [
          { label: "Training loss", data: [], borderColor: train, backgroundColor: train, pointRadius: 0, borderWidth: 2, yAxisID: "loss" },
          { label: "Validation loss", data: [], borderColor: valid, backgroundColor: valid, pointRadius: 4, borderWidth: 2, yAxisID: "loss" },
          { label: "Learning rate", data: [], borderColor: rate, backgroundColor: rate, pointRadius: 0, borderWidth: 1.5, borderDash: [6, 4], yAxisID: "rate" },
        ],
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        parsing: false,
        normalized: true,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        plugins: {
          legend: { labels: { color: text, usePointStyle: true } },
          tooltip: { callbacks: { title: (items) => `Step ${items[0]?.parsed.x}` } },
        },
        scales: {
          x: { type: "linear", min: 0, title: { display: true, text: "Step", color: text }, ticks: { color: text, precision: 0 }, grid: { color: grid } },
          loss: { type: "linear", position: "left", title: { display: true, text: "Loss", color: text }, ticks: { color: text }, grid: { color: grid } },
          rate: {
            type: "linear", position: "right", min: 0, title: { display: true, text: "Learning rate", color: text },
            ticks: { color: text, callback: (v) => Number(v).toExponential(1) }, grid: { drawOnChartArea: false },
          },
        },
      },
    });
  }

  /** Redraws with these points, at most once per animation frame. @param {MetricPoint[]} points @param {number | null} totalSteps */
  update(points, totalSteps) {
    this.#pending = { points, totalSteps };
    this.#frame ||= requestAnimationFrame(() => this.#draw());
  }

  #draw() {
    this.#frame = 0;
    if (!this.#pending) return;
    const { points, totalSteps } = this.#pending;
    const [train, valid, rate] = this.#chart.data.datasets;
    train.data = points.map((p) => ({ x: p.step, y: p.trainLoss }));
    valid.data = points.filter((p) => p.validLoss !== null).map((p) => ({ x: p.step, y: /** @type {number} */ (p.validLoss) }));
    rate.data = points.map((p) => ({ x: p.step, y: p.learningRate }));
    const x = /** @type {any} */ (this.#chart.options.scales?.x);
    x.max = totalSteps ?? undefined;
    this.#chart.update("none");
    // What the chart holds, for assistive technology and for the browser tests.
    const last = points[points.length - 1];
    this.#canvas.dataset.steps = points.map((p) => p.step).join(",");
    this.#canvas.setAttribute("aria-label", last
      ? `Training chart: ${points.length} steps of ${totalSteps ?? "?"}; latest training loss ${last.trainLoss.toFixed(4)}`
      : "Training chart: no steps yet");
  }

  destroy() {
    cancelAnimationFrame(this.#frame);
    this.#chart.destroy();
  }
}
