using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Grading;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using AdapterService.Core.Training;
using static TorchSharp.torch;

namespace AdapterService.Core.Jobs;

/// <summary>
/// The data a job's trainer reads, as the worker loads it (once: a fused job reads it before joining its group).
/// </summary>
public interface IJobData
{
    /// <summary>A language model's training and validation examples as token sequences.</summary>
    (List<TokenizedExample> Training, List<TokenizedExample>? Validation) Texts();

    /// <summary>An image classifier's labelled images, as class indices into <paramref name="labels"/>.</summary>
    (LabelledImages Training, LabelledImages? Validation) Images(VitConfig config, IReadOnlyList<string> labels);

    /// <summary>A reinforcement file's prompts (and the validation file's), leaving <paramref name="completionTokens"/> of the context for answers.</summary>
    (List<RlPrompt> Training, List<RlPrompt>? Validation) Prompts(int completionTokens);
}

/// <summary>
/// What a worker lends an objective that generates text while it trains (reinforcement's rollouts and judges): the
/// inference engine it serves with, the base's folder and text rules, and the judge that answers <c>score_model</c> graders.
/// </summary>
public sealed record ObjectiveServices(InferenceEngine Engine, string BaseFolder, ModelText Text, IJudge Judge);

/// <summary>
/// What an objective's trainer is made from in the worker: the job, the base (a fresh copy, or a fused group's), the
/// job's adapter attached to nothing yet, its data and hyperparameters. <see cref="ContinuesFrom"/> is true when the
/// adapter holds a fine-tuned model's weights (the job continues from it): the starting model is then the adapter as
/// it is now, not the base alone.
/// </summary>
public sealed record ObjectiveRun(FineTuningJob Job, nn.Module Model, TrainableAdapter Adapter, AdapterConfig Config, IJobData Data,
    Hyperparameters Hp, TrainingSpeedOptions Speed, bool ContinuesFrom)
{
    /// <summary>The engine and judge an objective that samples text uses (the worker's; null where none is lent).</summary>
    public ObjectiveServices? Services { get; init; }
}

/// <summary>A job's trainer as its objective made it: the trainer, how many examples an epoch has, and how it is validated.</summary>
public sealed record ObjectiveTrainer(AdapterTrainer Trainer, int ExampleCount, Func<(double Loss, double Accuracy)>? Evaluate);

/// <summary>One of the job's own hyperparameters beyond the shared ones (n_epochs, batch_size, learning_rate_multiplier).</summary>
public sealed record ObjectiveHyperparameter(string Name, double Default, Func<double, bool> Valid, string Expected);

/// <summary>
/// A training objective: what a fine-tuning job optimises (OpenAI's <c>method.type</c>), apart from how its adapter is
/// built (the adapter method, <see cref="AdapterMethods"/>). It owns everything that differs between objectives: its
/// part of the request (<c>method.{type}</c>), the file formats it trains on, and the trainer the worker runs.
/// </summary>
public abstract class TrainingObjective
{
    /// <summary>Its <c>method.type</c>.</summary>
    public abstract string Name { get; }

    /// <summary>The training file formats it trains on.</summary>
    public abstract IReadOnlyList<TrainingFileFormat> Formats { get; }

    /// <summary>Its own hyperparameters, each with its default (the shared ones are read by <see cref="JobSpecification"/>).</summary>
    public virtual IReadOnlyList<ObjectiveHyperparameter> Hyperparameters => [];

    /// <summary>Whether its jobs train in a fused group with other jobs on the same base (<see cref="FusedTrainer"/>).</summary>
    public virtual bool Fuses => false;

    /// <summary>Reads (and caches) the data its trainer will read, so that a fused job does it on its own thread, not between its group's steps.</summary>
    public virtual void Preload(FineTuningJob job, IJobData data) => data.Texts();

