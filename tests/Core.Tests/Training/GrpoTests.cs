using AdapterService.Core.Torch;
using AdapterService.Core.Training;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Training;

/// <summary>GRPO's advantages, KL term, loss and gradient against a plain float64 reading of the DeepSeekMath equations.</summary>
public sealed class GrpoTests
{
    public GrpoTests() => TorchRuntime.EnsureReady();

    [Fact]
    public void AdvantagesAreNormalisedWithinTheGroup()
    {
        double[] rewards = [1, 0, 0.5, 0.5];
        double mean = 0.5, std = Math.Sqrt((0.25 + 0.25 + 0 + 0) / 4);
        var advantages = Grpo.GroupAdvantages(rewards);
        for (int i = 0; i < 4; i++) Assert.Equal((rewards[i] - mean) / (std + Grpo.Epsilon), advantages[i], 12);
        Assert.All(Grpo.GroupAdvantages([0.7, 0.7, 0.7]), a => Assert.Equal(0, a, 9));   // equal rewards teach nothing
    }

    /// <summary>Naive: per sample i, (1/|o_i|) Σ_t [−exp(lp − lp_old)·A_i + β·(exp(ref − lp) − (ref − lp) − 1)], averaged over samples.</summary>
    static double NaiveLoss(double[][] logits, double[][] referenceLogits, int[] targets, int[] sampleOf, int[] lengths, double[] advantages,
        double[] oldLogprobs, double beta)
    {
        double total = 0;
        for (int t = 0; t < targets.Length; t++)
        {
            double lp = LogSoftmax(logits[t], targets[t]), reference = LogSoftmax(referenceLogits[t], targets[t]);
            double kl = Math.Exp(reference - lp) - (reference - lp) - 1;
            total += (-Math.Exp(lp - oldLogprobs[t]) * advantages[sampleOf[t]] + beta * kl) / lengths[sampleOf[t]] / lengths.Length;
        }
        return total;
    }

    static double LogSoftmax(double[] row, int index)
    {
        double max = row.Max(), sum = row.Sum(x => Math.Exp(x - max));
        return row[index] - max - Math.Log(sum);
    }

    [Fact]
    public void LossKlAndGradientMatchTheNaiveEquation()
    {
        var random = new Random(3);
        const int vocab = 5;
        const double beta = 0.1;
        int[] lengths = [3, 1, 2];                                        // three samples' completion lengths
        int[] sampleOf = [0, 0, 0, 1, 2, 2];
        int n = sampleOf.Length;
        double[][] logits = [.. Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, vocab).Select(_ => random.NextDouble() * 4 - 2).ToArray())];
        double[][] referenceLogits = [.. logits.Select(row => row.Select(x => x + random.NextDouble() - 0.5).ToArray())];
        int[] targets = [.. Enumerable.Range(0, n).Select(_ => random.Next(vocab))];
        double[] advantages = Grpo.GroupAdvantages([0.9, 0.1, 0.4]);

        var logitsTensor = tensor(logits.SelectMany(r => r).ToArray(), [n, vocab], ScalarType.Float64).requires_grad_();
        var targetTensor = tensor(targets.Select(t => (long)t).ToArray());
        Tensor Pick(Tensor l) => nn.functional.log_softmax(l, 1).gather(1, targetTensor.unsqueeze(1)).squeeze(1);
        var referenceLogprobs = Pick(tensor(referenceLogits.SelectMany(r => r).ToArray(), [n, vocab], ScalarType.Float64));
        var tokenAdvantages = tensor(sampleOf.Select(s => advantages[s]).ToArray(), ScalarType.Float64);
        var weights = tensor(sampleOf.Select(s => 1.0 / lengths[s] / lengths.Length).ToArray(), ScalarType.Float64);
        var (loss, kl) = Grpo.Loss(Pick(logitsTensor), referenceLogprobs, tokenAdvantages, weights, beta);
        loss.backward();

        double[] old = [.. Enumerable.Range(0, n).Select(t => LogSoftmax(logits[t], targets[t]))];
        Assert.Equal(NaiveLoss(logits, referenceLogits, targets, sampleOf, lengths, advantages, old, beta), loss.item<double>(), 10);
        double naiveKl = Enumerable.Range(0, n).Sum(t =>
        {
            double d = LogSoftmax(referenceLogits[t], targets[t]) - old[t];
            return (Math.Exp(d) - d - 1) / lengths[sampleOf[t]] / lengths.Length;
        });
        Assert.Equal(naiveKl, kl.item<double>(), 12);
        Assert.True(naiveKl > 0);

        // The gradient: central differences of the naive loss with π_old held at its value (what the stop-gradient means).
        var gradient = logitsTensor.grad!.data<double>().ToArray();
        const double h = 1e-6;
        for (int t = 0; t < n; t++)
            for (int v = 0; v < vocab; v++)
            {
                double keep = logits[t][v];
                logits[t][v] = keep + h;
                double up = NaiveLoss(logits, referenceLogits, targets, sampleOf, lengths, advantages, old, beta);
                logits[t][v] = keep - h;
                double down = NaiveLoss(logits, referenceLogits, targets, sampleOf, lengths, advantages, old, beta);
                logits[t][v] = keep;
                Assert.Equal((up - down) / (2 * h), gradient[t * vocab + v], 7);
            }
    }

    [Fact]
    public void WithoutKlTheGradientIsTheAdvantageWeightedScore()
    {
        // β = 0 and π = π_ref: the loss is −Σ w·A (value) and its gradient −Σ w·A·∇log π (the policy gradient).
        var logits = tensor(new double[] { 0.3, -0.2, 1.0, 0.1 }, [2, 2], ScalarType.Float64).requires_grad_();
        var lp = nn.functional.log_softmax(logits, 1).gather(1, tensor(new long[] { 0, 1 }).unsqueeze(1)).squeeze(1);
        var (loss, kl) = Grpo.Loss(lp, lp.detach(), tensor(new[] { 1.0, -1.0 }, ScalarType.Float64), tensor(new[] { 0.5, 0.5 }, ScalarType.Float64), 0);
        Assert.Equal(0, loss.item<double>(), 12);
        Assert.Equal(0, kl.item<double>(), 12);
        loss.backward();
        double p0 = 1 / (1 + Math.Exp(-0.5));                              // softmax([0.3, −0.2])[0]
        var g = logits.grad!.data<double>().ToArray();
        Assert.Equal(-0.5 * (1 - p0), g[0], 12);                            // −w·A·∂log p0/∂l0
        Assert.Equal(-0.5 * -(1 - p0), g[1], 12);
    }
}
