using System.Diagnostics;
using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>Token ids of one example and, per id, whether the loss is taken on it.</summary>
public sealed record TokenizedExample(int[] Ids, bool[] Train);

public sealed record Hyperparameters(int Epochs, int BatchSize, double LearningRate);

public sealed record TrainingProgress(
    int Step, int TotalSteps, int Epoch, double TrainLoss, double TrainAccuracy, double LearningRate, double TokensPerSecond, double EtaSeconds);

public sealed record TrainingResult(int Steps, long TrainedTokens, double FinalLoss);

/// <summary>
/// Supervised fine-tuning of an adapter of any method on a frozen base: AdamW on the adapter's parameters only
/// (plus the method's auxiliary loss, if it has one), cross-entropy on
/// the next token where the target is an assistant/completion token, linear learning-rate decay.
/// Every step is a pure function of (seed, step) and the state saved by <see cref="SaveState"/>: the batch order of an
/// epoch and the dropout masks are seeded from them, so a job resumed from a saved state continues the same run.
/// Runs synchronously on the calling thread (TorchSharp dispose scopes are per thread).
/// </summary>
public sealed class LoraTrainer : ITrainer
{
    const long IgnoreIndex = -100;
    const string StateFile = "trainer_state.json", OptimizerFile = "optimizer.bin";

    readonly CausalLanguageModel model;
    readonly TrainableAdapter adapter;
    readonly IReadOnlyList<TokenizedExample> examples;
    readonly Hyperparameters hp;
    readonly int padId;
    readonly long seed;
    readonly List<TorchSharp.Modules.Parameter> parameters;
    readonly TorchSharp.Modules.AdamW optimizer;
    readonly Generator dropout = new();

    public int StepsPerEpoch { get; }
    public int TotalSteps { get; }
    /// <summary>Steps done so far.</summary>
    public int Step { get; private set; }
    public long TrainedTokens { get; private set; }
    public double LastLoss { get; private set; } = double.NaN;
    bool stopRequested;

    /// <summary>Ends <see cref="Run"/> after the step in progress, as finished (early stopping).</summary>
    public void StopAfterThisStep() => stopRequested = true;

    sealed record State(int Step, long TrainedTokens, double LastLoss);

    public LoraTrainer(CausalLanguageModel model, TrainableAdapter adapter, IReadOnlyList<TokenizedExample> examples, Hyperparameters hp, int padId, long seed)
    {
        if (examples.Count == 0) throw new ArgumentException("no training examples", nameof(examples));
        (this.model, this.adapter, this.examples, this.hp, this.padId, this.seed) = (model, adapter, examples, hp, padId, seed);
        StepsPerEpoch = (int)Math.Ceiling(examples.Count / (double)hp.BatchSize);
        TotalSteps = hp.Epochs * StepsPerEpoch;
        foreach (var p in model.parameters()) p.requires_grad = false;
        adapter.Attach(model);
        parameters = adapter.Parameters().ToList();
        optimizer = optim.AdamW(parameters, hp.LearningRate, weight_decay: 0);
    }

