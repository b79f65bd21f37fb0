// @ts-check
// The live training chart of one job: training and validation loss on the left axis, learning rate on the right
// (dashed). A LineChart with the job's three series; the step axis runs to the job's total steps.
import { cssColor, LineChart } from "./line-chart.js";

/** @typedef {import("./series.js").MetricPoint} MetricPoint */

export class LossChart {
  #chart;
  #canvas;
  #colors;
  /** @type {number | null} */
  #totalSteps = null;

  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.#canvas = canvas;
    const [train, valid, rate] = ["--chart-train", "--chart-valid", "--chart-rate"].map(cssColor);
    this.#colors = { train, valid, rate };
    this.#chart = new LineChart(canvas, {
      left: "Loss", right: "Learning rate", rightRange: [0, undefined], rightTicks: (v) => v.toExponential(1),
      describe: ([training]) => {
        const last = training.points[training.points.length - 1];
        return last
          ? `Training chart: ${training.points.length} steps of ${this.#totalSteps ?? "?"}; latest training loss ${last.y.toFixed(4)}`
          : "Training chart: no steps yet";
      },
      // The steps drawn, for the browser tests (each exactly once, even after a reconnect).
      drawn: ([training]) => { this.#canvas.dataset.steps = training.points.map((p) => p.x).join(","); },
    });
  }

  /** Redraws with these points, at most once per animation frame. @param {MetricPoint[]} points @param {number | null} totalSteps */
  update(points, totalSteps) {
    this.#totalSteps = totalSteps;
    const { train, valid, rate } = this.#colors;
    this.#chart.update([
      { label: "Training loss", points: points.map((p) => ({ x: p.step, y: p.trainLoss })), color: train },
      { label: "Validation loss", color: valid, markers: true,
        points: points.filter((p) => p.validLoss !== null).map((p) => ({ x: p.step, y: /** @type {number} */ (p.validLoss) })) },
      { label: "Learning rate", points: points.map((p) => ({ x: p.step, y: p.learningRate })), color: rate, dashed: true, width: 1.5, axis: "right" },
    ], totalSteps ?? undefined);
  }

  destroy() { this.#chart.destroy(); }
}
