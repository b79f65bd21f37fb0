using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>Token ids of one example and, per id, whether the loss is taken on it.</summary>
public sealed record TokenizedExample(int[] Ids, bool[] Train);

/// <summary>
/// Supervised fine-tuning of an adapter of any method on a frozen causal language model: cross-entropy on the next token
/// where the target is an assistant/completion token (the loop, optimizer and state are <see cref="AdapterTrainer"/>'s).
/// </summary>
public sealed class LanguageModelTrainer : AdapterTrainer
{
    const long IgnoreIndex = -100;

    readonly CausalLanguageModel model;
    readonly IReadOnlyList<TokenizedExample> examples;
    readonly int padId;

    public LanguageModelTrainer(CausalLanguageModel model, TrainableAdapter adapter, IReadOnlyList<TokenizedExample> examples, Hyperparameters hp, int padId, long seed)
        : base(adapter, examples.Count, hp, seed, Attached(model, adapter).Parameters())
    {
        (this.model, this.examples, this.padId) = (model, examples, padId);
    }

    static TrainableAdapter Attached(CausalLanguageModel model, TrainableAdapter adapter)
    {
        foreach (var p in model.parameters()) p.requires_grad = false;
        adapter.Attach(model);
        return adapter;
    }

    /// <summary>Mean loss and next-token accuracy over the trained tokens of <paramref name="data"/>, without training.</summary>
    public (double Loss, double Accuracy) Evaluate(IReadOnlyList<TokenizedExample> data) => WithoutTraining(() =>
    {
        AttachAlone();                                                                         // the model may be shared by a fused run
        double lossSum = 0;
        long correct = 0, count = 0;
        using var noGrad = no_grad();
        for (int start = 0; start < data.Count; start += Hp.BatchSize)
        {
            using var scope = NewDisposeScope();
            var (inputs, targets) = Collate(data.Skip(start).Take(Hp.BatchSize).ToList(), padId);
            var flat = model.forward(inputs).flatten(0, 1);                                    // [b·t, vocab]
            var flatTargets = targets.view(-1);
            var trained = flatTargets.ne(IgnoreIndex);
            lossSum += nn.functional.cross_entropy(flat, flatTargets, ignore_index: IgnoreIndex, reduction: nn.Reduction.Sum).item<float>();
            correct += flat.argmax(-1).eq(flatTargets).logical_and(trained).sum().item<long>();
            count += trained.sum().item<long>();
        }
        return (lossSum / Math.Max(1, count), correct / (double)Math.Max(1, count));
    });

    protected override double TrainStep(IReadOnlyList<int> batch)
    {
        var (inputs, targets) = Batch(batch);                                                  // [b, t] each
        var (loss, accuracy) = LossOf(model.forward(inputs), targets);
        Optimize(loss, inputs.numel());
        return accuracy;
    }

    // Hooks for FusedTrainer, which runs several trainers' batches through one model in one forward pass.
    internal CausalLanguageModel Model => model;
    internal TrainableAdapter TrainedAdapter => Adapter;
    internal int PadId => padId;

    /// <summary>The step's inputs and targets [b, t] each.</summary>
    internal (Tensor Inputs, Tensor Targets) Batch(IReadOnlyList<int> batch) => Collate(batch.Select(i => examples[i]).ToList(), padId);

    /// <summary>Mean cross-entropy over the trained targets of logits [b, t, vocab], and the next-token accuracy on them.</summary>
    internal static (Tensor Loss, double Accuracy) LossOf(Tensor logits, Tensor targets)
    {
        var flat = logits.flatten(0, 1);                                                       // [b·t, vocab]
        var flatTargets = targets.view(-1);
        var loss = nn.functional.cross_entropy(flat, flatTargets, ignore_index: IgnoreIndex);
        var trained = flatTargets.ne(IgnoreIndex);
        var correct = flat.argmax(-1).eq(flatTargets).logical_and(trained);
        return (loss, correct.sum().item<long>() / (double)Math.Max(1, trained.sum().item<long>()));
    }

    /// <summary>Empties the model's slots and puts this trainer's adapter in them (after a fused step filled them with everyone's).</summary>
    internal void AttachAlone()
    {
        TrainableAdapter.Detach(model);
        Adapter.Attach(model);
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
