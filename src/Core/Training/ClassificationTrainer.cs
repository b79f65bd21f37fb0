using System.Diagnostics;
using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>
/// Fine-tunes an adapter of any method on a frozen ViT classifier: cross-entropy on the classifier's logits of the CLS state,
/// AdamW on the adapter's parameters (and its own classifier when it has new labels), linear learning-rate decay. Like
/// <see cref="LoraTrainer"/>, every step is a pure function of (seed, step) and the saved state, so a resumed job continues
/// the same run. With <c>headOnly</c> it trains only the adapter's classifier on the frozen base's features: a linear probe.
/// Runs synchronously on the calling thread.
/// </summary>
public sealed class ClassificationTrainer : ITrainer
{
    const string StateFile = "trainer_state.json", OptimizerFile = "optimizer.bin";

    readonly ViTForImageClassification model;
    readonly TrainableAdapter adapter;
    readonly LabelledImages examples;
    readonly Hyperparameters hp;
    readonly long seed;
    readonly List<TorchSharp.Modules.Parameter> parameters;
    readonly TorchSharp.Modules.AdamW optimizer;
    readonly Generator dropout = new();

    public int StepsPerEpoch { get; }
    public int TotalSteps { get; }
    public int Step { get; private set; }
    public double LastLoss { get; private set; } = double.NaN;
    long trainedTokens;
    bool stopRequested;

    public void StopAfterThisStep() => stopRequested = true;

    sealed record State(int Step, long TrainedTokens, double LastLoss);

    public ClassificationTrainer(ViTForImageClassification model, TrainableAdapter adapter, LabelledImages examples, Hyperparameters hp, long seed, bool headOnly = false)
    {
        if (examples.Count == 0) throw new ArgumentException("no training examples", nameof(examples));
        if (headOnly && adapter.Head is null) throw new ArgumentException("a linear probe needs an adapter with its own classifier (labels)", nameof(headOnly));
        (this.model, this.adapter, this.examples, this.hp, this.seed) = (model, adapter, examples, hp, seed);
        StepsPerEpoch = (int)Math.Ceiling(examples.Count / (double)hp.BatchSize);
        TotalSteps = hp.Epochs * StepsPerEpoch;
        foreach (var p in model.parameters()) p.requires_grad = false;
        if (headOnly) parameters = [adapter.Head!.weight!, adapter.Head.bias!];
        else
        {
            adapter.Attach(model);
            parameters = adapter.Parameters().ToList();
        }
        optimizer = optim.AdamW(parameters, hp.LearningRate, weight_decay: 0);
    }

    public TrainingResult Run(Action<TrainingProgress> onStep, CancellationToken cancel)
    {
        adapter.Train(true, dropout);
        try
        {
            var clock = Stopwatch.StartNew();
            int firstStep = Step;
            long tokensAtStart = trainedTokens;
            List<int>? order = null;
            while (Step < TotalSteps && !stopRequested)
            {
                cancel.ThrowIfCancellationRequested();
                int epoch = Step / StepsPerEpoch, index = Step % StepsPerEpoch;
                if (order is null || index == 0) order = EpochOrder(epoch);
                double lr = hp.LearningRate * (1 - Step / (double)TotalSteps);
                foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;
                double accuracy = TrainStep(order.Skip(index * hp.BatchSize).Take(hp.BatchSize).ToList());
                Step++;
                double seconds = clock.Elapsed.TotalSeconds;
                onStep(new TrainingProgress(Step, TotalSteps, epoch + 1, LastLoss, accuracy, lr,
                    (trainedTokens - tokensAtStart) / Math.Max(seconds, 1e-9), seconds / (Step - firstStep) * (TotalSteps - Step)));
            }
            return new TrainingResult(Step, trainedTokens, LastLoss);
        }
        finally
        {
            adapter.Train(false);
        }
    }

    /// <summary>Mean cross-entropy and accuracy on <paramref name="data"/>, without training.</summary>
    public (double Loss, double Accuracy) Evaluate(LabelledImages data)
    {
        bool wasTraining = adapter.Layers.Values.FirstOrDefault()?.training ?? false;
        adapter.Train(false);
        try
        {
            return Evaluate(model, adapter.Head, data, hp.BatchSize);
        }
        finally
        {
            adapter.Train(wasTraining, dropout);
        }
    }

    /// <summary>Mean cross-entropy and accuracy of <paramref name="model"/> (with <paramref name="head"/> in place of its classifier, if given).</summary>
    public static (double Loss, double Accuracy) Evaluate(ViTForImageClassification model, nn.Module<Tensor, Tensor>? head, LabelledImages data, int batchSize = 256)
    {
        double lossSum = 0;
        long correct = 0;
        using var noGrad = no_grad();
        for (int start = 0; start < data.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            var rows = Enumerable.Range(start, Math.Min(batchSize, data.Count - start)).ToList();
            var logits = Logits(model, head, ImageData.Pixels(data, rows, model.Config));            // [b, labels]
            var targets = tensor(rows.Select(i => (long)data.Labels[i]).ToArray());                  // [b]
            lossSum += nn.functional.cross_entropy(logits, targets, reduction: nn.Reduction.Sum).item<float>();
            correct += logits.argmax(-1).eq(targets).sum().item<long>();
        }
        return (lossSum / data.Count, correct / (double)data.Count);
    }

    static Tensor Logits(ViTForImageClassification model, nn.Module<Tensor, Tensor>? head, Tensor pixels) =>
        head is null ? model.forward(pixels) : head.forward(model.Features(pixels));                  // [b, labels]

    double TrainStep(List<int> batch)
    {
        using var scope = NewDisposeScope();
        dropout.manual_seed(seed * 1_000_003 + Step);                              // dropout masks depend on (seed, step) only
        var pixels = ImageData.Pixels(examples, batch, model.Config);              // [b, c, s, s]
        var targets = tensor(batch.Select(i => (long)examples.Labels[i]).ToArray()); // [b]
        var logits = Logits(model, adapter.Head, pixels);                          // [b, labels]
        var loss = nn.functional.cross_entropy(logits, targets);
        var auxiliary = adapter.AuxiliaryLoss();
        optimizer.zero_grad();
        (auxiliary is null ? loss : loss + auxiliary).backward();
        nn.utils.clip_grad_norm_(parameters, 1.0);
        optimizer.step();
        LastLoss = loss.item<float>();
        trainedTokens += batch.Count * (model.Config.NumPatches + 1L);
        return logits.argmax(-1).eq(targets).sum().item<long>() / (double)batch.Count;
    }

    List<int> EpochOrder(int epoch)
    {
        var random = new Random(unchecked((int)(seed * 7919 + epoch)));
        return Enumerable.Range(0, examples.Count).OrderBy(_ => random.Next()).ToList();
    }

    public void SaveState(string folder)
    {
        adapter.Save(folder);
        optimizer.save_state_dict(Path.Combine(folder, OptimizerFile));
        File.WriteAllText(Path.Combine(folder, StateFile), JsonSerializer.Serialize(new State(Step, trainedTokens, LastLoss)));
    }

    public void LoadState(string folder)
    {
        var state = JsonSerializer.Deserialize<State>(File.ReadAllText(Path.Combine(folder, StateFile)))
                    ?? throw new InvalidDataException($"{StateFile} is empty");
        adapter.LoadWeights(folder);
        optimizer.load_state_dict(Path.Combine(folder, OptimizerFile));
        (Step, trainedTokens, LastLoss) = (state.Step, state.TrainedTokens, state.LastLoss);
    }

    public void Dispose()
    {
        optimizer.Dispose();
        dropout.Dispose();
    }
}
