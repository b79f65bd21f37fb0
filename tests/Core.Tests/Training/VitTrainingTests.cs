using System.Text;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Pretraining;
using AdapterService.Core.Torch;
using AdapterService.Core.Training;

namespace AdapterService.Core.Tests.Training;

/// <summary>A demo ViT pre-trained on a few hundred Fashion-MNIST images of classes 0-4 (seconds), shared by the tests.</summary>
public sealed class PretrainedVit : IDisposable
{
    public static readonly PretrainingOptions Small = new() { TrainImages = 1_000, TestImages = 500, Steps = 150, BatchSize = 32 };

    public ViTForImageClassification Model { get; }
    public PretrainingResult Result { get; }

    public PretrainedVit()
    {
        TorchRuntime.EnsureReady();
        var train = FashionMnist.Load("train").Where(VitPretraining.PretrainingClasses, Small.TrainImages);
        var test = FashionMnist.Load("t10k").Where(VitPretraining.PretrainingClasses, Small.TestImages);
        (Model, Result) = VitPretraining.Train(train, test, Small);
    }

    public void Dispose() => Model.Dispose();
}

public class VitTrainingTests(PretrainedVit vit) : IClassFixture<PretrainedVit>
{
    static readonly int[] NewClasses = [5, 6, 7, 8, 9];

    [Fact]
    public void PretrainingOnASmallSubsetBeatsChanceClearly()
    {
        // Five classes: chance is 20%.
        Assert.True(vit.Result.TestAccuracy > 0.55, $"accuracy {vit.Result.TestAccuracy:P1} on held-out images of classes 0-4");
        Assert.Equal((150, 1_000, 500), (vit.Result.Steps, vit.Result.TrainImages, vit.Result.TestImages));
        Assert.Contains("Fashion-MNIST", vit.Result.Describe());
    }

    [Fact]
    public void LoraWithANewClassifierLearnsNewClassesAndServesItsHead()
    {
        var train = FashionMnist.Load("train").Where(NewClasses, 500);
        var test = FashionMnist.Load("t10k").Where(NewClasses, 300);
        var labels = NewClasses.Select(c => FashionMnist.ClassNames[c]).ToList();
        train = new LabelledImages(train.Pixels, train.Labels.Select(l => (byte)(l - 5)).ToArray(), 28, 28);
        test = new LabelledImages(test.Pixels, test.Labels.Select(l => (byte)(l - 5)).ToArray(), 28, 28);
        var config = new LoraConfig { TargetModules = ["query", "value", "dense"], Rank = 4, Alpha = 8, TaskType = "SEQ_CLS", ModulesToSave = ["classifier"], Labels = labels };

        using var adapter = TrainableAdapter.Create(vit.Model, config, seed: 3);
        try
        {
            using var trainer = new ClassificationTrainer(vit.Model, adapter, train, new Hyperparameters(2, 32, 4e-3), seed: 3);
            var before = trainer.Evaluate(test);
            trainer.Run(_ => { }, CancellationToken.None);
            var after = trainer.Evaluate(test);
            Assert.True(after.Accuracy > 0.5 && after.Accuracy > before.Accuracy + 0.2, $"accuracy {before.Accuracy:P1} before, {after.Accuracy:P1} after");

            var folder = Path.Combine(Path.GetTempPath(), "vit-adapter-" + Guid.NewGuid().ToString("N"));
            adapter.Save(folder);
            using var served = ServedAdapter.Load(folder, vit.Model);
            Assert.Equal(labels, served.Config.Labels);
            Assert.Equal([5, 64], served.Head!.Value.Weight.shape);
            Assert.Equal(adapter.ParameterCount, served.ParameterCount);
            Directory.Delete(folder, true);
        }
        finally
        {
            TrainableAdapter.Detach(vit.Model);
        }
    }

    [Fact]
    public void ImagesOfTheWrongSizeOrLabelNameTheirLine()
    {
        var small = Convert.ToBase64String(Png.EncodeGray(8, 8, new byte[64]));
        var right = Convert.ToBase64String(Png.EncodeGray(28, 28, new byte[784]));
        var file = TrainingFile.Parse(new MemoryStream(Encoding.UTF8.GetBytes(
            $"{{\"image\": \"{right}\", \"label\": \"Bag\"}}\n{{\"image\": \"{small}\", \"label\": \"Bag\"}}\n")));
        var e = Assert.Throws<TrainingFileException>(() => ImageData.Read(file, VitPretraining.DemoConfig, ["Bag"]));
        Assert.Equal("Line 2: the image is 8×8; this model takes 28×28 images", e.Message);
        Assert.Equal(["Bag"], ImageData.NewLabels(file, VitPretraining.DemoConfig));
        var unknown = Assert.Throws<TrainingFileException>(() => ImageData.Read(file, VitPretraining.DemoConfig, ["Coat"]));
        Assert.StartsWith("Line 1: label \"Bag\" is not one of", unknown.Message);
    }
}
