// @ts-check
// The job list, and one job's page: live chart over SignalR, event log, checkpoints; a sweep's members side by side.
import { HubConnectionBuilder, HubConnectionState, LogLevel } from "@microsoft/signalr";
import { api, apiKey } from "./api.js";
import { byId, formatBytes, formatDuration, formatLoss, formatNumber, formatRate, formatTime, h, isFinished, modelActions, replace, statusBadge, toast } from "./dom.js";
import { LineChart, palette } from "./line-chart.js";
import { LossChart } from "./loss-chart.js";
import { formatObjective, objectiveMetric } from "./objective.js";
import { MetricsSeries } from "./series.js";
import { SweepMembers } from "./sweep.js";

/** @typedef {import("./api.js").Job} Job @typedef {import("./api.js").JobEvent} JobEvent */

/** @param {Job} job */
const method = (job) => (pretraining(job) ? "Pre-training" : `${job.adapter.type.toUpperCase()} r=${job.adapter.rank}`);

/** A built-in base's pre-training (every weight trained, no adapter). @param {Job} job */
const pretraining = (job) => job.adapter.type === "pretraining";

/** @param {HTMLElement} main */
export function jobListView(main) {
  const body = h("tbody");
  const more = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => load(true) }, "Load older jobs");
  /** Jobs ticked for comparing, kept across the list's reloads. @type {Set<string>} */
  const selected = new Set();
  const compare = h("button", { type: "button", id: "compare-selected", class: "secondary", disabled: true,
    onclick: () => { location.hash = `#/compare?jobs=${[...selected].join(",")}`; } }, "Compare selected runs");
  const updateCompare = () => {
    compare.disabled = selected.size < 2;
    compare.textContent = selected.size ? `Compare ${selected.size} selected runs` : "Compare selected runs";
  };
  replace(main,
    h("div", { class: "page-head" },
      h("h1", { tabindex: -1 }, "Fine-tuning jobs"),
      compare,
      h("a", { class: "button", href: "#/new" }, "New job")),
    h("div", { class: "table-wrap" },
      h("table", { id: "jobs" },
        h("caption", { class: "visually-hidden" }, "Fine-tuning jobs, newest first"),
        h("thead", null, h("tr", null, h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Compare")),
          ...["Job", "Status", "Base model", "Fine-tuned model", "Method", "Created", "Duration"].map((c) => h("th", { scope: "col" }, c)))),
        body)),
    more);

  /** @type {Job[]} */
  let jobs = [];
  let hasMore = false, loadedOlder = false;
  /** Reloads the newest page (every few seconds), or appends the page after the last job shown. */
  async function load(older = false) {
    try {
      const after = older && jobs.length ? `&after=${jobs[jobs.length - 1].id}` : "";
      const page = await api(`/v1/fine_tuning/jobs?limit=50${after}`);
      /** @type {Job[]} */
      const data = page.data;
      if (older) {
        jobs = [...jobs, ...data];
        loadedOlder = true;
        hasMore = page.has_more;
      } else {
        const fresh = new Set(data.map((j) => j.id));
        const oldest = data[data.length - 1]?.created_at ?? 0;
        jobs = [...data, ...(loadedOlder ? jobs.filter((j) => !fresh.has(j.id) && j.created_at <= oldest) : [])];
        if (!loadedOlder) hasMore = page.has_more;
      }
      render();
    } catch (e) {
      replace(body, h("tr", null, h("td", { colspan: 8, class: "error" }, `Could not load the jobs: ${/** @type {Error} */ (e).message}`)));
    }
  }

  function render() {
    more.hidden = !hasMore;
    if (!jobs.length) {
      replace(body, h("tr", null, h("td", { colspan: 8, class: "empty" }, "No jobs yet. ", h("a", { href: "#/new" }, "Start one"), ".")));
      return;
    }
    replace(body, ...jobs.map((job) => h("tr", { "data-job": job.id },
      h("td", null, h("input", { type: "checkbox", "aria-label": `Compare ${job.id}`, checked: selected.has(job.id),
        onchange: (/** @type {Event} */ e) => {
          if (/** @type {HTMLInputElement} */ (e.target).checked) selected.add(job.id); else selected.delete(job.id);
          updateCompare();
        } })),
      h("th", { scope: "row" }, h("a", { href: `#/jobs/${job.id}` }, h("code", null, job.id))),
      h("td", null, statusBadge(job.status)),
      h("td", null, job.model),
      h("td", null, job.fine_tuned_model ? h("code", { class: "model-name" }, job.fine_tuned_model) : "—"),
      h("td", null, method(job), job.sweep ? [" ", sweepTag(job.sweep)] : null),
      h("td", null, formatTime(job.created_at)),
      h("td", null, job.finished_at ? formatDuration(job.finished_at - job.created_at) : "—"))));
  }

  load();
  const timer = setInterval(() => { if (!document.hidden) load(); }, 3000);
  return () => clearInterval(timer);
}

