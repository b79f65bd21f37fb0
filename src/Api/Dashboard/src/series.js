// @ts-check
// A job's training curve: one point per step, whichever way it arrived. Live SignalR messages and the persisted
// metrics events describe the same steps, and after a reconnect both may repeat steps already shown, so points are
// keyed by step: a repeated step replaces its point instead of adding one.

/**
 * @typedef {{ step: number, totalSteps: number, epoch: number, trainLoss: number, validLoss: number | null,
 *   learningRate: number, tokensPerSecond: number, etaSeconds: number }} MetricPoint
 */

export class MetricsSeries {
  /** @type {Map<number, MetricPoint>} */
  #byStep = new Map();
  /** @type {MetricPoint[] | null} */
  #sorted = null;

  /**
   * A SignalR "progress" message (camelCase).
   * @param {{ step: number, totalSteps: number, epoch: number, trainLoss: number, validLoss?: number | null,
   *   learningRate: number, tokensPerSecond: number, etaSeconds: number }} m
   */
  addProgress(m) {
    return this.#add({
      step: m.step, totalSteps: m.totalSteps, epoch: m.epoch, trainLoss: m.trainLoss, validLoss: m.validLoss ?? null,
      learningRate: m.learningRate, tokensPerSecond: m.tokensPerSecond, etaSeconds: m.etaSeconds,
    });
  }

  /**
   * A persisted event; only metrics events carry a step (data in snake_case).
   * @param {{ type: string, data: any }} event
   */
  addEvent(event) {
    const d = event.data;
    if (event.type !== "metrics" || !d || typeof d.step !== "number") return false;
    return this.#add({
      step: d.step, totalSteps: d.total_steps, epoch: d.epoch, trainLoss: d.train_loss, validLoss: d.valid_loss ?? null,
      learningRate: d.learning_rate, tokensPerSecond: d.tokens_per_second, etaSeconds: d.eta_seconds,
    });
  }

  /** @param {MetricPoint} point @returns {boolean} whether anything changed */
  #add(point) {
    const known = this.#byStep.get(point.step);
    if (known && known.trainLoss === point.trainLoss && known.validLoss === point.validLoss) return false;
    this.#byStep.set(point.step, point);
    this.#sorted = null;
    return true;
  }

  /** Points in step order. @returns {MetricPoint[]} */
  get points() {
    return (this.#sorted ??= [...this.#byStep.values()].sort((a, b) => a.step - b.step));
  }

  get size() { return this.#byStep.size; }

  /** @returns {MetricPoint | undefined} */
  get latest() { const p = this.points; return p[p.length - 1]; }
}
