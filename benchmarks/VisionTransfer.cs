using System.Diagnostics;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Jobs;
using AdapterService.Core.Pretraining;
using AdapterService.Core.Training;

namespace AdapterService.Benchmarks;

/// <summary>
/// The built-in ViT as a transfer task: pre-trained (the service's default settings) on Fashion-MNIST classes 0-4, then
/// adapted to classes 5-9 from 1,000 training images, each method against a linear probe (only a new classifier trained),
/// all measured on every test image of the classes they learn.
/// <paramref name="tuned"/> (<c>--tuned</c>): each method's learning rate is chosen first, as a sweep chooses it
/// (<see cref="Sweep.Best"/>: the lowest validation loss), from <see cref="TunedMultipliers"/> × its default rate, each
/// trained on the first 800 of the 1,000 training images and scored on the other 200; the method is then trained on all
/// 1,000 with the chosen rate and tested. The papers tune each method's rate; one shared rate does not compare them fairly.
/// </summary>
public sealed class VisionTransfer(bool quick, bool tuned = false)
{
    static readonly int[] NewClasses = [5, 6, 7, 8, 9];
    static readonly double[] TunedMultipliers = [0.25, 1, 4];
    const int ValidationImages = 200;

    public void Run(Action<string> line)
    {
        var options = quick ? new PretrainingOptions { TrainImages = 2_000, Steps = 300 } : new PretrainingOptions();
        var clock = Stopwatch.StartNew();
        var (model, pretrained) = VitPretraining.CreateFromDataset(options);
        line("## Built-in ViT: pre-training on Fashion-MNIST classes 0-4, then LoRA on classes 5-9");
        line($"pre-training: {pretrained.TrainImages:N0} images, {pretrained.Steps:N0} steps of batch {pretrained.BatchSize}, {pretrained.Seconds:F0} s, " +
             $"final training loss {pretrained.FinalLoss:F3}");
        line($"**accuracy on the {pretrained.TestImages:N0} test images of classes 0-4: {pretrained.TestAccuracy:P1}** (chance 20%)");
        line("");

        var train = Relabel(FashionMnist.Load("train").Where(NewClasses, 1_000));
        var test = Relabel(FashionMnist.Load("t10k").Where(NewClasses));
        var labels = NewClasses.Select(c => FashionMnist.ClassNames[c]).ToList();
        var hp = new Hyperparameters(quick ? 3 : 10, 32, 4e-3);
        line($"transfer: {train.Count:N0} training images of classes 5-9, {hp.Epochs} epochs of batch {hp.BatchSize}, " +
             (tuned
                 ? $"learning rate chosen per method from {string.Join(", ", TunedMultipliers.Select(m => $"{m}×"))} its default by the validation loss " +
                   $"on the last {ValidationImages} training images (trained on the other {train.Count - ValidationImages}), then trained on all {train.Count:N0}"
                 : $"learning rate {hp.LearningRate} (the service's default)") +
             $", tested on all {test.Count:N0} test images of classes 5-9");
        line("");
        var (fit, held) = (Slice(train, 0, train.Count - ValidationImages), Slice(train, train.Count - ValidationImages, ValidationImages));
        line(tuned
            ? $"| method | trained parameters | validation loss at {string.Join(" / ", TunedMultipliers.Select(m => $"{m}×"))} | chosen rate | test accuracy, classes 5-9 | seconds |"
            : "| method | trained parameters | test accuracy, classes 5-9 | seconds |");
        line(tuned ? "|---|---|---|---|---|---|" : "|---|---|---|---|");
        string[] attention = ["query", "key", "value", "dense"];
        var runs = new (string Name, AdapterConfig Config, bool HeadOnly, double LearningRate)[]
        {
            ("linear probe (new classifier only)", new LoraConfig { TargetModules = attention }, true, hp.LearningRate),
            ("linear probe, learning rate ×5", new LoraConfig { TargetModules = attention }, true, 5 * hp.LearningRate),
            ("LoRA r=8 (query key value dense) + classifier", new LoraConfig { TargetModules = attention, Rank = 8, Alpha = 16 }, false, hp.LearningRate),
            ("DoRA r=8 + classifier", new LoraConfig { TargetModules = attention, Rank = 8, Alpha = 16, UseDora = true }, false, hp.LearningRate),
            ("Lily d=8, 4 experts + classifier", new LilyConfig { TargetModules = attention, Rank = 8, NumExperts = 4 }, false, hp.LearningRate),
            ("RLRR + classifier", new RlrrConfig { TargetModules = attention }, false, hp.LearningRate),
        };
        // Trains the method on the images at the rate; the trained parameters' count and the loss and accuracy on the evaluation images.
        (long Parameters, double Loss, double Accuracy) Train(AdapterConfig config, bool headOnly, LabelledImages images, double lr, LabelledImages evaluation)
        {
            using var adapter = TrainableAdapter.Create(model, config with { TaskType = "SEQ_CLS", ModulesToSave = ["classifier"], Labels = labels }, seed: 1);
            try
            {
                using var trainer = new ClassificationTrainer(model, adapter, images, hp with { LearningRate = lr }, seed: 1, headOnly);
                trainer.Run(_ => { }, CancellationToken.None);
                var (loss, accuracy) = trainer.Evaluate(evaluation);
                return (headOnly ? adapter.Head!.parameters().Sum(p => p.numel()) : adapter.ParameterCount, loss, accuracy);
            }
            finally
            {
                TrainableAdapter.Detach(model);
            }
        }
        // The ×5 probe is one hand-picked rate; tuned, the probe gets its rate the way every method does.
        foreach (var (name, config, headOnly, lr) in tuned ? runs.Where(r => !r.Name.Contains("×5")) : runs)
        {
            var run = Stopwatch.StartNew();
            if (!tuned)
            {
                var (parameters, _, accuracy) = Train(config, headOnly, train, lr, test);
                line($"| {name} | {parameters:N0} | **{accuracy:P1}** | {run.Elapsed.TotalSeconds:F0} |");
                continue;
            }
            var scores = TunedMultipliers.Select(m => Train(config, headOnly, fit, m * lr, held).Loss).ToList();
            int best = new Sweep(Sweep.LearningRateMultiplier, TunedMultipliers).Best(scores.Select((loss, m) => (m, (double?)loss, (double?)null))) ?? 1;
            var (count, _, tunedAccuracy) = Train(config, headOnly, train, TunedMultipliers[best] * lr, test);
            line($"| {name} | {count:N0} | {string.Join(" / ", scores.Select((loss, m) => m == best ? $"**{loss:F3}**" : $"{loss:F3}"))} | " +
                 $"{TunedMultipliers[best]}× = {TunedMultipliers[best] * lr:G3} | **{tunedAccuracy:P1}** | {run.Elapsed.TotalSeconds:F0} |");
        }
        model.Dispose();
        line($"total {clock.Elapsed.TotalSeconds:F0} s");
    }

    static LabelledImages Slice(LabelledImages images, int start, int count) => images with
    {
        Pixels = images.Pixels[(start * images.ImageBytes)..((start + count) * images.ImageBytes)], Labels = images.Labels[start..(start + count)],
    };

    static LabelledImages Relabel(LabelledImages images) =>
        images with { Labels = images.Labels.Select(l => (byte)(l - NewClasses[0])).ToArray() };
}
