using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Training;

namespace AdapterService.Core.Jobs;

/// <summary>Why a job cannot be created as asked, naming the request field (the API answers it as OpenAI's 400 error object).</summary>
public sealed record JobSpecError(string Message, string? Param, string? Code = null);

/// <summary>
/// The shared hyperparameters as requested: each a JSON number or "auto" (or absent). <see cref="Path"/> is where the
/// request holds them (<c>hyperparameters</c>, or <c>method.{type}.hyperparameters</c>), to name a bad one.
/// </summary>
public sealed record HyperparameterValues(JsonElement? NEpochs, JsonElement? BatchSize, JsonElement? LearningRateMultiplier, int? EarlyStoppingPatience = null,
    string Path = "hyperparameters");

/// <summary><c>FineTuning:MinExamples</c> and the project's token limit.</summary>
public sealed record JobLimits(int MinExamples, long MaxTrainingTokens);

/// <summary>
/// A training or validation file as a job sees it (<see cref="JobFiles.ReadAsync"/>): its stored facts and, for a
/// language model, its tokens; or why it cannot be used.
/// </summary>
public sealed record DataFile(string Id, FileFacts? Facts, long? Tokens, JobSpecError? Error = null);

/// <summary>What a job trains: its adapter, its hyperparameters with "auto" resolved, its training file's size.</summary>
/// <remarks><see cref="Sweep"/>: the request listed several values of a hyperparameter; <see cref="LearningRateMultiplier"/> is then the first.</remarks>
public sealed record JobSpec(AdapterConfig Adapter, int Epochs, int BatchSize, double LearningRateMultiplier, int? EarlyStoppingPatience,
    int ExampleCount, long TrainingFileTokens, Sweep? Sweep = null)
{
    public Hyperparameters Hyperparameters => JobSpecification.Hyperparameters(Epochs, BatchSize, LearningRateMultiplier);
}

/// <summary>
/// The one place a job's settings are decided: the API resolves a request with it, the worker reads a stored job with it.
/// Checks run in the order the API has always reported them, so the first problem of a request is the one named.
/// </summary>
public static class JobSpecification
{
    /// <summary>Learning rate for a learning_rate_multiplier of 1.</summary>
    public const double BaseLearningRate = 4e-3;

    /// <summary>The hyperparameters every objective takes (read here; an objective's own are its <see cref="TrainingObjective.Hyperparameters"/>).</summary>
    public static IReadOnlyList<string> SharedHyperparameters { get; } = ["n_epochs", "batch_size", "learning_rate_multiplier", "early_stopping_patience"];

    public static Hyperparameters Hyperparameters(int epochs, int batchSize, double learningRateMultiplier) =>
        new(epochs, batchSize, BaseLearningRate * learningRateMultiplier);

    /// <summary>The adapter and hyperparameters a stored job trains with.</summary>
    public static (AdapterConfig Adapter, Hyperparameters Hyperparameters) Of(FineTuningJob job) =>
        (AdapterConfig.Parse(job.AdapterConfig), Hyperparameters(job.Epochs, job.BatchSize, job.LearningRateMultiplier));

    /// <summary>The request field of a rank sweep (<see cref="Sweep.Rank"/>).</summary>
    public const string RankField = "adapter.rank";

