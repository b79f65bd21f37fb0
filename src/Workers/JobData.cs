using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Grading;
using AdapterService.Core.Inference;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using AdapterService.Core.Training;
using Microsoft.EntityFrameworkCore;
using static TorchSharp.torch;

namespace AdapterService.Workers;

/// <summary>A job's training and validation files (the texts read once, so a fused job reads them before joining its group).</summary>
sealed class JobData(FineTuningJob job, BaseModel baseModel, ServiceDbContext db, IBlobStore blobs, JobLifecycle jobs, InferenceEngine engine) : IJobData
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

    public (List<RlPrompt> Training, List<RlPrompt>? Validation) Prompts(int completionTokens) =>
        prompts is { } read && read.CompletionTokens == completionTokens ? read.Prompts
            : (prompts = (completionTokens, ReadPrompts(completionTokens))).Value.Prompts;

    (int CompletionTokens, (List<RlPrompt> Training, List<RlPrompt>? Validation) Prompts)? prompts;

    (List<RlPrompt> Training, List<RlPrompt>? Validation) ReadPrompts(int completionTokens) =>
        (JobFiles.LoadPrompts(db, blobs, job.TrainingFile, baseModel, job.ChatTemplate, completionTokens),
            job.ValidationFile is null ? null : JobFiles.LoadPrompts(db, blobs, job.ValidationFile, baseModel, job.ChatTemplate, completionTokens));

    /// <summary>
    /// The engine this process serves with (the API's when the worker runs inside it), for objectives that sample text:
    /// reinforcement's rollouts of the job's adapter and its score_model judges.
    /// </summary>
    public ObjectiveServices Services()
    {
        string folder = blobs.Resolve(baseModel.BlobPath);
        return new ObjectiveServices(engine, folder, ModelText.ForModel(folder), new EngineJudge(engine, db, blobs));
    }

    public (LabelledImages Training, LabelledImages? Validation) Images(VitConfig config, IReadOnlyList<string> labels) =>
        (JobFiles.LoadImages(db, blobs, job.TrainingFile, config, labels),
            job.ValidationFile is null ? null : JobFiles.LoadImages(db, blobs, job.ValidationFile, config, labels));
}
