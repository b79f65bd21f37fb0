using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>
/// Fine-tunes an adapter of any method on a frozen ViT classifier: cross-entropy on the classifier's logits of the CLS
/// state (the loop, optimizer and state are <see cref="AdapterTrainer"/>'s). With <c>headOnly</c> it trains only the
/// adapter's own classifier on the frozen base's features: a linear probe.
/// </summary>
public sealed class ClassificationTrainer : AdapterTrainer
{
    readonly ViTForImageClassification model;
    readonly LabelledImages examples;

    public ClassificationTrainer(ViTForImageClassification model, TrainableAdapter adapter, LabelledImages examples, Hyperparameters hp, long seed, bool headOnly = false)
        : base(adapter, examples.Count, hp, seed, Trained(model, adapter, headOnly))
    {
        (this.model, this.examples) = (model, examples);
    }

    static IEnumerable<Parameter> Trained(ViTForImageClassification model, TrainableAdapter adapter, bool headOnly)
    {
        if (headOnly && adapter.Head is null) throw new ArgumentException("a linear probe needs an adapter with its own classifier (labels)", nameof(headOnly));
        foreach (var p in model.parameters()) p.requires_grad = false;
        if (headOnly) return [adapter.Head!.weight!, adapter.Head.bias!];
        adapter.Attach(model);
        return adapter.Parameters();
    }

    /// <summary>Mean cross-entropy and accuracy on <paramref name="data"/>, without training.</summary>
    public (double Loss, double Accuracy) Evaluate(LabelledImages data) => WithoutTraining(() => Evaluate(model, Adapter.Head, data, Hp.BatchSize));

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

    protected override double TrainStep(IReadOnlyList<int> batch)
    {
        var pixels = ImageData.Pixels(examples, batch, model.Config);                        // [b, c, s, s]
        var targets = tensor(batch.Select(i => (long)examples.Labels[i]).ToArray());                   // [b]
        var logits = Logits(model, Adapter.Head, pixels);                                              // [b, labels]
        Optimize(nn.functional.cross_entropy(logits, targets), batch.Count * (model.Config.NumPatches + 1L));
        return logits.argmax(-1).eq(targets).sum().item<long>() / (double)batch.Count;
    }
}
