using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Adapters;
using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Apis;

/// <summary>Hyperparameters: each a number or "auto" (resolved from the data set's size when the job is created).</summary>
/// <param name="NEpochs" example="3">Passes over the training file: an integer 1-50, or "auto".</param>
/// <param name="BatchSize" example="1">Examples per training step: an integer 1-256, or "auto".</param>
/// <param name="LearningRateMultiplier" example="1">Scales the base learning rate (4e-3 for LoRA): a number in (0, 50], or "auto" (1).</param>
/// <param name="EarlyStoppingPatience">Our extension, with a validation file: stop after this many epochs (1-50) without a lower validation loss.</param>
public sealed record HyperparametersRequest(JsonElement? NEpochs, JsonElement? BatchSize, JsonElement? LearningRateMultiplier, int? EarlyStoppingPatience = null);

/// <summary>
/// OpenAI's training method: <c>{"type": "supervised" | "dpo" | …, "&lt;type&gt;": {"hyperparameters": {...}, ...}}</c>.
/// The part named by the type is read by that objective (<see cref="TrainingObjective.Resolve"/>).
/// </summary>
public sealed class MethodRequest
{
    /// <summary>The training objective: "supervised" or "dpo".</summary>
    /// <example>supervised</example>
    public string? Type { get; init; }

    /// <summary>The objectives' parts (<c>supervised</c>, <c>dpo</c>, …), by name.</summary>
    [JsonExtensionData]
    public Dictionary<string, JsonElement>? Sections { get; init; }
}

/// <summary>A fine-tuning job to create (OpenAI's fields plus <c>adapter</c>).</summary>
/// <param name="Model" example="tiny-llama-demo">The base model to fine-tune, or a fine-tuned model (or a checkpoint's name or id) whose adapter the job continues to train.</param>
/// <param name="TrainingFile" example="file-abc123">Id of an uploaded file with purpose fine-tune.</param>
/// <param name="ValidationFile">Id of an uploaded file with purpose fine-tune; its loss and token accuracy are measured at every epoch's end.</param>
/// <param name="Hyperparameters">OpenAI's older top-level form; method.supervised.hyperparameters wins when both are given.</param>
/// <param name="Suffix" example="my-model">Up to 64 letters, digits, '-' or '_'; part of the fine-tuned model's name.</param>
/// <param name="Seed" example="42">Makes the run reproducible; random when absent.</param>
/// <param name="Adapter">Which adapter method to train and its options (default: LoRA r=8 on all linear layers).</param>
/// <param name="Method">OpenAI's newer form: {"type": "supervised", "supervised": {"hyperparameters": {...}}}, or "dpo" with a preference file (see docs/API.md).</param>
/// <param name="Metadata">Up to 16 key-value pairs (keys up to 64 characters, values up to 512) to find the job by later.</param>
/// <param name="ChatTemplate">Our extension: the Jinja chat template to train chat examples with, a name of the base model's templates or a template's source (default: the base's own). The fine-tuned model is served with it.</param>
/// <param name="Eval">Our extension: an eval run on every checkpoint, {"id": "eval_...", "data_source": {a run's completions data source without a model}, "keep_best": "criterion name"}; with keep_best the fine-tuned model is the checkpoint with the highest mean grade on that criterion (see docs/API.md).</param>
public sealed record CreateFineTuningJobRequest(
    string? Model, string? TrainingFile, string? ValidationFile, HyperparametersRequest? Hyperparameters, string? Suffix,
    long? Seed, AdapterRequest? Adapter, MethodRequest? Method, Dictionary<string, string>? Metadata, string? ChatTemplate = null, JsonElement? Eval = null);


public sealed record HyperparametersDto(int NEpochs, int BatchSize, double LearningRateMultiplier, int? EarlyStoppingPatience = null);
public sealed record JobErrorDto(string Code, string Message, string? Param);

/// <summary>OpenAI's fine-tuning job object, plus <c>adapter</c>.</summary>
public sealed record FineTuningJobDto(
    string Id, string Object, string Model, long CreatedAt, long? FinishedAt, string? FineTunedModel, string OrganizationId,
    IReadOnlyList<string> ResultFiles, string Status, string? ValidationFile, string TrainingFile, HyperparametersDto Hyperparameters,
    long? TrainedTokens, JobErrorDto? Error, long Seed, string? Suffix, long? EstimatedFinish, IReadOnlyDictionary<string, string>? Metadata,
    IReadOnlyList<object> Integrations, JsonObject Method, AdapterDto Adapter, long TrainingFileTokens, long EstimatedTrainedTokens,
    string? ChatTemplate, JsonElement? Eval = null, [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] SweepDto? Sweep = null);

public sealed record JobEventDto(string Id, string Object, long CreatedAt, string Level, string Message, string Type, JsonElement? Data);

public sealed record ListResponse<T>(string Object, IReadOnlyList<T> Data, bool HasMore);

