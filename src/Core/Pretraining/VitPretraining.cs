using System.Diagnostics;
using System.Globalization;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Pretraining;

/// <summary>How the built-in ViT is pre-trained (<c>Vision:Pretraining</c> in settings).</summary>
public sealed record PretrainingOptions
{
    /// <summary>Training images of classes 0-4 used (the first ones of the training split).</summary>
    public int TrainImages { get; init; } = 30_000;
    /// <summary>Test images of classes 0-4 the final accuracy is measured on.</summary>
    public int TestImages { get; init; } = 5_000;
    public int Steps { get; init; } = 1_500;
    public int BatchSize { get; init; } = 64;
    public double LearningRate { get; init; } = 2e-3;
    public long Seed { get; init; } = 20261123;
    /// <summary>Where Fashion-MNIST's IDX files are (Debian's package's folder by default).</summary>
    public string DataFolder { get; init; } = FashionMnist.DefaultFolder;
}

/// <summary>What pre-training did, recorded in the model's description.</summary>
public sealed record PretrainingResult(int Steps, int TrainImages, int BatchSize, double FinalLoss, int TestImages, double TestAccuracy, double Seconds)
{
    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"Small demo ViT (patch 4 on 28×28 grayscale, 4 layers, hidden 64) pre-trained by this service on Fashion-MNIST classes 0-4 ({string.Join(", ", FashionMnist.ClassNames.Take(5))}) from Debian's dataset-fashion-mnist: {TrainImages:N0} training images, {Steps:N0} steps of batch {BatchSize}, final training loss {FinalLoss:0.000}; accuracy {TestAccuracy:P1} on {TestImages:N0} test images of those classes. Fine-tune it on other classes (5-9) with labelled images.");
}

/// <summary>
/// Pre-trains the built-in ViT from scratch with the shared <see cref="Pretrainer"/> loop (AdamW with weight decay 0.05),
/// batches drawn without replacement from a seeded order.
/// </summary>
public static class VitPretraining
{
    /// <summary>Patch 4 on 28×28 grayscale (49 patches + CLS), 4 pre-norm blocks of width 64, labels = Fashion-MNIST's classes 0-4.</summary>
    public static VitConfig DemoConfig { get; } = new()
    {
        HiddenSize = 64, NumHiddenLayers = 4, NumAttentionHeads = 4, IntermediateSize = 128, ImageSize = 28, PatchSize = 4, NumChannels = 1,
        LayerNormEps = 1e-6, HiddenAct = "gelu", QkvBias = true,
        Id2Label = Enumerable.Range(0, 5).ToDictionary(i => i.ToString(CultureInfo.InvariantCulture), i => FashionMnist.ClassNames[i]),
        Label2Id = Enumerable.Range(0, 5).ToDictionary(i => FashionMnist.ClassNames[i], i => i),
    };

    public static readonly int[] PretrainingClasses = [0, 1, 2, 3, 4];

    /// <summary>Trains a new demo ViT on <paramref name="train"/> and measures it on <paramref name="test"/> (class indices 0-4 both).</summary>
    public static (ViTForImageClassification Model, PretrainingResult Result) Train(
        LabelledImages train, LabelledImages test, PretrainingOptions options, Action<PretrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        var clock = Stopwatch.StartNew();
        var model = (ViTForImageClassification)RandomModel.Create(DemoConfig, options.Seed);
        var random = new Random(unchecked((int)options.Seed));
        var order = new List<int>();
        var last = Pretrainer.Run(model, new PretrainingSchedule(options.Steps, options.LearningRate, WeightDecay: 0.05), _ =>
        {
            if (order.Count < options.BatchSize) order.AddRange(Enumerable.Range(0, train.Count).OrderBy(_ => random.Next()));
            var batch = order.GetRange(0, Math.Min(options.BatchSize, order.Count));
            order.RemoveRange(0, batch.Count);
            var logits = model.forward(ImageData.Pixels(train, batch, DemoConfig));              // [b, 5]
            var targets = tensor(batch.Select(i => (long)train.Labels[i]).ToArray());            // [b]
            return (nn.functional.cross_entropy(logits, targets), logits.argmax(-1).eq(targets).to_type(ScalarType.Float32).mean(), batch.Count);
        }, validate: null, progress, cancel);
        double loss = last.Loss;
        var (_, testAccuracy) = Training.ClassificationTrainer.Evaluate(model, null, test);
        return (model, new PretrainingResult(options.Steps, train.Count, options.BatchSize, loss, test.Count, testAccuracy, clock.Elapsed.TotalSeconds));
    }

    /// <summary>Loads Fashion-MNIST's classes 0-4 as <paramref name="options"/> say and pre-trains on them.</summary>
    public static (ViTForImageClassification Model, PretrainingResult Result) CreateFromDataset(
        PretrainingOptions options, Action<PretrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        var train = FashionMnist.Load("train", options.DataFolder).Where(PretrainingClasses, options.TrainImages);
        var test = FashionMnist.Load("t10k", options.DataFolder).Where(PretrainingClasses, options.TestImages);
        return Train(train, test, options, progress, cancel);
    }

    /// <summary>Pre-trains as <see cref="CreateFromDataset"/> does and writes the Hugging Face folder into <paramref name="folder"/>.</summary>
    public static PretrainingResult CreateFolder(string folder, PretrainingOptions options, Action<PretrainingProgress>? progress, CancellationToken cancel)
    {
        var (model, result) = CreateFromDataset(options, progress, cancel);
        using (model) ModelFolder.Save(model, folder);
        return result;
    }
}
