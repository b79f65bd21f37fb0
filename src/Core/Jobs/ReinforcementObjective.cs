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
/// Reinforcement fine-tuning (OpenAI's <c>method.type: "reinforcement"</c>): <c>method.reinforcement.grader</c> grades
/// sampled answers to the file's prompts and GRPO trains on the grades (<see cref="GrpoTrainer"/>, docs/METHODS.md).
/// Its file is a reinforcement file (chat prompts ending with a user message, extra fields for the grader).
/// </summary>
public sealed class ReinforcementObjective : TrainingObjective
{
    public const string Type = "reinforcement";
    public override string Name => Type;
    public override IReadOnlyList<TrainingFileFormat> Formats { get; } = [TrainingFileFormat.Reinforcement];
    public override bool Fuses => true;
    public override void Preload(FineTuningJob job, IJobData data) => data.Prompts((int)Setting(job, "max_completion_tokens"));

    /// <summary>OpenAI's reasoning_effort values: accepted and recorded, the models here do not reason separately.</summary>
    static readonly string[] ReasoningEfforts = ["default", "low", "medium", "high"];

    public override IReadOnlyList<ObjectiveHyperparameter> Hyperparameters { get; } =
    [
        new("compute_multiplier", 1, v => Math.Round(8 * v) is >= 2 and <= 32, "a number from 0.25 to 4 (the group size is 8 × compute_multiplier)"),
        new("eval_interval", 0, v => v >= 1 && v == Math.Floor(v), "a positive integer (steps between evaluations)"),
        new("eval_samples", 4, v => v is >= 1 and <= 8 && v == Math.Floor(v), "an integer from 1 to 8"),
        new("beta", 0.04, v => v is >= 0 and <= 10, "a number from 0 to 10 (the KL weight)"),
        new("max_completion_tokens", 64, v => v is >= 1 and <= 4096 && v == Math.Floor(v), "an integer from 1 to 4096"),
    ];

    /// <summary>Completions sampled per prompt for a job's compute_multiplier.</summary>
    public static int GroupSize(double computeMultiplier) => (int)Math.Round(8 * computeMultiplier);

    /// <summary>
    /// <c>method.reinforcement</c>: a grader (required, checked into a typed grader, errors naming its JSON path) and the
    /// hyperparameters. Settings stored: <c>{"grader": …, "hyperparameters": {…, "reasoning_effort": …}}</c>.
    /// </summary>
    public override (JsonObject? Settings, JobSpecError? Error) Resolve(JsonElement? section)
    {
        const string path = "method." + Type;
        if (section is not { ValueKind: JsonValueKind.Object } s)
            return (null, new($"Missing required parameter: '{path}.grader'.", $"{path}.grader"));
        if (!s.TryGetProperty("grader", out var grader) || grader.ValueKind == JsonValueKind.Null)
            return (null, new($"Missing required parameter: '{path}.grader'.", $"{path}.grader"));
        try { Graders.Parse(grader, $"{path}.grader"); }
        catch (GraderException e) { return (null, new(e.Message, e.Param)); }

        // The rest as any objective's hyperparameters, reasoning_effort (a string) taken out first.
        var rest = new JsonObject();
        string reasoning = "default";
        foreach (var property in s.EnumerateObject().Where(p => p.Name != "grader"))
        {
            if (property.Name == "hyperparameters" && property.Value.ValueKind == JsonValueKind.Object)
            {
                var hyperparameters = new JsonObject();
                foreach (var h in property.Value.EnumerateObject())
                    if (h.Name == "early_stopping_patience" && h.Value.ValueKind != JsonValueKind.Null)
                        return (null, new($"{path}.hyperparameters.early_stopping_patience is not supported by reinforcement jobs: they have no validation loss to stop on (eval_interval evaluates the validation file's reward).",
                            $"{path}.hyperparameters.early_stopping_patience"));
                    else if (h.Name != "reasoning_effort") hyperparameters[h.Name] = JsonNode.Parse(h.Value.GetRawText());
                    else if (h.Value.ValueKind == JsonValueKind.String && ReasoningEfforts.Contains(h.Value.GetString()))
                        reasoning = h.Value.GetString()!;
                    else return (null, new($"{path}.hyperparameters.reasoning_effort must be one of {string.Join(", ", ReasoningEfforts)}.", $"{path}.hyperparameters.reasoning_effort"));
                rest["hyperparameters"] = hyperparameters;
            }
            else rest[property.Name] = JsonNode.Parse(property.Value.GetRawText());
        }
        var (settings, error) = base.Resolve(JsonDocument.Parse(rest.ToJsonString()).RootElement);
        if (error is not null) return (null, error);
        settings!["hyperparameters"]!["reasoning_effort"] = reasoning;
        settings["grader"] = JsonNode.Parse(grader.GetRawText());
        return (settings, null);
    }

