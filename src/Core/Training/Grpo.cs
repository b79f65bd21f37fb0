using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>
/// The math of Group Relative Policy Optimization (Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical
/// Reasoning in Open Language Models", 2024, https://arxiv.org/abs/2402.03300, §4.1): advantages normalised within each
/// prompt's group of samples (outcome supervision), and the clipped-ratio objective with a KL penalty to a reference
/// policy by the unbiased k3 estimator. One policy update per group of samples (the paper's μ = 1), so the ratio
/// π/π_old is 1 in value and the clip never binds; its gradient is that of log π.
/// </summary>
public static class Grpo
{
    /// <summary>Added to the group's standard deviation so that a group whose rewards are all equal gets advantages of 0, not NaN.</summary>
    public const double Epsilon = 1e-4;

    /// <summary>
    /// Â_i = (r_i − mean(r)) / (std(r) + ε) over one group's rewards (std: the population standard deviation, as the
    /// paper's "std(r)"). A group whose samples all score the same teaches nothing: every advantage is 0.
    /// </summary>
    public static double[] GroupAdvantages(IReadOnlyList<double> rewards)
    {
        double mean = rewards.Average();
        double std = Math.Sqrt(rewards.Sum(r => (r - mean) * (r - mean)) / rewards.Count);
        return rewards.Select(r => (r - mean) / (std + Epsilon)).ToArray();
    }

    /// <summary>
    /// The GRPO loss over the completion tokens of a batch of samples, flattened: token t of sample i has the policy's
    /// log-probability <paramref name="logprobs"/>[t] (with gradient), the reference's <paramref name="referenceLogprobs"/>[t],
    /// its sample's advantage <paramref name="advantages"/>[t], and the weight <paramref name="weights"/>[t] = 1 / (|o_i| · G·B),
    /// so the sum is the paper's mean over samples of each sample's mean over its tokens:
    /// <code>
    /// L = Σ_t w_t · ( −(π/π_old)_t · Â_t + β · KL_t ),   KL_t = π_ref/π − log(π_ref/π) − 1   (k3, ≥ 0)
    /// </code>
    /// Returns the loss and the mean KL (the same weighting, no gradient).
    /// </summary>
    public static (Tensor Loss, Tensor Kl) Loss(Tensor logprobs, Tensor referenceLogprobs, Tensor advantages, Tensor weights, double beta)
    {
        var ratio = (logprobs - logprobs.detach()).exp();                          // 1, with the gradient of log π
        var logRatio = referenceLogprobs - logprobs;                              // log(π_ref / π)
        var kl = logRatio.exp() - logRatio - 1;
        var loss = (weights * (-ratio * advantages + beta * kl)).sum();
        Tensor meanKl;
        using (no_grad()) meanKl = (weights * kl).sum();
        return (loss, meanKl);
    }
}