/** "sweep ×3" in the job list, the values in its tooltip. @param {import("./api.js").Sweep} sweep */
const sweepTag = (sweep) => h("span", { class: "tag", "data-sweep": sweep.values.length, title: `A sweep of ${sweep.parameter}: ${sweep.values.join(", ")}` },
  `sweep ×${sweep.values.length}`);

/** @param {HTMLElement} main @param {string} jobId */
export function jobView(main, jobId) {
  const page = new JobPage(main, jobId);
  page.start();
  return () => page.dispose();
}

const live = {
  connecting: ["Connecting…", "pending"],
  live: ["Live", "ok"],
  reconnecting: ["Reconnecting…", "pending"],
  offline: ["Offline, retrying", "error"],
};

class JobPage {
  series = new MetricsSeries();
  /** A sweep's curves, one per member (its progress and metrics events name the member); empty for other jobs. @type {Map<number, MetricsSeries>} */
  members = new Map();
  /** @type {Job | null} */
  job = null;
  /** Highest event id shown: events are numbered across all jobs, increasing, so newer ones have larger numbers. */
  lastEventNumber = 0;
  disposed = false;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  catchUpTimer;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  restartTimer;
  /** @type {ReturnType<typeof setInterval> | undefined} */
  pollTimer;
  /** @type {Promise<void>} */
  refreshing = Promise.resolve();
  refreshQueued = false;

  /** @param {HTMLElement} main @param {string} jobId */
  constructor(main, jobId) {
    this.jobId = jobId;
    this.canvas = h("canvas", { id: "loss-chart", role: "img", "aria-label": "Training chart: no steps yet", "data-steps": "" });
    this.objectiveCanvas = h("canvas", { id: "objective-chart", role: "img", "aria-label": "Objective chart: no steps yet" });
    this.events = h("ol", { id: "events", class: "events hide-metrics", "aria-label": "Event log, newest first" });
    replace(main,
      h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", h("code", null, jobId)),
      h("div", { class: "page-head" },
        h("h1", { tabindex: -1 }, "Job ", h("code", null, jobId)),
        h("span", { id: "job-status-slot" }),
        h("span", { id: "live", class: "live", "data-state": live.connecting[1], role: "status" }, live.connecting[0]),
        h("div", { id: "job-actions", class: "actions" })),
      h("p", { id: "job-error", class: "error", role: "alert", hidden: true }),
      h("section", { class: "card", "aria-labelledby": "progress-title" },
        h("h2", { id: "progress-title" }, "Training"),
        h("progress", { id: "job-progress", max: 1, value: 0, "aria-label": "Steps done" }),
        h("dl", { id: "stats", class: "stats" }),
        h("div", { class: "chart-box", id: "training-chart" }, this.canvas)),
      // A sweep's members, their values, losses and curves: shown (instead of the chart above) for a sweep job.
      h("section", { class: "card", id: "sweep", "aria-labelledby": "sweep-title", hidden: true }),
      // DPO's rewards, margin and preference accuracy, or GRPO's rewards and KL: shown once the progress carries them.
      h("section", { class: "card", id: "objective", "aria-labelledby": "objective-title", hidden: true },
        h("h2", { id: "objective-title" }, "Objective"),
        h("p", { id: "objective-lead", class: "lead" }),
        h("dl", { id: "objective-stats", class: "stats" }),
        h("div", { class: "chart-box" }, this.objectiveCanvas)),
      h("div", { class: "columns" },
        h("section", { class: "card", "aria-labelledby": "details-title" },
          h("h2", { id: "details-title" }, "Details"), h("dl", { id: "job-details", class: "details" })),
        h("section", { class: "card", "aria-labelledby": "checkpoints-title" },
          h("h2", { id: "checkpoints-title" }, "Checkpoints"), h("div", { id: "checkpoints" }, h("p", { class: "empty" }, "None yet: one is saved at the end of every epoch.")))),
      h("section", { class: "card", "aria-labelledby": "events-title" },
        h("div", { class: "section-head" },
          h("h2", { id: "events-title" }, "Events"),
          h("label", { class: "inline" },
            h("input", { type: "checkbox", id: "show-metrics", onchange: (/** @type {Event} */ e) =>
              this.events.classList.toggle("hide-metrics", !(/** @type {HTMLInputElement} */ (e.target)).checked) }),
            " Show every step")),
        this.events));
    this.chart = new LossChart(this.canvas);
    this.sweep = new SweepMembers(/** @type {HTMLElement} */ (main.querySelector("#sweep")), () => { byId("training-chart").hidden = true; });
    this.renderStats();
  }