    /// <summary>
    /// A request's job: <paramref name="adapter"/> is the requested adapter parsed against the base (an image classifier's
    /// is completed here), the files are as <see cref="JobFiles.ReadAsync"/> found them (<paramref name="validation"/> null without one).
    /// <paramref name="rankSweep"/>: the request listed several <c>adapter.rank</c> values (with each member's adapter);
    /// <paramref name="scoredByEval"/>: it names an eval, which then scores a sweep's members (no validation file needed).
    /// </summary>
    public static (JobSpec? Spec, JobSpecError? Error) Resolve(HyperparameterValues? hyperparameters, AdapterConfig adapter, ModelConfig baseConfig,
        DataFile training, DataFile? validation, JobLimits limits, TrainingObjective? objective = null, Sweep? rankSweep = null, bool scoredByEval = false)
    {
        if (training.Error is { } trainingError) return (null, trainingError);
        objective ??= JobObjectives.Find(JobObjectives.Supervised)!;
        if (objective.CheckFile(training, "training_file") is { } formatError) return (null, formatError);
        if (validation is { Error: null } && objective.CheckFile(validation, "validation_file") is { } validationFormatError) return (null, validationFormatError);
        var facts = training.Facts!;
        long tokens;
        if (baseConfig is VitConfig vit)
        {
            var newLabels = facts.NewLabels(vit);
            if (facts.ImageProblem(vit, newLabels ?? vit.Labels) is { } problem) return (null, Invalid(training, "training_file", problem));
            var (config, adapterError) = ImageClassifierAdapter(adapter, vit, newLabels);
            if (config is null) return (null, adapterError);
            adapter = config;
            tokens = facts.ExampleCount * (vit.NumPatches + 1L);
            if (validation?.Error is { } validationError) return (null, validationError);
            // A validation file's labels are the job's; with the base's labels, any of the base's (as the worker reads them).
            if (validation?.Facts is { } v && v.ImageProblem(vit, adapter.Labels ?? v.NewLabels(vit) ?? vit.Labels) is { } validationProblem)
                return (null, Invalid(validation, "validation_file", validationProblem));
        }
        else
        {
            tokens = training.Tokens ?? 0;
            if (validation?.Error is { } validationError) return (null, validationError);
        }
        if (tokens > limits.MaxTrainingTokens)
            return (null, new($"Training file {training.Id} has {tokens} tokens, more than the limit of {limits.MaxTrainingTokens}.", "training_file", "invalid_n_tokens"));
        if (facts.ExampleCount < limits.MinExamples)
            return (null, new($"Training file {training.Id} has {facts.ExampleCount} example(s), but must have at least {limits.MinExamples}.",
                "training_file", "invalid_n_examples"));

        JobSpecError? error = null;
        string path = hyperparameters?.Path ?? "hyperparameters";
        int? epochs = Auto(hyperparameters?.NEpochs, $"{path}.n_epochs", ref error, v => v is >= 1 and <= 50 && v == Math.Floor(v), "an integer between 1 and 50");
        int? batch = Auto(hyperparameters?.BatchSize, $"{path}.batch_size", ref error, v => v is >= 1 and <= 256 && v == Math.Floor(v), "an integer between 1 and 256");
        string lrName = $"{path}.learning_rate_multiplier";
        var (sweep, sweepError) = Sweep.Read(hyperparameters?.LearningRateMultiplier, Sweep.LearningRateMultiplier, lrName, v => v is > 0 and <= 50, "a number in (0, 50]");
        if (sweepError is not null) return (null, sweepError);
        double? lr = sweep is not null ? sweep.Values[0] : AutoDouble(hyperparameters?.LearningRateMultiplier, lrName, ref error, v => v is > 0 and <= 50, "a number in (0, 50]");
        if (error is not null) return (null, error);
        // One swept setting per job: its members differ in that alone, so the winner says which value of it is best.
        if (sweep is not null && rankSweep is not null)
            return (null, new($"A sweep varies one setting: {lrName} is a list already, so {RankField} must be one value (or sweep the ranks with one learning_rate_multiplier).", RankField));
        string? swept = sweep is not null ? lrName : rankSweep is not null ? RankField : null;
        sweep ??= rankSweep;
        if (sweep is not null)
        {
            // The members are scored on the validation file (or by the job's eval), and train fused over one copy of a language model.
            if (validation is null && !scoredByEval)
                return (null, new($"A sweep ({swept} as a list) scores its members by their validation loss: it needs a validation_file (or an eval to score them by).", "validation_file"));
            if (baseConfig is VitConfig || !objective.Fuses)
                return (null, new($"A sweep ({swept} as a list) trains its members fused, which {(baseConfig is VitConfig ? "an image classifier's" : $"the {objective.Name} method's")} training does not; give one value.", swept));
        }
        if (hyperparameters?.EarlyStoppingPatience is { } patience && (patience is < 1 or > 50 || validation is null))
            return (null, new($"{path}.early_stopping_patience must be 1-50 and needs a validation_file.", $"{path}.early_stopping_patience"));
        // "auto": in the spirit of OpenAI's defaults, a batch and an epoch count for the data set's size (about 100 steps).
        int examples = facts.ExampleCount;
        int resolvedBatch = batch ?? Math.Clamp(examples / 64, 1, 32);
        int stepsPerEpoch = (int)Math.Ceiling(examples / (double)resolvedBatch);
        int resolvedEpochs = epochs ?? Math.Clamp((int)Math.Ceiling(100.0 / stepsPerEpoch), 3, 25);
        return (new JobSpec(adapter, resolvedEpochs, resolvedBatch, lr ?? 1.0, hyperparameters?.EarlyStoppingPatience, examples, tokens, sweep), null);
    }

