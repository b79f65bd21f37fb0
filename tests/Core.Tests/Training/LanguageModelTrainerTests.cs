using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using AdapterService.Core.Training;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Training;

public sealed class LanguageModelTrainerTests
{
    public LanguageModelTrainerTests() => TorchRuntime.EnsureReady();

    /// <summary>Eight prompts (two lengths, so batches are padded) that all complete with the same short text.</summary>
    static readonly List<TokenizedExample> Examples = Enumerable.Range(0, 8).Select(i =>
    {
        var (ids, train) = ModelText.BuiltIn.EncodeExample(new CompletionExample(i, i % 2 == 0 ? $"q{i}:" : $"question {i}:", "ok!"), null)[0];
        return new TokenizedExample([.. ids], [.. train]);
    }).ToList();

    static readonly Hyperparameters Hp = new(Epochs: 8, BatchSize: 4, LearningRate: 0.03);

    static LoraAdapter NewAdapter(LlamaForCausalLM model) =>
        LoraAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["all-linear"] });

    [Fact]
    public void TrainingLowersTheLossChangesOnlyTheAdapterAndReportsEveryStep()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var adapter = NewAdapter(model);
        var baseBefore = model.named_parameters().ToDictionary(p => p.name, p => Bytes(p.parameter));
        var adapterBefore = adapter.Parameters().Select(Bytes).ToList();
        var progress = new List<TrainingProgress>();

        using var trainer = new LanguageModelTrainer(model, adapter, Examples, Hp, ByteTokenizer.End, seed: 1);
        var result = trainer.Run(progress.Add, CancellationToken.None);

        int total = trainer.TotalSteps;
        Assert.Equal(16, total);
        Assert.Equal(Enumerable.Range(1, total), progress.Select(p => p.Step));
        Assert.All(progress, p => Assert.Equal(total, p.TotalSteps));
        Assert.Equal(Enumerable.Range(1, Hp.Epochs).SelectMany(e => new[] { e, e }), progress.Select(p => p.Epoch));
        Assert.Equal(Hp.LearningRate, progress[0].LearningRate);
        Assert.True(progress.Zip(progress.Skip(1)).All(p => p.Second.LearningRate < p.First.LearningRate), "linear decay");
        Assert.Equal(total, result.Steps);
        Assert.Equal(progress[^1].TrainLoss, result.FinalLoss);

        double first = progress[0].TrainLoss, last = progress.Where(p => p.Epoch == Hp.Epochs).Average(p => p.TrainLoss);
        Assert.True(last < first / 4, $"loss {first:F3} at the first step, {last:F3} in the last epoch");

        foreach (var (name, p) in model.named_parameters())
            Assert.True(baseBefore[name].AsSpan().SequenceEqual(Bytes(p)), $"base parameter {name} changed");
        Assert.All(adapter.Parameters().Zip(adapterBefore), p => Assert.NotEqual(p.Second, Bytes(p.First)));
    }

    [Fact]
    public void TheTrainedAdapterWritesTheCompletion()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var adapter = NewAdapter(model);
        using (var trainer = new LanguageModelTrainer(model, adapter, Examples, Hp with { Epochs = 10 }, ByteTokenizer.End, seed: 2))
            trainer.Run(_ => { }, CancellationToken.None);

        using var _ = no_grad();
        var prompt = ModelText.BuiltIn.EncodeCompletion("q9:").Select(i => (long)i).ToList();
        for (int i = 0; i < 4; i++)
            prompt.Add(model.forward(tensor(prompt.ToArray(), [1, prompt.Count]))[0, -1].argmax().item<long>());
        Assert.Equal([(long)'o', 'k', '!', ByteTokenizer.End], prompt[^4..]);
    }

    [Fact]
    public void CancellingFromTheCallbackStopsBeforeTheNextStep()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var adapter = NewAdapter(model);
        using var cancel = new CancellationTokenSource();
        var steps = new List<int>();

        using var trainer = new LanguageModelTrainer(model, adapter, Examples, Hp, ByteTokenizer.End, seed: 1);
        Assert.ThrowsAny<OperationCanceledException>(() => trainer.Run(p =>
        {
            steps.Add(p.Step);
            if (p.Step == 3) cancel.Cancel();
        }, cancel.Token));
        Assert.Equal([1, 2, 3], steps);
        Assert.Equal(3, trainer.Step);
    }

    [Fact]
    public void AResumedRunContinuesTheSameRunExactly()
    {
        using var scope = NewDisposeScope();
        var hp = Hp with { Epochs = 3 };
        var config = new LoraConfig { Rank = 4, Alpha = 8, Dropout = 0.1, TargetModules = ["all-linear"] };
        var folder = Directory.CreateTempSubdirectory("trainer-state-").FullName;
        try
        {
            // One uninterrupted run...
            var straight = new List<TrainingProgress>();
            using var model1 = Create();
            using var adapter1 = LoraAdapter.Create(model1, config, seed: 11);
            using (var trainer = new LanguageModelTrainer(model1, adapter1, Examples, hp, ByteTokenizer.End, seed: 5))
                trainer.Run(straight.Add, CancellationToken.None);

            // ...equals one stopped after step 4, saved, and continued by a fresh trainer in a fresh model.
            var resumed = new List<TrainingProgress>();
            using var cancel = new CancellationTokenSource();
            using var model2 = Create();
            using (var adapter2 = LoraAdapter.Create(model2, config, seed: 11))
            using (var trainer = new LanguageModelTrainer(model2, adapter2, Examples, hp, ByteTokenizer.End, seed: 5))
            {
                Assert.ThrowsAny<OperationCanceledException>(() => trainer.Run(p => { resumed.Add(p); if (p.Step == 4) cancel.Cancel(); }, cancel.Token));
                trainer.SaveState(folder);
            }
            using var model3 = Create();
            using var adapter3 = LoraAdapter.Create(model3, config, seed: 99);   // LoadState overwrites the initial weights
            using (var trainer = new LanguageModelTrainer(model3, adapter3, Examples, hp, ByteTokenizer.End, seed: 5))
            {
                trainer.LoadState(folder);
                Assert.Equal(4, trainer.Step);
                trainer.Run(resumed.Add, CancellationToken.None);
            }

            Assert.Equal(straight.Select(p => p.Step), resumed.Select(p => p.Step));
            Assert.Equal(straight.Select(p => p.TrainLoss), resumed.Select(p => p.TrainLoss));
            foreach (var (a, b) in adapter1.Parameters().Zip(adapter3.Parameters()))
                Assert.Equal(Bytes(a), Bytes(b));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void NoExamplesIsAnError()
    {
        using var model = Create();
        using var adapter = NewAdapter(model);
        Assert.Throws<ArgumentException>(() => new LanguageModelTrainer(model, adapter, [], Hp, 0, 1));
    }
}