  async start() {
    // Subscribe before reading the persisted events, so that no step falls between the two.
    this.connection = new HubConnectionBuilder()
      .withUrl("/hubs/jobs", { accessTokenFactory: apiKey })   // sent as access_token on WebSockets, which take no headers
      // Keep trying for as long as the page is open: a restarted service comes back on the same address.
      .withAutomaticReconnect({ nextRetryDelayInMilliseconds: (retry) => Math.min(250 * 2 ** retry.previousRetryCount, 3000) })
      .configureLogging(LogLevel.Warning)
      .build();
    this.connection.on("progress", (m) => this.onProgress(m));
    this.connection.on("status", (m) => this.onStatus(m));
    this.connection.onreconnecting(() => this.setLive("reconnecting"));
    this.connection.onreconnected(() => this.subscribe());
    this.connection.onclose(() => { if (!this.disposed) { this.setLive("offline"); this.restartTimer = setTimeout(() => this.connect(), 1000); } });
    await this.connect();
    if (this.disposed) return;
    this.refresh();
    // A slow safety net for when the hub is unreachable but the REST API is not (the events are the source of truth).
    this.pollTimer = setInterval(() => { if (this.job && !isFinished(this.job.status)) this.refresh(); }, 5000);
  }

  async connect() {
    if (this.disposed || !this.connection || this.connection.state !== HubConnectionState.Disconnected) return;
    try {
      await this.connection.start();
    } catch {
      if (this.disposed) return;
      this.setLive("offline");
      this.restartTimer = setTimeout(() => this.connect(), 1000);
      return;
    }
    await this.subscribe();
  }

  /** Joins the job's group (again, after a reconnect: groups belong to a connection), then catches up from the events. */
  async subscribe() {
    try {
      await this.connection?.invoke("SubscribeToJob", this.jobId);
    } catch {
      // Lost again already: onreconnected or onclose calls back. Still connected: try once more shortly.
      if (!this.disposed && this.connection?.state === HubConnectionState.Connected) this.restartTimer = setTimeout(() => this.subscribe(), 1000);
      return;
    }
    this.setLive("live");
    this.refresh();
  }

  /** @param {keyof typeof live} state */
  setLive(state) {
    if (this.disposed) return;
    const element = byId("live");
    element.dataset.state = live[state][1];
    element.textContent = live[state][0];
  }

  dispose() {
    this.disposed = true;
    clearTimeout(this.catchUpTimer);
    clearTimeout(this.restartTimer);
    clearInterval(this.pollTimer);
    this.connection?.stop();
    this.chart.destroy();
    this.objectiveChart?.destroy();
    this.sweep.destroy();
  }

  /** The curve a step belongs to: its sweep member's, or the job's. @param {unknown} member */
  seriesOf(member) {
    if (typeof member !== "number") return this.series;
    let series = this.members.get(member);
    if (!series) this.members.set(member, (series = new MetricsSeries()));
    return series;
  }

  /** @param {any} m a SignalR "progress" message */
  onProgress(m) {
    if (m.jobId !== this.jobId) return;
    const indicator = byId("live");
    indicator.dataset.messages = String(Number(indicator.dataset.messages ?? 0) + 1);   // steps heard live, not read back
    if (this.seriesOf(m.sweepMember).addProgress(m)) this.renderCurve();
    if (this.job?.status === "queued") this.refresh();
    // The event log and checkpoints follow from the persisted events, a little behind the chart.
    this.catchUpTimer ??= setTimeout(() => { this.catchUpTimer = undefined; this.refresh(); }, 1500);
  }

  /** @param {any} m a SignalR "status" message */
  onStatus(m) {
    if (m.jobId !== this.jobId || !this.job) return;
    this.job = { ...this.job, status: m.status, fine_tuned_model: m.fineTunedModel ?? this.job.fine_tuned_model };
    this.renderJob();
    this.refresh();
  }

