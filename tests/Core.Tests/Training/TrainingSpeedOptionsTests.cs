using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using AdapterService.Core.Training;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Training;

/// <summary>
/// Packing, micro-batches (gradient accumulation), gradient checkpointing and bf16 change how a step is computed, not what
/// it computes: each is compared with the plain computation on the same random examples, model, adapter and seed.
/// </summary>
public sealed class TrainingSpeedOptionsTests
{
    public TrainingSpeedOptionsTests() => TorchRuntime.EnsureReady();

    /// <summary>Examples of 3-40 tokens whose first few (a prompt) are not trained on.</summary>
    static List<TokenizedExample> Examples(int count, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
        {
            int length = random.Next(3, 41), prompt = random.Next(1, length - 1);
            return new TokenizedExample(Enumerable.Range(0, length).Select(_ => random.Next(TinyLlama.Config.VocabSize)).ToArray(),
                Enumerable.Range(0, length).Select(i => i > prompt).ToArray());
        }).ToList();
    }

    sealed record Outcome(double Loss, Dictionary<string, float[]> Gradients, Dictionary<string, float[]> Weights);

    /// <summary>
    /// One optimizer step over all <paramref name="data"/> (one batch) with LoRA on every linear layer, A and B random so every
    /// gradient is non-zero; the gradients are read after the step (clipped as the optimizer saw them).
    /// </summary>
    static Outcome OneStep(List<TokenizedExample> data, TrainingSpeedOptions options, double dropout = 0, AdapterConfig? config = null)
    {
        using var scope = NewDisposeScope();
        using var model = TinyLlama.Create();
        using var adapter = TrainableAdapter.Create(model, config ?? new LoraConfig { Rank = 4, Alpha = 8, Dropout = dropout, TargetModules = ["all-linear"] }, seed: 3);
        using (var g = new Generator(11))
        using (no_grad())
            foreach (var p in adapter.Parameters()) p.normal_(0, 0.1, g);
        using var trainer = new LanguageModelTrainer(model, adapter, data, new Hyperparameters(1, data.Count, 0.01), padId: 0, seed: 5, options);
        trainer.Run(_ => { }, CancellationToken.None);
        return new Outcome(trainer.LastLoss,
            adapter.SavedParameters().ToDictionary(p => p.Key, p => p.Value.grad!.data<float>().ToArray()),
            adapter.SavedParameters().ToDictionary(p => p.Key, p => p.Value.data<float>().ToArray()));
    }

    static void AssertClose(Dictionary<string, float[]> expected, Dictionary<string, float[]> actual, double tolerance)
    {
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        double scale = expected.Values.Max(v => v.Max(Math.Abs));
        Assert.True(scale > 0, "the gradients are all zero: the comparison would prove nothing");
        foreach (var (key, e) in expected)
            for (int i = 0; i < e.Length; i++)
                Assert.True(Math.Abs(e[i] - actual[key][i]) <= tolerance * scale, $"{key}[{i}]: {e[i]} vs {actual[key][i]} (scale {scale})");
    }

    [Fact]
    public void PackingGivesTheLossAndGradientsOfPaddedRows()
    {
        var data = Examples(12, seed: 1);
        var padded = OneStep(data, new TrainingSpeedOptions { Packing = false });
        var packed = OneStep(data, new TrainingSpeedOptions { Packing = true });
        Assert.Equal(padded.Loss, packed.Loss, 1e-5);
        AssertClose(padded.Gradients, packed.Gradients, 1e-5);
    }

    [Fact]
    public void MicroBatchesGiveTheUpdateOfOneBatch()
    {
        var data = Examples(12, seed: 2);
        var whole = OneStep(data, new TrainingSpeedOptions());
        var accumulated = OneStep(data, new TrainingSpeedOptions { MicroBatchSize = 4 });
        var uneven = OneStep(data, new TrainingSpeedOptions { MicroBatchSize = 5, Packing = false });   // 5 + 5 + 2 examples
        Assert.Equal(whole.Loss, accumulated.Loss, 1e-5);
        Assert.Equal(whole.Loss, uneven.Loss, 1e-5);
        AssertClose(whole.Gradients, accumulated.Gradients, 1e-5);
        AssertClose(whole.Gradients, uneven.Gradients, 1e-5);
        AssertClose(whole.Weights, accumulated.Weights, 1e-5);
    }

    [Fact]
    public void CheckpointingGivesTheSameGradientsEvenWithDropout()
    {
        var data = Examples(8, seed: 3);
        foreach (double dropout in new[] { 0.0, 0.3 })
        {
            var plain = OneStep(data, new TrainingSpeedOptions(), dropout);
            var checkpointed = OneStep(data, new TrainingSpeedOptions { GradientCheckpointing = true }, dropout);
            Assert.Equal(plain.Loss, checkpointed.Loss, 1e-5);
            AssertClose(plain.Gradients, checkpointed.Gradients, 1e-5);
        }
    }

    [Fact]
    public void AdaptersWhoseTokensInteractIgnorePackingAndCheckpointing()
    {
        // Lily's router mean spans a sequence: packing would mix examples, so the trainer keeps padded rows for it.
        var data = Examples(8, seed: 4);
        var lily = new LilyConfig { Rank = 4, NumExperts = 2, TargetModules = ["q_proj", "v_proj"] };
        var padded = OneStep(data, new TrainingSpeedOptions { Packing = false }, config: lily);
        var asked = OneStep(data, new TrainingSpeedOptions { Packing = true, GradientCheckpointing = true }, config: lily);
        Assert.Equal(padded.Loss, asked.Loss, 1e-6);
        AssertClose(padded.Gradients, asked.Gradients, 1e-6);
    }

    [Fact]
    public void TrainingOnABf16BaseFollowsFloat32()
    {
        var data = Examples(8, seed: 5);
        List<double> Losses(BasePrecision precision)
        {
            using var scope = NewDisposeScope();
            using var model = precision.Apply(TinyLlama.Create());
            using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["all-linear"] }, seed: 3);
            var losses = new List<double>();
            using (var trainer = new LanguageModelTrainer(model, adapter, data, new Hyperparameters(6, 4, 0.02), padId: 0, seed: 5))
                trainer.Run(p => losses.Add(p.TrainLoss), CancellationToken.None);
            Assert.All(adapter.Parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));   // the adapter trains in float32
            return losses;
        }
        var fp32 = Losses(BasePrecision.Float32);
        var bf16 = Losses(BasePrecision.BFloat16);
        Assert.Equal(12, bf16.Count);
        Assert.True(fp32[^1] < fp32[0] * 0.9, $"fp32 training should learn: {fp32[0]:F3} → {fp32[^1]:F3}");
        // bf16 keeps 8 bits of mantissa (relative rounding 2⁻⁸ ≈ 0.4 %) in the base's matmuls: the losses stay within 2 %.
        for (int i = 0; i < fp32.Count; i++)
            Assert.True(Math.Abs(bf16[i] - fp32[i]) <= 0.02 * fp32[i], $"step {i + 1}: bf16 {bf16[i]:F4}, fp32 {fp32[i]:F4}");
        Assert.NotEqual(fp32, bf16);                                                   // bf16 did compute in bf16
    }
}