    /// <summary>
    /// Its part of the request, <c>method.{type}</c> (null when absent), resolved into the settings stored on the job:
    /// <c>{"hyperparameters": {its own, defaults filled in}}</c>. The shared hyperparameters are skipped here; any other
    /// key is an error naming it. An objective with more than hyperparameters (a grader) overrides this.
    /// </summary>
    public virtual (JsonObject? Settings, JobSpecError? Error) Resolve(JsonElement? section)
    {
        var own = new JsonObject();
        string path = $"method.{Name}";
        JsonElement? hyperparameters = null;
        if (section is { ValueKind: not JsonValueKind.Null } s)
        {
            if (s.ValueKind != JsonValueKind.Object) return (null, new($"{path} must be an object.", path));
            foreach (var property in s.EnumerateObject())
                if (property.Name == "hyperparameters") hyperparameters = property.Value;
                else return (null, new($"{path}.{property.Name} is not a field of the {Name} method.", $"{path}.{property.Name}"));
        }
        if (hyperparameters is { ValueKind: not JsonValueKind.Null } h)
        {
            if (h.ValueKind != JsonValueKind.Object) return (null, new($"{path}.hyperparameters must be an object.", $"{path}.hyperparameters"));
            foreach (var property in h.EnumerateObject())
                if (!JobSpecification.SharedHyperparameters.Contains(property.Name) && Hyperparameters.All(p => p.Name != property.Name))
                    return (null, new($"{path}.hyperparameters.{property.Name} is not a hyperparameter of the {Name} method; it takes "
                        + string.Join(", ", JobSpecification.SharedHyperparameters.Concat(Hyperparameters.Select(p => p.Name))) + ".",
                        $"{path}.hyperparameters.{property.Name}"));
        }
        foreach (var p in Hyperparameters)
        {
            double value = p.Default;
            if (hyperparameters is { ValueKind: JsonValueKind.Object } given && given.TryGetProperty(p.Name, out var v)
                && !(v.ValueKind == JsonValueKind.Null || v.ValueKind == JsonValueKind.String && v.GetString() == "auto"))
            {
                if (v.ValueKind != JsonValueKind.Number || !p.Valid(v.GetDouble()))
                    return (null, new($"{path}.hyperparameters.{p.Name} must be \"auto\" or {p.Expected}, got {v.GetRawText()}.", $"{path}.hyperparameters.{p.Name}"));
                value = v.GetDouble();
            }
            own[p.Name] = value;
        }
        return (new JsonObject { ["hyperparameters"] = own }, null);
    }

    /// <summary>Why <paramref name="file"/> cannot train a job of this objective (named by <paramref name="param"/>), or null.</summary>
    public JobSpecError? CheckFile(DataFile file, string param) =>
        file.Facts is { } facts && !Formats.Contains(facts.Format)
            ? new($"File {file.Id} is in the {facts.FormatName} format; the {Name} method trains on {string.Join(" or ", Formats.Select(TrainingFile.FormatNameOf))} files.",
                param, "invalid_file_format")
            : null;

    /// <summary>
    /// What the request's settings need of the service beyond their shape (models they name exist, the files hold what
    /// they read), checked when the job is created; null when all is well. Most objectives need nothing.
    /// </summary>
    public virtual Task<JobSpecError?> CheckAsync(JsonObject? settings, ServiceDbContext db, IBlobStore blobs, string trainingFile, string? validationFile,
        CancellationToken cancel) => Task.FromResult<JobSpecError?>(null);

    /// <summary>The job's trainer, its adapter attached to the run's model.</summary>
    public abstract ObjectiveTrainer CreateTrainer(ObjectiveRun run);

    /// <summary>A stored job's value of one of its own hyperparameters.</summary>
    public double Setting(FineTuningJob job, string name) =>
        Settings(job)?["hyperparameters"]?[name]?.GetValue<double>() ?? Hyperparameters.Single(p => p.Name == name).Default;

    /// <summary>A stored job's settings (<see cref="Resolve"/>'s result).</summary>
    public static JsonObject? Settings(FineTuningJob job) => job.ObjectiveSettings is null ? null : JsonNode.Parse(job.ObjectiveSettings)!.AsObject();
}

