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
sealed class JobData(FineTuningJob job, BaseModel baseModel, ServiceDbContext db, IBlobStore blobs, JobLifecycle jobs)
{
    (List<TokenizedExample>, List<TokenizedExample>?)? texts;

    /// <summary>The files' token sequences; examples cut to the context are reported in the job's events.</summary>
    public (List<TokenizedExample> Training, List<TokenizedExample>? Validation) Texts() => texts ??= ReadTexts();

    (List<TokenizedExample>, List<TokenizedExample>?) ReadTexts()
    {
        var training = JobFiles.LoadTokenized(db, blobs, job.TrainingFile, baseModel, job.ChatTemplate);
        var validation = job.ValidationFile is null ? null : JobFiles.LoadTokenized(db, blobs, job.ValidationFile, baseModel, job.ChatTemplate);
        foreach (var message in new[] { training.TruncationMessage(job.TrainingFile, baseModel.ContextLength),
                                        validation?.TruncationMessage(job.ValidationFile!, baseModel.ContextLength) })
            if (message is not null) jobs.AddEvent(job.Id, message, level: "warn");
        return (training.Examples, validation?.Examples);
    }

    /// <summary>
    /// Writes beside an adapter the chat template the job trains with and the tokenizer's hash, so the fine-tuned model
    /// (and each checkpoint) is served as it was trained. Nothing for an image classifier.
    /// </summary>
    public void WriteTrainedWith(string folder)
    {
        if (baseModel.Family == "vit") return;
        var text = ModelText.ForModel(blobs.Resolve(baseModel.BlobPath));
        ModelText.WriteTrainedWith(folder, text, text.Template is null && job.ChatTemplate is null ? null : text.ChooseTemplate(job.ChatTemplate));
    }

    public (LabelledImages Training, LabelledImages? Validation) Images(VitConfig config, IReadOnlyList<string> labels) =>
        (JobFiles.LoadImages(db, blobs, job.TrainingFile, config, labels),
            job.ValidationFile is null ? null : JobFiles.LoadImages(db, blobs, job.ValidationFile, config, labels));
}
