using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using AdapterService.Core.Training;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Training;

/// <summary>
/// DPO ("Direct Preference Optimization: Your Language Model is Secretly a Reward Model", Rafailov et al.,
/// https://arxiv.org/abs/2305.18290) checked against its equation 7 written out plainly in float64:
/// L = −(1/n) Σ log σ(β·(log π(y_w|x) − log π_ref(y_w|x)) − β·(log π(y_l|x) − log π_ref(y_l|x))).
/// </summary>
public sealed class PreferenceTrainerTests
{
    public PreferenceTrainerTests() => TorchRuntime.EnsureReady();

    static TokenizedExample Sequence(string prompt, string answer)
    {
        var (ids, train) = ModelText.BuiltIn.EncodeExample(new CompletionExample(0, prompt, answer), null)[0];
        return new TokenizedExample([.. ids], [.. train]);
    }

    /// <summary>Pairs of different prompt and answer lengths, so rows are padded and answers differ in length within a pair.</summary>
    static readonly List<PreferencePair> Pairs =
    [
        new(Sequence("q1:", "yes"), Sequence("q1:", "no")),
        new(Sequence("question two:", "ok"), Sequence("question two:", "not ok!")),
        new(Sequence("3?", "a b c"), Sequence("3?", "x")),
        new(Sequence("four, four:", "fine"), Sequence("four, four:", "bad")),
    ];

    static double LogSigmoid(double z) => z >= 0 ? -Math.Log(1 + Math.Exp(-z)) : z - Math.Log(1 + Math.Exp(z));

    [Fact]
    public void TheLossAndItsGradientsAreEquation7()
    {
        const double beta = 0.3;
        var random = new Random(4);
        double[] Draw() => Enumerable.Range(0, 5).Select(_ => -20 * random.NextDouble()).ToArray();
        double[] pc = Draw(), pr = Draw(), rc = Draw(), rr = Draw();

        using var scope = NewDisposeScope();
        var policyChosen = tensor(pc).requires_grad_();
        var policyRejected = tensor(pr).requires_grad_();
        var (loss, chosenReward, rejectedReward) = DpoLoss.Of(policyChosen, policyRejected, tensor(rc), tensor(rr), beta);
        loss.mean().backward();

        int n = pc.Length;
        for (int i = 0; i < n; i++)
        {
            double z = beta * (pc[i] - rc[i]) - beta * (pr[i] - rr[i]);
            Assert.Equal(-LogSigmoid(z), loss[i].item<double>(), 12);
            Assert.Equal(beta * (pc[i] - rc[i]), chosenReward[i].item<double>(), 12);
            Assert.Equal(beta * (pr[i] - rr[i]), rejectedReward[i].item<double>(), 12);
            // ∂L/∂log π(y_w|x) = −β·σ(−z)/n and ∂L/∂log π(y_l|x) = +β·σ(−z)/n.
            double sigmoidMinusZ = 1 / (1 + Math.Exp(z));
            Assert.Equal(-beta * sigmoidMinusZ / n, policyChosen.grad![i].item<double>(), 12);
            Assert.Equal(beta * sigmoidMinusZ / n, policyRejected.grad![i].item<double>(), 12);
        }
    }

