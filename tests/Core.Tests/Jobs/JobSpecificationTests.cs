using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;

namespace AdapterService.Core.Tests.Jobs;

public class JobSpecificationTests
{
    static readonly JobLimits Limits = new(MinExamples: 10, MaxTrainingTokens: 10_000);
    static readonly LoraConfig Lora = new() { TargetModules = ["q_proj", "v_proj"] };

    /// <summary>A tiny ViT with the labels a and b, taking 4×4 images.</summary>
    static readonly VitConfig Vit = new()
    {
        HiddenSize = 8, NumHiddenLayers = 1, NumAttentionHeads = 2, IntermediateSize = 16, ImageSize = 4, PatchSize = 2, NumChannels = 1,
        Id2Label = new() { ["0"] = "a", ["1"] = "b" },
    };

    static DataFile Text(int examples, long tokens, string id = "file-t") => new(id, new FileFacts(TrainingFileFormat.Chat, examples, null, null), tokens);

    static DataFile Images(string id, params (string Label, int Side)[] lines)
    {
        var examples = lines.Select((l, i) => (TrainingExample)new ImageExample(i + 1, new GrayImage(l.Side, l.Side, new byte[l.Side * l.Side]), l.Label)).ToList();
        return new(id, FileFacts.Of(new TrainingFile(TrainingFileFormat.Image, examples)), null);
    }

    static HyperparameterValues Hp(string json) => JsonSerializer.Deserialize<HyperparameterValues>(json, JsonSerializerOptions.Web)!;

    [Theory]
    [InlineData(10, null, 1, 10)]                                                   // about 100 steps: 10 epochs of 10
    [InlineData(1000, null, 15, 3)]                                                 // at least 3 epochs
    [InlineData(10, """{"nEpochs": "auto", "batchSize": "auto", "learningRateMultiplier": "auto"}""", 1, 10)]
    [InlineData(10, """{"nEpochs": 2, "batchSize": 5, "learningRateMultiplier": 0.5}""", 5, 2)]
    public void AutoValuesFollowTheDataSetsSize(int examples, string? hp, int batch, int epochs)
    {
        var (spec, error) = JobSpecification.Resolve(hp is null ? null : Hp(hp), Lora, TinyLlama.Config, Text(examples, 500), null, Limits);
        Assert.Null(error);
        Assert.Equal((batch, epochs, examples, 500L), (spec!.BatchSize, spec.Epochs, spec.ExampleCount, spec.TrainingFileTokens));
        Assert.Equal(4e-3 * spec.LearningRateMultiplier, spec.Hyperparameters.LearningRate, 12);
        Assert.Same(Lora, spec.Adapter);
    }

    [Theory]
    [InlineData("""{"nEpochs": 0}""", "hyperparameters.n_epochs")]
    [InlineData("""{"nEpochs": "three"}""", "hyperparameters.n_epochs")]
    [InlineData("""{"batchSize": 1.5}""", "hyperparameters.batch_size")]
    [InlineData("""{"learningRateMultiplier": 0}""", "hyperparameters.learning_rate_multiplier")]
    [InlineData("""{"earlyStoppingPatience": 2}""", "hyperparameters.early_stopping_patience")]   // no validation file
    public void EachRejectedHyperparameterIsNamed(string hp, string param)
    {
        var (spec, error) = JobSpecification.Resolve(Hp(hp), Lora, TinyLlama.Config, Text(10, 500), null, Limits);
        Assert.Null(spec);
        Assert.Equal(param, error!.Param);
        Assert.StartsWith(param, error.Message);
    }

    [Fact]
    public void TheTrainingFileMustBeLargeEnoughAndNotTooLarge()
    {
        var few = JobSpecification.Resolve(null, Lora, TinyLlama.Config, Text(9, 500), null, Limits).Error!;
        Assert.Equal(("training_file", "invalid_n_examples"), (few.Param, few.Code));
        Assert.Equal("Training file file-t has 9 example(s), but must have at least 10.", few.Message);
        var many = JobSpecification.Resolve(null, Lora, TinyLlama.Config, Text(10, 10_001), null, Limits).Error!;
        Assert.Equal(("training_file", "invalid_n_tokens"), (many.Param, many.Code));
    }

    [Fact]
    public void AFilesOwnProblemComesFirst()
    {
        var unreadable = new DataFile("file-v", null, null, new JobSpecError("File file-v does not exist.", "validation_file", "file_not_found"));
        var (_, error) = JobSpecification.Resolve(Hp("""{"nEpochs": 0}"""), Lora, TinyLlama.Config, Text(10, 500), unreadable, Limits);
        Assert.Equal("validation_file", error!.Param);
    }

    [Fact]
    public void AnImageClassifierWithNewLabelsGetsItsOwnClassifier()
    {
        var training = Images("file-i", Enumerable.Range(0, 10).Select(i => (i % 2 == 0 ? "cat" : "dog", 4)).ToArray());
        var (spec, error) = JobSpecification.Resolve(null, new LoraConfig { TargetModules = ["query", "value"] }, Vit, training, null, Limits);
        Assert.Null(error);
        Assert.Equal(["cat", "dog"], spec!.Adapter.Labels);
        Assert.Equal(["classifier"], spec.Adapter.ModulesToSave);
        Assert.Equal("SEQ_CLS", spec.Adapter.TaskType);
        Assert.Equal(10 * (Vit.NumPatches + 1L), spec.TrainingFileTokens);

        // Only the classifier to adapt: it is replaced, so the request must name other layers.
        var headOnly = JobSpecification.Resolve(null, new LoraConfig { TargetModules = ["classifier"] }, Vit, training, null, Limits).Error!;
        Assert.Equal("adapter.target_modules", headOnly.Param);

        // A validation file's labels must be the job's.
        var validation = Images("file-w", ("cat", 4), ("bird", 4));
        var wrong = JobSpecification.Resolve(null, Lora with { TargetModules = ["query"] }, Vit, training, validation, Limits).Error!;
        Assert.Equal(("validation_file", "invalid_file"), (wrong.Param, wrong.Code));
        Assert.Equal("File file-w is invalid: Line 2: label \"bird\" is not one of the model's labels (cat, dog)", wrong.Message);
    }

    [Fact]
    public void AnImageOfTheWrongSizeNamesItsLine()
    {
        var training = Images("file-i", [.. Enumerable.Repeat(("a", 4), 5), ("b", 3), .. Enumerable.Repeat(("a", 4), 5)]);
        var error = JobSpecification.Resolve(null, Lora, Vit, training, null, Limits).Error!;
        Assert.Equal("File file-i is invalid: Line 6: the image is 3×3; this model takes 4×4 images", error.Message);
        Assert.Equal("training_file", error.Param);
    }
}