    /// <summary>The stored job's grader.</summary>
    public static Grader GraderOf(JsonObject settings) =>
        Graders.Parse(JsonDocument.Parse(settings["grader"]!.ToJsonString()).RootElement, $"method.{Type}.grader");

    /// <summary>
    /// What the request's settings need beyond their shape: every judge model exists (a base, a fine-tuned model or a
    /// checkpoint this project sees), and every line of the training and validation files has the item fields the grader uses.
    /// </summary>
    public override async Task<JobSpecError?> CheckAsync(JsonObject? settings, ServiceDbContext db, IBlobStore blobs, string trainingFile,
        string? validationFile, CancellationToken cancel)
    {
        var grader = GraderOf(settings!);
        foreach (var (model, path) in grader.JudgeModels)
            if (await ModelNames.ResolveAsync(db, model, cancel) is not { } judge || judge.Base.Family == "vit")
                return new($"The judge model '{model}' does not exist or is not a language model.", path, "model_not_found");
        foreach (var (file, param) in new[] { (trainingFile, "training_file"), (validationFile, "validation_file") })
            if (file is not null && await JobFiles.MissingGraderFieldAsync(db, blobs, file, grader, cancel) is { } missing)
                return new(missing, param, "invalid_file");
        return null;
    }

    public override ObjectiveTrainer CreateTrainer(ObjectiveRun run)
    {
        var (job, model, adapter, config, data, hp, _, continuesFrom) = run;
        var lm = model as CausalLanguageModel ?? throw new InvalidDataException($"{job.Model} is not a language model: reinforcement fine-tuning samples text");
        var services = run.Services ?? throw new InvalidOperationException("reinforcement fine-tuning needs the worker's inference engine");
        var settings = Settings(job)!;
        var grader = GraderOf(settings);
        int maxTokens = (int)Setting(job, "max_completion_tokens");
        var (prompts, validation) = data.Prompts(maxTokens);
        // Continuing from a fine-tuned model: its adapter, frozen, is the starting model the KL keeps the policy near.
        TrainableAdapter? reference = null;
        if (continuesFrom)
        {
            reference = TrainableAdapter.Create(model, config);
            using var noGrad = no_grad();
            foreach (var (to, from) in reference.SavedParameters().Zip(adapter.SavedParameters())) to.Value.copy_(from.Value);
        }
        var sampler = new EngineRollouts(services.Engine, job.Model, services.BaseFolder, model, adapter, services.Text, job.Id);
        var trainer = new GrpoTrainer(lm, adapter, prompts, grader, services.Judge, sampler, hp,
            new GrpoSettings(GroupSize(Setting(job, "compute_multiplier")), Setting(job, "beta"), maxTokens), job.Seed, reference)
        {
            Validation = validation,
            EvalInterval = (int)Setting(job, "eval_interval"),
            EvalSamples = (int)Setting(job, "eval_samples"),
        };
        return new(trainer, prompts.Count, null);
    }
}