    /// <summary>
    /// One step of the trainer computes the gradient of equation 7 over sequence log-probabilities summed from each
    /// sequence run alone (no padding) and accumulated in float64, with the reference the base (adapter switched off).
    /// </summary>
    [Theory]
    [InlineData(false, null)]
    [InlineData(true, null)]
    [InlineData(false, 3)]
    public void AStepFollowsTheGradientOfEquation7(bool referenceIsAdapter, int? microBatch)
    {
        const double beta = 0.5;
        using var scope = NewDisposeScope();
        using var model = Create();
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["all-linear"] });
        Randomize(adapter, 7);                                   // the policy differs from the base from the start
        var pairs = Pairs.Concat(Pairs.Take(1)).ToList();        // five pairs: a micro-batch of 3 leaves one of 2

        // The reference: the base alone, or the adapter as it is before training.
        ClearAdapters(model);
        if (referenceIsAdapter) adapter.Attach(model);
        double[,] reference = new double[pairs.Count, 2];
        using (no_grad())
            for (int i = 0; i < pairs.Count; i++)
                (reference[i, 0], reference[i, 1]) = (NaiveLogProb(model, pairs[i].Chosen).item<double>(), NaiveLogProb(model, pairs[i].Rejected).item<double>());

        // The policy: base and adapter; equation 7 in float64, back-propagated, then clipped to norm 1 as the trainer clips.
        ClearAdapters(model);
        adapter.Attach(model);
        var loss = zeros(1, dtype: ScalarType.Float64);
        var expectedMargins = new List<double>();
        for (int i = 0; i < pairs.Count; i++)
        {
            var chosen = NaiveLogProb(model, pairs[i].Chosen);
            var rejected = NaiveLogProb(model, pairs[i].Rejected);
            var z = beta * (chosen - reference[i, 0]) - beta * (rejected - reference[i, 1]);
            loss = loss + (1 + (-z).exp()).log();                // −log σ(z)
            expectedMargins.Add(z.item<double>());
        }
        loss = loss / pairs.Count;
        loss.backward();
        var parameters = adapter.Parameters().ToList();
        double norm = Math.Sqrt(parameters.Sum(p => p.grad!.to_type(ScalarType.Float64).pow(2).sum().item<double>()));
        var expected = parameters.Select(p => (p.grad! * Math.Min(1, 1 / (norm + 1e-6))).clone()).ToList();
        foreach (var p in parameters) p.grad!.zero_();

        var before = parameters.Select(p => p.detach().clone()).ToList();
        var progress = new List<TrainingProgress>();
        using (var trainer = new PreferenceTrainer(model, adapter, pairs, null, new Hyperparameters(1, pairs.Count, 1e-3), beta, seed: 1,
                   referenceIsAdapter, new TrainingSpeedOptions { MicroBatchSize = microBatch }))
            trainer.Run(progress.Add, CancellationToken.None);

        var step = Assert.Single(progress);
        Assert.Equal(loss.item<double>(), step.TrainLoss, 4);
        Assert.Equal(expectedMargins.Average(), step.Metrics!["reward_margin"], 4);
        Assert.Equal(expectedMargins.Count(m => m > 0) / (double)pairs.Count, step.Metrics["preference_accuracy"]);
        Assert.Equal(step.TrainAccuracy, step.Metrics["preference_accuracy"]);
        if (referenceIsAdapter) Assert.Equal(Math.Log(2), step.TrainLoss, 4);   // the policy starts as the reference
        foreach (var (p, e) in parameters.Zip(expected)) AssertClose(e, p.grad!, 2e-4);
        Assert.All(parameters.Zip(before), p => Assert.True((p.First - p.Second).abs().max().item<float>() > 0, "the adapter moved"));
    }

    /// <summary>log π(y|x) of one sequence run alone: its trained targets' log-probabilities summed in float64 (with gradient).</summary>
    static Tensor NaiveLogProb(LlamaForCausalLM model, TokenizedExample e)
    {
        var ids = tensor(e.Ids.Select(i => (long)i).ToArray(), [1, e.Ids.Length]);
        var logProbs = nn.functional.log_softmax(model.forward(ids)[0].to_type(ScalarType.Float64), -1);   // [t, vocab]
        var sum = zeros(1, dtype: ScalarType.Float64);
        for (int i = 0; i + 1 < e.Ids.Length; i++)
            if (e.Train[i + 1]) sum = sum + logProbs[i, e.Ids[i + 1]];
        return sum.squeeze();
    }

    [Fact]
    public void TrainingRaisesThePreferredAnswersAboveTheReference()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["all-linear"] });
        var progress = new List<TrainingProgress>();
        using var trainer = new PreferenceTrainer(model, adapter, Pairs, Pairs, new Hyperparameters(12, 2, 0.02), 0.1, seed: 3, referenceIsAdapter: false);
        var (startLoss, startAccuracy) = trainer.Evaluate();
        trainer.Run(progress.Add, CancellationToken.None);
        var (loss, accuracy) = trainer.Evaluate();

        Assert.Equal(Math.Log(2), startLoss, 3);                 // LoRA starts as the base: every reward is 0
        Assert.Equal(0, startAccuracy);
        Assert.True(loss < 0.2, $"DPO loss {startLoss:F3} → {loss:F3}");
        Assert.Equal(1, accuracy);
        Assert.True(progress[^1].Metrics!["reward_margin"] > 1, $"margin {progress[^1].Metrics!["reward_margin"]:F3}");
    }

    [Fact]
    public void APreferencePairIsTwoSequencesTrainedOnTheirAnswersOnly()
    {
        var text = ModelText.BuiltIn;
        var pair = new PreferenceExample(1, [new("system", "Be brief.", false), new("user", "Hi?", false)],
            new("assistant", "Hello!", true), new("assistant", "Go away", true));
        var sequences = text.EncodeExample(pair, null);

        Assert.Equal(2, sequences.Count);
        string Trained(TokenSequence s) => text.Tokenizer.Decode(s.Ids.Where((_, i) => s.Train[i]).ToArray(), skipSpecialTokens: true);
        Assert.StartsWith("Hello!", Trained(sequences[0]));
        Assert.StartsWith("Go away", Trained(sequences[1]));
        // The same prompt, rendered with the chat template, before each answer.
        int Prompt(TokenSequence s) => Array.IndexOf(s.Train, true);
        Assert.Equal(sequences[0].Ids[..Prompt(sequences[0])], sequences[1].Ids[..Prompt(sequences[1])]);
        Assert.Equal(text.EncodeExample(new ChatExample(1, [.. pair.Input, pair.Preferred]), null)[0].Ids, sequences[0].Ids);
    }
}