    static JobSpecError Invalid(DataFile file, string param, TrainingFileException problem) =>
        new($"File {file.Id} is invalid: {problem.Message}", param, "invalid_file");

    static int? Auto(JsonElement? value, string name, ref JobSpecError? error, Func<double, bool> valid, string expected) =>
        (int?)AutoDouble(value, name, ref error, valid, expected);

    static double? AutoDouble(JsonElement? value, string name, ref JobSpecError? error, Func<double, bool> valid, string expected)
    {
        if (value is not { } v || v.ValueKind == JsonValueKind.Null || v.ValueKind == JsonValueKind.String && v.GetString() == "auto") return null;
        if (v.ValueKind == JsonValueKind.Number && valid(v.GetDouble())) return v.GetDouble();
        if (v.ValueKind == JsonValueKind.Array)
        {
            error ??= new($"{name} cannot be a list: a sweep lists values of learning_rate_multiplier or adapter.rank only.", name);
            return null;
        }
        error ??= new($"{name} must be \"auto\" or {expected}, got {v.GetRawText()}.", name);
        return null;
    }

    /// <summary>
    /// An image classifier's adapter: not causal (Lily's router averages over all of an image's tokens), and, when the
    /// file's labels are not the base's, with its own classifier (so the base's is not also adapted).
    /// </summary>
    static (AdapterConfig? Config, JobSpecError? Error) ImageClassifierAdapter(AdapterConfig config, VitConfig vit, IReadOnlyList<string>? labels)
    {
        config = config with { TaskType = "SEQ_CLS" };
        if (labels is null) return (config, null);
        var targets = config.TargetModules is ["all-linear"]
            ? vit.LinearPaths().Where(p => p != "classifier").Select(p => p.Split('.')[^1]).Distinct().Order().ToList()
            : config.TargetModules.Where(t => t != "classifier").ToList();
        bool adaptsHead;
        // MixLoRA may name no layer at all: its experts adapt the encoder's feed-forward networks.
        try { adaptsHead = targets.Count == 0 ? AdapterMethods.Of(config).RequiresTargetModules : TargetModules.Match(vit.LinearPaths(), targets).Contains("classifier"); }
        catch (ArgumentException) { adaptsHead = true; }   // only the classifier matched
        if (adaptsHead)
            return (null, new($"The training file's labels ({string.Join(", ", labels)}) are not the base's ({string.Join(", ", vit.Labels)}): " +
                "the adapter gets a new classifier, so adapter.target_modules must name layers other than the classifier.", "adapter.target_modules"));
        return (config with { TargetModules = targets, ModulesToSave = ["classifier"], Labels = labels }, null);
    }
}