/// <summary><c>FineTuning:MinExamples</c>: the fewest training examples a job accepts (OpenAI's rule: 10).</summary>
public sealed class FineTuningLimits
{
    public int MinExamples { get; set; } = 10;
}

/// <summary>
/// OpenAI's checkpoint object; <c>fine_tuned_model_checkpoint</c> is a model name usable for inference. A sweep member's
/// checkpoint also has <c>sweep_member</c> (0-based) and the member's <c>hyperparameters</c> (our extension).
/// </summary>
public sealed record CheckpointDto(string Id, string Object, long CreatedAt, string FineTunedModelCheckpoint, int StepNumber, JsonElement Metrics, string FineTuningJobId,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int? SweepMember = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] IReadOnlyDictionary<string, object>? Hyperparameters = null);

/// <summary>
/// A sweep job's members (our extension, <c>sweep</c> on the job): the swept parameter, its values, and per member its
/// last checkpoint's losses; <c>best_member</c> is the member whose adapter is the fine-tuned model (set when the job succeeded).
/// <c>scored_by</c> is the checkpoint metric members are compared by: <c>valid_loss</c> (lowest wins) or an eval
/// criterion's <c>eval_{criterion}</c> (highest wins), with the eval's id in <c>eval_id</c>.
/// </summary>
public sealed record SweepDto(string Parameter, IReadOnlyList<double> Values, IReadOnlyList<SweepMemberDto> Members, int? BestMember,
    string ScoredBy = "valid_loss", [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? EvalId = null);

/// <summary>
/// One sweep member: its index, hyperparameters, and its newest checkpoint with that checkpoint's losses (null before its
/// first epoch ended). Scored by an eval, also <c>eval_score</c>: the criterion's mean grade on the member's adapter (its
/// last checkpoint, or with keep_best its best one, named in <c>eval_checkpoint</c>); null until that was scored.
/// </summary>
public sealed record SweepMemberDto(int Member, IReadOnlyDictionary<string, object> Hyperparameters, string? Checkpoint, int? Step, double? TrainLoss, double? ValidLoss,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] double? EvalScore = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? EvalCheckpoint = null);

public sealed record CheckpointListResponse(string Object, IReadOnlyList<CheckpointDto> Data, bool HasMore, string? FirstId, string? LastId);

/// <summary>A list's cursor query: the items after the one with id <c>after</c>, at most <c>limit</c> of them.</summary>
public sealed record PageQuery([FromQuery(Name = "after")] string? After, [FromQuery(Name = "limit")] int? Limit);

/// <summary>How jobs and their events appear in the API.</summary>
public static partial class FineTuningJobsApi
{
    public static FineTuningJobDto ToDto(this FineTuningJob j, IReadOnlyDictionary<string, string>? metadata, IReadOnlyList<string>? resultFiles = null,
        IReadOnlyList<Checkpoint>? checkpoints = null)
    {
        var sweep = Sweep.Of(j);
        // A sweep shows its chosen learning rate and adapter once it has them (the first listed before).
        int? best = sweep?.BestMember;
        var hp = new HyperparametersDto(j.Epochs, j.BatchSize, best is { } b ? sweep!.LearningRateMultiplierOf(j, b) : j.LearningRateMultiplier, j.EarlyStoppingPatience);
        // A built-in base's pre-training trains no adapter; its settings are the pre-training's own.
        bool pretraining = j.AdapterType == JobKinds.PretrainingType;
        return new FineTuningJobDto(j.Id, "fine_tuning.job", j.StartModel ?? j.Model, j.CreatedAt, j.FinishedAt, j.FineTunedModel, "org-local", resultFiles ?? [],
            j.Status, j.ValidationFile, j.TrainingFile, hp, j.TrainedTokens,
            j.ErrorMessage is null ? null : new JobErrorDto(j.ErrorCode ?? "error", j.ErrorMessage, j.ErrorParam),
            j.Seed, j.Suffix, j.Status == JobStatus.Running ? j.EstimatedFinish : null, metadata is { Count: > 0 } ? metadata : null, [],
            Method(j, hp, pretraining),
            pretraining ? new AdapterDto(JobKinds.PretrainingType, 0, null, null, []) : AdapterDto.From(AdapterConfig.Parse(best is { } kept ? sweep!.AdapterConfigOf(j, kept) : j.AdapterConfig)),
            j.TrainingFileTokens, j.TrainingFileTokens * (sweep?.Values.Count ?? 1) * j.Epochs, j.ChatTemplate,
            j.EvalSettings is null ? null : JsonDocument.Parse(j.EvalSettings).RootElement, sweep is null ? null : SweepOf(j, sweep, checkpoints ?? []));
    }