  /** Reloads the job, the new events and the checkpoints; calls while one runs are folded into one more run. */
  refresh() {
    if (this.refreshQueued) return this.refreshing;
    this.refreshQueued = true;
    this.refreshing = this.refreshing.then(async () => {
      this.refreshQueued = false;
      if (this.disposed) return;
      try {
        const [job, gotCheckpoint] = await Promise.all([api(`/v1/fine_tuning/jobs/${this.jobId}`), this.catchUp()]);
        const changed = this.job?.status !== job.status;
        this.job = job;
        this.renderJob();
        if (changed || gotCheckpoint || !this.checkpointsLoaded) await this.loadCheckpoints();
      } catch (e) {
        if (!this.job) this.showError(`Could not load the job: ${/** @type {Error} */ (e).message}`);
      }
    });
    return this.refreshing;
  }

  /** Reads the events newer than those shown (newest first, page by page), then adds them oldest first. */
  async catchUp() {
    /** @type {JobEvent[]} */
    const fresh = [];
    let after = "";
    for (;;) {
      const page = await api(`/v1/fine_tuning/jobs/${this.jobId}/events?limit=1000${after}`);
      /** @type {JobEvent[]} */
      const events = page.data;
      const unseen = events.filter((e) => eventNumber(e) > this.lastEventNumber);
      fresh.push(...unseen);
      if (!page.has_more || unseen.length < events.length || !events.length) break;
      after = `&after=${events[events.length - 1].id}`;
    }
    fresh.reverse();
    let curveChanged = false, gotCheckpoint = false;
    for (const event of fresh) {
      curveChanged = this.seriesOf(event.type === "metrics" ? event.data?.sweep_member : undefined).addEvent(event) || curveChanged;
      // An eval event means a checkpoint just got its scores (docs/API.md "evals at checkpoints").
      gotCheckpoint ||= event.message.startsWith("Checkpoint created") || event.type === "eval";
      this.lastEventNumber = Math.max(this.lastEventNumber, eventNumber(event));
      this.events.prepend(h("li", { "data-id": event.id, "data-type": event.type, "data-level": event.level },
        h("time", { datetime: new Date(event.created_at * 1000).toISOString(), title: formatTime(event.created_at) },
          new Date(event.created_at * 1000).toLocaleTimeString()),
        h("span", { class: "message" }, event.message)));
    }
    if (curveChanged) this.renderCurve();
    return gotCheckpoint;
  }

  checkpointsLoaded = false;
  async loadCheckpoints() {
    const list = (await api(`/v1/fine_tuning/jobs/${this.jobId}/checkpoints?limit=100`)).data;
    this.checkpointsLoaded = true;
    if (!list.length) return;
    // With an eval attached (docs/API.md "evals at checkpoints"), each checkpoint carries eval_{criterion} (mean grade)
    // and eval_{criterion}_pass_rate: one column per criterion, linking to the run that scored it.
    const evalId = /** @type {any} */ (this.job)?.eval?.id;
    const criteria = evalId ? [...new Set(list.flatMap((/** @type {any} */ c) => Object.keys(c.metrics)
      .filter((k) => k.startsWith("eval_") && k.endsWith("_pass_rate") && `eval_${k.slice(5, -10)}` in c.metrics)
      .map((k) => k.slice(5, -10))))] : [];
    // A sweep's members share step numbers: each checkpoint names its member's value.
    const sweep = this.job?.sweep;
    replace(byId("checkpoints"), h("div", { class: "table-wrap" }, h("table", { id: "checkpoints-table" },
      h("thead", null, h("tr", null, ...["Step", ...(sweep ? ["Member"] : []), "Training loss", "Validation loss"].map((c) => h("th", { scope: "col" }, c)),
        ...criteria.map((name) => h("th", { scope: "col", "data-criterion": name }, `Eval: ${name}`)),
        h("th", { scope: "col" }, "Model"))),
      h("tbody", null, ...list.map((/** @type {any} */ c) => h("tr", { "data-step": c.step_number, "data-member": c.sweep_member },
        h("td", null, c.step_number),
        sweep ? h("td", { title: typeof c.sweep_member === "number" ? `${sweep.parameter}=${sweep.values[c.sweep_member]}` : null },
          typeof c.sweep_member === "number" ? `${c.sweep_member + 1} (${sweep.values[c.sweep_member]})` : "—") : null,
        h("td", null, formatLoss(c.metrics.train_loss)),
        h("td", null, formatLoss(c.metrics.valid_loss)),
        ...criteria.map((name) => {
          const mean = c.metrics[`eval_${name}`], rate = c.metrics[`eval_${name}_pass_rate`];
          if (mean === undefined || rate === undefined) return h("td", { "data-criterion": name }, "—");
          const text = `${Math.round(rate * 100)} % passed · mean ${Number(mean).toFixed(3)}`;
          return h("td", { class: "number", "data-criterion": name, "data-mean": mean, "data-pass-rate": rate },
            c.metrics.eval_run_id ? h("a", { href: `#/evals/${evalId}/runs/${c.metrics.eval_run_id}` }, text) : text);
        }),
        h("td", null, modelActions(c.fine_tuned_model_checkpoint))))))));
  }

