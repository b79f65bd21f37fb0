using System.Diagnostics;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Pretraining;
using AdapterService.Core.Training;

namespace AdapterService.Benchmarks;

/// <summary>
/// The built-in ViT as a transfer task: pre-trained (the service's default settings) on Fashion-MNIST classes 0-4, then
/// adapted to classes 5-9 from 1,000 training images, each method against a linear probe (only a new classifier trained),
/// all measured on every test image of the classes they learn.
/// </summary>
public sealed class VisionTransfer(bool quick)
{
    static readonly int[] NewClasses = [5, 6, 7, 8, 9];

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
             $"learning rate {hp.LearningRate} (the service's default), tested on all {test.Count:N0} test images of classes 5-9");
        line("");
        line("| method | trained parameters | test accuracy, classes 5-9 | seconds |");
        line("|---|---|---|---|");
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
        foreach (var (name, config, headOnly, lr) in runs)
        {
            var run = Stopwatch.StartNew();
            using var adapter = TrainableAdapter.Create(model, config with { TaskType = "SEQ_CLS", ModulesToSave = ["classifier"], Labels = labels }, seed: 1);
            using (var trainer = new ClassificationTrainer(model, adapter, train, hp with { LearningRate = lr }, seed: 1, headOnly))
            {
                trainer.Run(_ => { }, CancellationToken.None);
                var (_, accuracy) = trainer.Evaluate(test);
                long parameters = headOnly ? adapter.Head!.parameters().Sum(p => p.numel()) : adapter.ParameterCount;
                line($"| {name} | {parameters:N0} | **{accuracy:P1}** | {run.Elapsed.TotalSeconds:F0} |");
            }
            TrainableAdapter.Detach(model);
        }
        model.Dispose();
        line($"total {clock.Elapsed.TotalSeconds:F0} s");
    }

    static LabelledImages Relabel(LabelledImages images) =>
        images with { Labels = images.Labels.Select(l => (byte)(l - NewClasses[0])).ToArray() };
}
