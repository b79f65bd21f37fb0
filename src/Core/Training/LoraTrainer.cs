using System.Diagnostics;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>Token ids of one example and, per id, whether the loss is taken on it.</summary>
public sealed record TokenizedExample(int[] Ids, bool[] Train);

public sealed record Hyperparameters(int Epochs, int BatchSize, double LearningRate);

public sealed record TrainingProgress(
    int Step, int TotalSteps, int Epoch, double TrainLoss, double LearningRate, double TokensPerSecond, double EtaSeconds);

public sealed record TrainingResult(int Steps, long TrainedTokens, double FinalLoss);

/// <summary>
/// Supervised fine-tuning of an adapter on a frozen base: AdamW on the adapter's parameters only,
/// cross-entropy on the next token where the target is an assistant/completion token, linear learning-rate decay.
/// Runs synchronously on the calling thread (TorchSharp dispose scopes are per thread).
/// </summary>
public static class LoraTrainer
{
    const long IgnoreIndex = -100;

    public static int TotalSteps(int examples, Hyperparameters hp) => hp.Epochs * (int)Math.Ceiling(examples / (double)hp.BatchSize);

    public static TrainingResult Train(
        LlamaForCausalLM model, LoraAdapter adapter, IReadOnlyList<TokenizedExample> examples, Hyperparameters hp,
        int padId, long seed, Action<TrainingProgress> onStep, CancellationToken cancel)
    {
        if (examples.Count == 0) throw new ArgumentException("no training examples", nameof(examples));
        foreach (var p in model.parameters()) p.requires_grad = false;
        adapter.Attach(model);
        adapter.Train(true);
        var parameters = adapter.Parameters().ToList();
        using var optimizer = optim.AdamW(parameters, hp.LearningRate, weight_decay: 0);
        var order = new Random((int)seed);
        int totalSteps = TotalSteps(examples.Count, hp), step = 0;
        long tokens = 0;
        double loss = double.NaN;
        var clock = Stopwatch.StartNew();
        for (int epoch = 1; epoch <= hp.Epochs; epoch++)
        {
            var shuffled = examples.OrderBy(_ => order.Next()).ToList();
            for (int start = 0; start < shuffled.Count; start += hp.BatchSize)
            {
                cancel.ThrowIfCancellationRequested();
                double lr = hp.LearningRate * (1 - step / (double)totalSteps);
                foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;
                var batch = shuffled.Skip(start).Take(hp.BatchSize).ToList();
                using (var scope = NewDisposeScope())
                {
                    var (inputs, targets) = Collate(batch, padId);                        // [b, t] each
                    var logits = model.forward(inputs);                                    // [b, t, vocab]
                    var stepLoss = nn.functional.cross_entropy(
                        logits.view(-1, logits.shape[^1]), targets.view(-1), ignore_index: IgnoreIndex);
                    optimizer.zero_grad();
                    stepLoss.backward();
                    nn.utils.clip_grad_norm_(parameters, 1.0);
                    optimizer.step();
                    loss = stepLoss.item<float>();
                    tokens += inputs.numel();
                }
                step++;
                double seconds = clock.Elapsed.TotalSeconds;
                onStep(new TrainingProgress(step, totalSteps, epoch, loss, lr, tokens / Math.Max(seconds, 1e-9),
                    seconds / step * (totalSteps - step)));
            }
        }
        adapter.Train(false);
        return new TrainingResult(step, tokens, loss);
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
}
