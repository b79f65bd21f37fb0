using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using AdapterService.Core.Training;
using Microsoft.EntityFrameworkCore;
using static TorchSharp.torch;

namespace AdapterService.Workers;

/// <summary>A job's trainer as its objective made it: the trainer, how many examples an epoch has, and how it is validated.</summary>
sealed record ObjectiveTrainer(AdapterTrainer Trainer, int ExampleCount, Func<(double Loss, double Accuracy)>? Evaluate);

/// <summary>
/// The one place a job's trainer is made for its objective (<see cref="JobObjectives"/>): supervised fine-tuning today;
/// a preference (DPO) or reinforcement objective adds a case here with its trainer and data, whatever the adapter method.
/// </summary>
static class TrainingObjectives
{
    public static ObjectiveTrainer Create(FineTuningJob job, nn.Module model, TrainableAdapter adapter, AdapterConfig config, JobData files,
        Hyperparameters hp, TrainingSpeedOptions speed) => JobObjectives.Of(job) switch
    {
        JobObjectives.Supervised => Supervised(job, model, adapter, config, files, hp, speed),
        var other => throw new InvalidDataException($"The training objective {other} is not supported"),
    };

    static ObjectiveTrainer Supervised(FineTuningJob job, nn.Module model, TrainableAdapter adapter, AdapterConfig config, JobData files,
        Hyperparameters hp, TrainingSpeedOptions speed)
    {
        if (model is ViTForImageClassification vit)
        {
            // An adapter with its own labels classifies into them; otherwise into the base's.
            var (examples, validation) = files.Images(vit.Config, config.Labels ?? vit.Config.Labels);
            var classifier = new ClassificationTrainer(vit, adapter, examples, hp, job.Seed);
            return new(classifier, examples.Count, validation is null ? null : () => classifier.Evaluate(validation));
        }
        var languageModel = model as CausalLanguageModel ?? throw new InvalidDataException($"{job.Model} is neither a language model nor an image classifier");
        var (texts, validTexts) = files.Texts();
        var lm = new LanguageModelTrainer(languageModel, adapter, texts, hp, padId: 0, job.Seed, speed);   // padding is never trained on
        return new(lm, texts.Count, validTexts is null ? null : () => lm.Evaluate(validTexts));
    }
}

/// <summary>A job's training and validation files (the texts read once, so a fused job reads them before joining its group).</summary>
sealed class JobData(FineTuningJob job, BaseModel baseModel, ServiceDbContext db, IBlobStore blobs)
{
    (List<TokenizedExample>, List<TokenizedExample>?)? texts;

    public (List<TokenizedExample> Training, List<TokenizedExample>? Validation) Texts() =>
        texts ??= (JobFiles.LoadTokenized(db, blobs, job.TrainingFile, baseModel),
            job.ValidationFile is null ? null : JobFiles.LoadTokenized(db, blobs, job.ValidationFile, baseModel));

    public (LabelledImages Training, LabelledImages? Validation) Images(VitConfig config, IReadOnlyList<string> labels) =>
        (JobFiles.LoadImages(db, blobs, job.TrainingFile, config, labels),
            job.ValidationFile is null ? null : JobFiles.LoadImages(db, blobs, job.ValidationFile, config, labels));
}