  renderCurve() {
    if (this.members.size) this.renderSweep();
    else this.chart.update(this.series.points, this.series.latest?.totalSteps ?? null);
    this.renderStats();
    this.renderObjective();
  }

  /** The members side by side, once the job (with its sweep's values) has been read. */
  renderSweep() {
    if (this.job?.sweep) this.sweep.update(this.job.sweep, this.members, this.job.status);
  }

  /** @type {LineChart | undefined} */
  objectiveChart;

  /** The objective's figures of the latest step and their curves (created once the card is visible, so it has a size). */
  renderObjective() {
    const names = this.series.objectiveNames;
    if (!names.length) return;
    const card = byId("objective");
    if (card.hidden) {
      card.hidden = false;
      this.objectiveChart = new LineChart(this.objectiveCanvas, {
        left: "Reward, margin, KL", right: "Accuracy, grader reward", rightRange: [0, 1],
        describe: (series) => `Objective chart: ${series.map((s) => `${s.label} over ${s.points.length} steps`).join("; ")}`,
      });
    }
    const type = this.job?.method?.type;
    byId("objective-lead").textContent = type === "dpo"
      ? "DPO: each answer's implicit reward is β times its log-probability ratio to the reference model; the margin is chosen minus rejected, and the accuracy how often the chosen answer's reward is higher."
      : type === "reinforcement"
        ? "Reinforcement (GRPO): the grader's mean reward of the sampled answers, their spread within each prompt's group, the KL to the starting model, and the held-out reward at each evaluation."
        : "What the training objective measures at each step.";
    const charted = names.filter((n) => objectiveMetric(n).axis !== null);
    this.objectiveChart?.update(charted.map((name, i) => {
      const metric = objectiveMetric(name);
      return { label: metric.label, points: this.series.objectiveSeries(name), color: palette[i % palette.length],
        axis: metric.axis ?? "left", markers: metric.markers, dashed: metric.axis === "right" };
    }));
    this.objectiveCanvas.dataset.names = charted.join(",");
    const latest = (/** @type {string} */ name) => { const s = this.series.objectiveSeries(name); return s[s.length - 1]?.y; };
    replace(byId("objective-stats"), ...names.map((name) => h("div", null,
      h("dt", null, objectiveMetric(name).label), h("dd", { "data-objective": name }, formatObjective(latest(name))))));
  }

  renderStats() {
    // A sweep's members step together: its figures are those of the members' latest steps; each member's losses and
    // learning rate are in the members' table.
    const sweep = this.members.size > 0;
    /** @type {import("./series.js").MetricPoint[]} */
    const latest = sweep ? [...this.members.values()].flatMap((s) => (s.latest ? [s.latest] : [])) : this.series.latest ? [this.series.latest] : [];
    /** @type {import("./series.js").MetricPoint | undefined} */
    const p = latest.reduce((a, b) => (b.step > a.step ? b : a), latest[0]);
    const status = this.job?.status;
    const total = p?.totalSteps ?? null;
    const progress = /** @type {HTMLProgressElement} */ (byId("job-progress"));
    progress.max = total ?? 1;
    progress.value = status === "succeeded" ? progress.max : (p?.step ?? 0);
    const validLoss = [...this.series.points].reverse().find((x) => x.validLoss !== null)?.validLoss;
    // Each member's tokens/s is its own tokens over the run's time, so together they are what the fused steps trained.
    const tokensPerSecond = latest.reduce((sum, x) => sum + x.tokensPerSecond, 0);
    const stats = [
      ["Step", p ? `${p.step} / ${total}` : "—"],
      ["Epoch", p ? String(p.epoch) : "—"],
      ...(sweep ? [["Members", String(this.job?.sweep?.values.length ?? this.members.size)]] : [
        ["Training loss", formatLoss(p?.trainLoss)],
        ["Validation loss", formatLoss(validLoss)],
        ["Learning rate", formatRate(p?.learningRate)],
      ]),
      ["Tokens/s", p ? formatNumber(Math.round(tokensPerSecond)) : "—"],
      // The training process at the latest step (shared by the jobs it trains together).
      ["Worker CPU", p?.worker ? `${Math.round(p.worker.cpuPercent)} % of ${p.worker.cpuCount * 100} %` : "—"],
      ["Worker memory", p?.worker ? formatBytes(p.worker.memoryBytes) : "—"],
      ["ETA", status === "running" && p ? formatDuration(p.etaSeconds) : status && isFinished(status) ? "done" : "—"],
    ];
    replace(byId("stats"), ...stats.map(([term, value]) => h("div", null, h("dt", null, term), h("dd", { "data-stat": term }, value))));
  }