    /// <summary>A sweep's members with their newest checkpoints' losses, and their eval scores when an eval scores them.</summary>
    static SweepDto SweepOf(FineTuningJob j, Sweep sweep, IReadOnlyList<Checkpoint> checkpoints)
    {
        var eval = sweep.Criterion is null || j.EvalSettings is null ? null : Core.Evals.EvalAttachment.FromJson(j.EvalSettings);
        return new(sweep.Parameter, sweep.Values, sweep.Values.Select((_, m) =>
        {
            var own = checkpoints.Where(c => c.SweepMember == m).ToList();
            var last = own.MaxBy(c => c.StepNumber);
            var metrics = last is null ? default : JsonDocument.Parse(last.Metrics).RootElement;
            double? Number(string name) => last is not null && metrics.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;
            var (score, scored) = eval is null ? (null, null) : sweep.EvalScoreOf(own, eval.KeepBest is not null);
            return new SweepMemberDto(m, sweep.Shown(j, m), last?.Name, last?.StepNumber, Number("train_loss"), Number("valid_loss"),
                score, score is null ? null : scored?.Name);
        }).ToList(), sweep.BestMember, sweep.ScoredBy, eval?.EvalId);
    }

    /// <summary>
    /// OpenAI's <c>method</c>: <c>{"type": t, t: {"hyperparameters": {shared ones, the objective's own}, …}}</c>, as resolved.
    /// A pre-training job shows its type with the shared hyperparameters under <c>supervised</c>, as it always has.
    /// </summary>
    static JsonObject Method(FineTuningJob j, HyperparametersDto hp, bool pretraining)
    {
        string type = pretraining ? JobKinds.PretrainingType : j.Objective;
        var section = (pretraining ? null : TrainingObjective.Settings(j)) ?? new JsonObject();
        var hyperparameters = JsonSerializer.SerializeToNode(hp, SnakeCase)!.AsObject();
        if (hp.EarlyStoppingPatience is null) hyperparameters.Remove("early_stopping_patience");
        if (section["hyperparameters"] is JsonObject own)
            foreach (var (name, value) in own) hyperparameters[name] = value?.DeepClone();
        section["hyperparameters"] = hyperparameters;
        return new JsonObject { ["type"] = type, [pretraining ? JobObjectives.Supervised : type] = section };
    }

    static readonly JsonSerializerOptions SnakeCase = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Jobs as the API shows them, with their metadata and result files loaded in one query each.</summary>
    static async Task<List<FineTuningJobDto>> ToDtosAsync(ServiceDbContext db, IReadOnlyList<FineTuningJob> jobs, CancellationToken cancel)
    {
        var ids = jobs.Select(j => j.Id).ToList();
        var metadata = (await db.JobMetadata.AsNoTracking().Where(m => ids.Contains(m.JobId)).ToListAsync(cancel))
            .GroupBy(m => m.JobId).ToDictionary(g => g.Key, g => (IReadOnlyDictionary<string, string>)g.ToDictionary(m => m.Key, m => m.Value));
        var resultIds = jobs.Select(j => JobResultFiles.IdOf(j.Id)).ToList();
        var results = (await db.Files.AsNoTracking().Where(f => resultIds.Contains(f.Id) && f.Purpose == JobResultFiles.Purpose).Select(f => f.Id).ToListAsync(cancel))
            .ToHashSet();
        var sweepIds = jobs.Where(j => j.Sweep is not null).Select(j => j.Id).ToList();
        var checkpoints = sweepIds.Count == 0 ? [] : (await db.Checkpoints.AsNoTracking().Where(c => sweepIds.Contains(c.JobId)).ToListAsync(cancel))
            .GroupBy(c => c.JobId).ToDictionary(g => g.Key, g => (IReadOnlyList<Checkpoint>)g.ToList());
        return jobs.Select(j => j.ToDto(metadata.GetValueOrDefault(j.Id), results.Contains(JobResultFiles.IdOf(j.Id)) ? [JobResultFiles.IdOf(j.Id)] : [],
            checkpoints.GetValueOrDefault(j.Id))).ToList();
    }

    static async Task<FineTuningJobDto> ToDtoAsync(ServiceDbContext db, FineTuningJob job, CancellationToken cancel) =>
        (await ToDtosAsync(db, [job], cancel))[0];

    static JobEventDto ToDto(this JobEvent e) => new($"ftevent-{e.Id}", "fine_tuning.job.event", e.CreatedAt, e.Level, e.Message, e.Type,
        e.Data is null ? null : JsonDocument.Parse(e.Data).RootElement);

    /// <summary>The hyperparameters as <see cref="JobSpecification"/> reads them.</summary>
    static HyperparameterValues? ToValues(this HyperparametersRequest? request, string path = "hyperparameters") => request is null ? null
        : new(request.NEpochs, request.BatchSize, request.LearningRateMultiplier, request.EarlyStoppingPatience, path);

    /// <summary>A job-specification problem as OpenAI's 400 error object.</summary>
    static JsonHttpResult<ErrorResponse> ToResult(this JobSpecError error) => OpenAiErrors.BadRequest(error.Message, error.Param, error.Code);
}
