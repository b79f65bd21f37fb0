// @ts-check
// What DPO and reinforcement (GRPO) jobs measure beyond loss, as their progress reports it (ProgressMessage.Objective):
// how each figure is called, and which axis it belongs on. Rewards of graders and accuracies lie in [0, 1] (right
// axis); DPO's implicit rewards and margins, and the KL, are unbounded (left axis).

/** @type {Record<string, { label: string, axis: "left" | "right" | null, markers?: boolean }>} */
const known = {
  reward_margin: { label: "Reward margin", axis: "left" },
  chosen_reward: { label: "Chosen reward", axis: "left" },
  rejected_reward: { label: "Rejected reward", axis: "left" },
  preference_accuracy: { label: "Preference accuracy", axis: "right" },
  reward_mean: { label: "Reward (mean)", axis: "right" },
  valid_reward_mean: { label: "Held-out reward", axis: "right", markers: true },
  reward_std: { label: "Reward spread in groups", axis: "right" },
  kl: { label: "KL to the start", axis: "left" },
  completion_tokens: { label: "Completion tokens", axis: null },   // a length, not a score: in the figures only
};

/** @param {string} name */
export function objectiveMetric(name) {
  return known[name] ?? { label: name.replaceAll("_", " "), axis: /** @type {const} */ ("left") };
}

/** @param {number | undefined} value */
export const formatObjective = (value) => (value === undefined ? "—" : Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(4));