/// <summary>The objectives jobs may ask for, by <c>method.type</c>: the one place an objective is registered.</summary>
public static class JobObjectives
{
    public const string Supervised = "supervised", Dpo = "dpo";

    static readonly Dictionary<string, TrainingObjective> Registered = new TrainingObjective[]
    {
        new SupervisedObjective(),
        new PreferenceObjective(),
        new ReinforcementObjective(),
    }.ToDictionary(o => o.Name);

    /// <summary>The objectives a job may ask for in <c>method.type</c>.</summary>
    public static IReadOnlyList<string> All { get; } = [.. Registered.Keys];

    public static TrainingObjective? Find(string name) => Registered.GetValueOrDefault(name);

    /// <summary>The objective of a stored fine-tuning job.</summary>
    public static TrainingObjective Of(FineTuningJob job) =>
        Find(job.Objective) ?? throw new InvalidDataException($"The training objective '{job.Objective}' is not supported by this worker");
}

/// <summary>Supervised fine-tuning: cross-entropy on the assistant/completion tokens, or on an image's label.</summary>
public sealed class SupervisedObjective : TrainingObjective
{
    public override string Name => JobObjectives.Supervised;
    public override IReadOnlyList<TrainingFileFormat> Formats { get; } =
        [TrainingFileFormat.Chat, TrainingFileFormat.PromptCompletion, TrainingFileFormat.Image];
    public override bool Fuses => true;

    public override ObjectiveTrainer CreateTrainer(ObjectiveRun run)
    {
        var (job, model, adapter, config, data, hp, speed, _) = run;
        if (model is ViTForImageClassification vit)
        {
            // An adapter with its own labels classifies into them; otherwise into the base's.
            var (examples, validation) = data.Images(vit.Config, config.Labels ?? vit.Config.Labels);
            var classifier = new ClassificationTrainer(vit, adapter, examples, hp, job.Seed);
            return new(classifier, examples.Count, validation is null ? null : () => classifier.Evaluate(validation));
        }
        var languageModel = model as CausalLanguageModel ?? throw new InvalidDataException($"{job.Model} is neither a language model nor an image classifier");
        var (texts, validTexts) = data.Texts();
        var lm = new LanguageModelTrainer(languageModel, adapter, texts, hp, padId: 0, job.Seed, speed);   // padding is never trained on
        return new(lm, texts.Count, validTexts is null ? null : () => lm.Evaluate(validTexts));
    }
}

/// <summary>
/// Direct Preference Optimization (<see cref="PreferenceTrainer"/>) on OpenAI's preference files: the reference is the
/// starting model (the base, or the fine-tuned model the job continues from); <c>beta</c> scales the implicit reward.
/// </summary>
public sealed class PreferenceObjective : TrainingObjective
{
    public override string Name => JobObjectives.Dpo;
    public override IReadOnlyList<TrainingFileFormat> Formats { get; } = [TrainingFileFormat.Preference];
    public override bool Fuses => true;
    public override IReadOnlyList<ObjectiveHyperparameter> Hyperparameters { get; } =
        [new("beta", 0.1, v => v is > 0 and <= 10, "a number in (0, 10]")];

    public override ObjectiveTrainer CreateTrainer(ObjectiveRun run)
    {
        var (job, model, adapter, _, data, hp, speed, continuesFrom) = run;
        var languageModel = model as CausalLanguageModel ?? throw new InvalidDataException($"{job.Model} is not a language model: DPO trains language models");
        var (texts, validTexts) = data.Texts();
        var trainer = new PreferenceTrainer(languageModel, adapter, PreferencePair.Of(texts), validTexts is null ? null : PreferencePair.Of(validTexts),
            hp, Setting(job, "beta"), job.Seed, referenceIsAdapter: continuesFrom, speed);
        return new(trainer, texts.Count / 2, validTexts is null ? null : trainer.Evaluate);
    }
}