public sealed class TokenRowsTests
{
    public TokenRowsTests() => TorchRuntime.EnsureReady();

    static TokenizedExample Example(int length, int first) =>
        new(Enumerable.Range(first, length).ToArray(), Enumerable.Range(0, length).Select(i => i >= 1).ToArray());

    [Fact]
    public void PackedRowsHoldSeveralExamplesWithABlockDiagonalCausalMask()
    {
        using var scope = NewDisposeScope();
        // Inputs of 6, 2, 3 and 1 tokens: rows of 6 hold [6] and [3, 2, 1] (longest first, first fit).
        var rows = TokenRows.Collate([Example(7, 100), Example(3, 200), Example(4, 300), Example(2, 400)], padId: 0, pack: true);
        Assert.Equal(new long[] { 2, 6 }, rows.Inputs.shape);
        Assert.Equal(new long[] { 100, 101, 102, 103, 104, 105, 300, 301, 302, 200, 201, 400 }, rows.Inputs.data<long>().ToArray());
        Assert.Equal(new long[] { 0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 0 }, rows.Positions.data<long>().ToArray());
        Assert.Equal(new long[] { 101, 102, 103, 104, 105, 106, 301, 302, 303, 201, 202, 401 }, rows.Targets.data<long>().ToArray());
        Assert.Equal(Enumerable.Range(0, 12).Select(i => (long)i), rows.TrainedPositions.data<long>().ToArray());
        Assert.Equal(rows.Targets.data<long>().ToArray(), rows.TrainedTargets.data<long>().ToArray());
        Assert.Equal(new long[] { 2, 1, 6, 6 }, rows.Mask.shape);
        var second = rows.Mask[1, 0];                                                   // [6, 6]: blocks of 3, 2 and 1
        bool[,] expected =
        {
            { true, false, false, false, false, false },
            { true, true, false, false, false, false },
            { true, true, true, false, false, false },
            { false, false, false, true, false, false },
            { false, false, false, true, true, false },
            { false, false, false, false, false, true },
        };
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < 6; j++)
                Assert.True(expected[i, j] == second[i, j].item<bool>(), $"mask[{i}, {j}]");
    }

    [Fact]
    public void PaddedRowsHoldOneExampleEach()
    {
        using var scope = NewDisposeScope();
        var rows = TokenRows.Collate([Example(4, 100), Example(2, 200)], padId: 7, pack: false);
        Assert.Equal(new long[] { 100, 101, 102, 200, 7, 7 }, rows.Inputs.data<long>().ToArray());
        Assert.Equal(new long[] { 101, 102, 103, 201, TokenRows.IgnoreIndex, TokenRows.IgnoreIndex }, rows.Targets.data<long>().ToArray());
        Assert.Equal(new long[] { 3, 3 }, rows.Mask.shape);
        Assert.Equal(new long[] { 0, 1, 2, 3 }, rows.TrainedPositions.data<long>().ToArray());      // padding is never trained
    }
}