  renderJob() {
    const job = this.job;
    if (!job) return;
    replace(byId("job-status-slot"), statusBadge(job.status, "job-status"));
    const error = byId("job-error");
    error.hidden = !job.error;
    error.textContent = job.error ? `Failed: ${job.error.message}` : "";
    /** @type {[string, string, string][]} */
    const actions = [];
    if (["queued", "running"].includes(job.status)) actions.push(["Pause", "pause", "secondary"]);
    if (job.status === "paused") actions.push(["Resume", "resume", "secondary"]);
    if (!isFinished(job.status)) actions.push(["Cancel", "cancel", "danger"]);
    replace(byId("job-actions"), ...actions.map(([label, verb, kind]) => h("button", { type: "button", class: kind, onclick: () => this.act(verb) }, label)),
      h("a", { class: "button secondary", href: `#/compare?jobs=${job.id}` }, "Compare with other runs"),
      job.fine_tuned_model && job.status === "succeeded"
        ? h("a", { class: "button", id: "open-playground", href: `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}` }, "Open in playground") : null);
    const a = job.adapter, hp = job.hyperparameters;
    const details = [
      ["Base model", job.model],
      ["Fine-tuned model", job.fine_tuned_model ? h("code", { class: "model-name" }, job.fine_tuned_model) : "—"],
      ...(pretraining(job)
        ? [["Method", "Pre-training of a built-in base model: every weight, from random (its settings are in the model's description)"]]
        : [
          ["Objective", job.method?.type ?? "supervised"],
          ["Method", `${a.type.toUpperCase()}: rank ${a.rank}, alpha ${a.alpha}, dropout ${a.dropout}`],
          ["Target modules", a.target_modules.join(", ")],
          ["Hyperparameters", `${hp.n_epochs} epochs, batch size ${hp.batch_size}, learning rate × ${hp.learning_rate_multiplier}` +
            (hp.early_stopping_patience ? `, early stopping after ${hp.early_stopping_patience}` : "")],
        ]),
      ...(job.sweep ? [["Sweep", `${job.sweep.parameter}: ${job.sweep.values.join(", ")}` +
        (typeof job.sweep.best_member === "number" ? ` (best: ${job.sweep.values[job.sweep.best_member]})` : "")]] : []),
      ["Training file", h("code", null, job.training_file)],
      ["Validation file", job.validation_file ? h("code", null, job.validation_file) : "—"],
      ["Tokens", job.trained_tokens !== null ? `${formatNumber(job.trained_tokens)} trained` : `${formatNumber(job.estimated_trained_tokens)} estimated`],
      ["Seed", String(job.seed)],
      ["Created", formatTime(job.created_at)],
      ["Finished", formatTime(job.finished_at)],
    ];
    replace(byId("job-details"), ...details.map(([term, value]) => h("div", null, h("dt", null, term), h("dd", null, value))));
    this.renderStats();
    this.renderObjective();   // its description depends on the job's method
    this.renderSweep();       // its best member and newest checkpoints come with the job
  }

  /** @param {string} verb */
  async act(verb) {
    try {
      this.job = await api(`/v1/fine_tuning/jobs/${this.jobId}/${verb}`, { method: "POST" });
      this.renderJob();
      toast(`Job ${this.job?.status}`);
      this.refresh();
    } catch (e) {
      toast(/** @type {Error} */ (e).message, "error");
    }
  }

  /** @param {string} message */
  showError(message) {
    const error = byId("job-error");
    error.hidden = false;
    error.textContent = message;
  }
}

/** @param {JobEvent} event */
const eventNumber = (event) => Number(event.id.slice("ftevent-".length));