    /// <summary>Trains from <see cref="Step"/> to the end; <paramref name="onStep"/> runs after each step, outside its dispose scope.</summary>
    public TrainingResult Run(Action<TrainingProgress> onStep, CancellationToken cancel)
    {
        adapter.Train(true, dropout);
        try
        {
            var clock = Stopwatch.StartNew();
            int firstStep = Step;
            long tokensAtStart = TrainedTokens;
            List<TokenizedExample>? order = null;
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
                    (TrainedTokens - tokensAtStart) / Math.Max(seconds, 1e-9), seconds / (Step - firstStep) * (TotalSteps - Step)));
            }
            return new TrainingResult(Step, TrainedTokens, LastLoss);
        }
        finally
        {
            adapter.Train(false);
        }
    }

    /// <summary>Mean loss and next-token accuracy over the trained tokens of <paramref name="data"/>, without training.</summary>
    public (double Loss, double Accuracy) Evaluate(IReadOnlyList<TokenizedExample> data)
    {
        bool wasTraining = adapter.Layers.Values.FirstOrDefault()?.training ?? false;
        adapter.Train(false);
        try
        {
            double lossSum = 0;
            long correct = 0, count = 0;
            using var noGrad = no_grad();
            for (int start = 0; start < data.Count; start += hp.BatchSize)
            {
                using var scope = NewDisposeScope();
                var (inputs, targets) = Collate(data.Skip(start).Take(hp.BatchSize).ToList(), padId);
                var logits = model.forward(inputs);
                var flat = logits.view(-1, logits.shape[^1]);
                var flatTargets = targets.view(-1);
                var trained = flatTargets.ne(IgnoreIndex);
                lossSum += nn.functional.cross_entropy(flat, flatTargets, ignore_index: IgnoreIndex, reduction: nn.Reduction.Sum).item<float>();
                correct += flat.argmax(-1).eq(flatTargets).logical_and(trained).sum().item<long>();
                count += trained.sum().item<long>();
            }
            return (lossSum / Math.Max(1, count), correct / (double)Math.Max(1, count));
        }
        finally
        {
            adapter.Train(wasTraining, dropout);
        }
    }

    /// <summary>One optimizer step; returns the next-token accuracy on the trained tokens.</summary>
    double TrainStep(List<TokenizedExample> batch)
    {
        using var scope = NewDisposeScope();
        dropout.manual_seed(seed * 1_000_003 + Step);                              // dropout masks depend on (seed, step) only
        var (inputs, targets) = Collate(batch, padId);                              // [b, t] each
        var logits = model.forward(inputs);                                         // [b, t, vocab]
        var flatTargets = targets.view(-1);
        var loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]), flatTargets, ignore_index: IgnoreIndex);
        var auxiliary = adapter.AuxiliaryLoss();
        optimizer.zero_grad();
        (auxiliary is null ? loss : loss + auxiliary).backward();
        nn.utils.clip_grad_norm_(parameters, 1.0);
        optimizer.step();
        LastLoss = loss.item<float>();
        TrainedTokens += inputs.numel();
        var trained = flatTargets.ne(IgnoreIndex);
        var correct = logits.view(-1, logits.shape[^1]).argmax(-1).eq(flatTargets).logical_and(trained);
        return correct.sum().item<long>() / (double)Math.Max(1, trained.sum().item<long>());
    }

    List<TokenizedExample> EpochOrder(int epoch)
    {
        var random = new Random(unchecked((int)(seed * 7919 + epoch)));
        return examples.OrderBy(_ => random.Next()).ToList();
    }

    /// <summary>Writes the adapter (PEFT layout), the optimizer's moments and the step into <paramref name="folder"/>.</summary>
    public void SaveState(string folder)
    {
        adapter.Save(folder);
        optimizer.save_state_dict(Path.Combine(folder, OptimizerFile));
        File.WriteAllText(Path.Combine(folder, StateFile), JsonSerializer.Serialize(new State(Step, TrainedTokens, LastLoss)));
    }

    /// <summary>Continues from a folder <see cref="SaveState"/> wrote.</summary>
    public void LoadState(string folder)
    {
        var state = JsonSerializer.Deserialize<State>(File.ReadAllText(Path.Combine(folder, StateFile)))
                    ?? throw new InvalidDataException($"{StateFile} is empty");
        adapter.LoadWeights(folder);
        optimizer.load_state_dict(Path.Combine(folder, OptimizerFile));
        (Step, TrainedTokens, LastLoss) = (state.Step, state.TrainedTokens, state.LastLoss);
    }

    /// <summary>Inputs are ids[..^1], targets ids[1..] (ignored where not trained); rows right-padded.</summary>
    static (Tensor Inputs, Tensor Targets) Collate(List<TokenizedExample> batch, int padId)
    {
        int length = batch.Max(e => e.Ids.Length) - 1;
        var inputs = new long[batch.Count * length];
        var targets = new long[batch.Count * length];
        Array.Fill(inputs, padId);
        Array.Fill(targets, IgnoreIndex);
        for (int row = 0; row < batch.Count; row++)
        {
            var e = batch[row];
            for (int i = 0; i < e.Ids.Length - 1; i++)
            {
                inputs[row * length + i] = e.Ids[i];
                if (e.Train[i + 1]) targets[row * length + i] = e.Ids[i + 1];
            }
        }
        return (tensor(inputs, [batch.Count, length]), tensor(targets, [batch.Count, length]));
    }

    public void Dispose()
    {
        optimizer.Dispose();
        dropout.Dispose();
    }
}
