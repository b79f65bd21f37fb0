// @ts-check
// A job's training curve: one point per step, whichever way it arrived. Live SignalR messages and the persisted
// metrics events describe the same steps, and after a reconnect both may repeat steps already shown, so points are
// keyed by step: a repeated step replaces its point instead of adding one.

/**
 * @typedef {{ cpuPercent: number, cpuCount: number, memoryBytes: number, managedBytes: number }} WorkerStats
 *   the training process at that step: CPU since the previous step (100 = one core), resident and managed memory
 * @typedef {{ step: number, totalSteps: number, epoch: number, trainLoss: number, validLoss: number | null,
 *   learningRate: number, tokensPerSecond: number, etaSeconds: number, objective: Record<string, number> | null,
 *   worker: WorkerStats | null }} MetricPoint
 *   objective: what a DPO or reinforcement objective measures (reward_margin, preference_accuracy, reward_mean, kl…)
 */

export class MetricsSeries {
  /** @type {Map<number, MetricPoint>} */
  #byStep = new Map();
  /** @type {MetricPoint[] | null} */
  #sorted = null;

  /**
   * A SignalR "progress" message (camelCase).
   * @param {{ step: number, totalSteps: number, epoch: number, trainLoss: number, validLoss?: number | null,
   *   learningRate: number, tokensPerSecond: number, etaSeconds: number, objective?: Record<string, number> | null,
   *   worker?: WorkerStats | null }} m
   */
  addProgress(m) {
    return this.#add({
      step: m.step, totalSteps: m.totalSteps, epoch: m.epoch, trainLoss: m.trainLoss, validLoss: m.validLoss ?? null,
      learningRate: m.learningRate, tokensPerSecond: m.tokensPerSecond, etaSeconds: m.etaSeconds,
      objective: m.objective ?? null, worker: m.worker ?? null,
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
      objective: d.objective ?? null,
      worker: d.worker ? { cpuPercent: d.worker.cpu_percent, cpuCount: d.worker.cpu_count, memoryBytes: d.worker.memory_bytes,
        managedBytes: d.worker.managed_bytes } : null,
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

  /** The names of the objective's metrics, in the order they first appear. */
  get objectiveNames() {
    const names = new Set();
    for (const p of this.points) for (const name of Object.keys(p.objective ?? {})) names.add(name);
    return /** @type {string[]} */ ([...names]);
  }

  /** One objective metric's points (the steps that report it). @param {string} name */
  objectiveSeries(name) {
    return this.points.filter((p) => typeof p.objective?.[name] === "number").map((p) => ({ x: p.step, y: /** @type {number} */ (p.objective?.[name]) }));
  }
}
