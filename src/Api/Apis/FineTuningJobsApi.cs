using System.Security.Claims;
using System.Text.Json;
using System.Text.RegularExpressions;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using AdapterService.Core.Training;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Apis;

/// <summary>Hyperparameters: each a number or "auto" (resolved from the data set's size when the job is created).</summary>
/// <param name="NEpochs" example="3">Passes over the training file: an integer 1-50, or "auto".</param>
/// <param name="BatchSize" example="1">Examples per training step: an integer 1-256, or "auto".</param>
/// <param name="LearningRateMultiplier" example="1">Scales the base learning rate (4e-3 for LoRA): a number in (0, 50], or "auto" (1).</param>
/// <param name="EarlyStoppingPatience">Our extension, with a validation file: stop after this many epochs (1-50) without a lower validation loss.</param>
public sealed record HyperparametersRequest(JsonElement? NEpochs, JsonElement? BatchSize, JsonElement? LearningRateMultiplier, int? EarlyStoppingPatience = null);

public sealed record SupervisedMethod(HyperparametersRequest? Hyperparameters);
public sealed record MethodRequest(string? Type, SupervisedMethod? Supervised);

/// <summary>A fine-tuning job to create (OpenAI's fields plus <c>adapter</c>).</summary>
/// <param name="Model" example="tiny-llama-demo">The base model to fine-tune.</param>
/// <param name="TrainingFile" example="file-abc123">Id of an uploaded file with purpose fine-tune.</param>
/// <param name="ValidationFile">Id of an uploaded file with purpose fine-tune; its loss and token accuracy are measured at every epoch's end.</param>
/// <param name="Hyperparameters">OpenAI's older top-level form; method.supervised.hyperparameters wins when both are given.</param>
/// <param name="Suffix" example="my-model">Up to 64 letters, digits, '-' or '_'; part of the fine-tuned model's name.</param>
/// <param name="Seed" example="42">Makes the run reproducible; random when absent.</param>
/// <param name="Adapter">Which adapter method to train and its options (default: LoRA r=8 on all linear layers).</param>
/// <param name="Method">OpenAI's newer form: {"type": "supervised", "supervised": {"hyperparameters": {...}}}.</param>
/// <param name="Metadata">Up to 16 key-value pairs (keys up to 64 characters, values up to 512) to find the job by later.</param>
public sealed record CreateFineTuningJobRequest(
    string? Model, string? TrainingFile, string? ValidationFile, HyperparametersRequest? Hyperparameters, string? Suffix,
    long? Seed, AdapterRequest? Adapter, MethodRequest? Method, Dictionary<string, string>? Metadata);

public sealed record HyperparametersDto(int NEpochs, int BatchSize, double LearningRateMultiplier, int? EarlyStoppingPatience = null);
public sealed record MethodDto(string Type, SupervisedDto Supervised);
public sealed record SupervisedDto(HyperparametersDto Hyperparameters);
public sealed record JobErrorDto(string Code, string Message, string? Param);

/// <summary>OpenAI's fine-tuning job object, plus <c>adapter</c>.</summary>
public sealed record FineTuningJobDto(
    string Id, string Object, string Model, long CreatedAt, long? FinishedAt, string? FineTunedModel, string OrganizationId,
    IReadOnlyList<string> ResultFiles, string Status, string? ValidationFile, string TrainingFile, HyperparametersDto Hyperparameters,
    long? TrainedTokens, JobErrorDto? Error, long Seed, string? Suffix, long? EstimatedFinish, IReadOnlyDictionary<string, string>? Metadata,
    IReadOnlyList<object> Integrations, MethodDto Method, AdapterDto Adapter, long TrainingFileTokens, long EstimatedTrainedTokens);

public sealed record JobEventDto(string Id, string Object, long CreatedAt, string Level, string Message, string Type, JsonElement? Data);

public sealed record ListResponse<T>(string Object, IReadOnlyList<T> Data, bool HasMore);

/// <summary><c>FineTuning:MinExamples</c>: the fewest training examples a job accepts (OpenAI's rule: 10).</summary>
public sealed class FineTuningLimits
{
    public int MinExamples { get; set; } = 10;
}

/// <summary>OpenAI's checkpoint object; <c>fine_tuned_model_checkpoint</c> is a model name usable for inference.</summary>
public sealed record CheckpointDto(string Id, string Object, long CreatedAt, string FineTunedModelCheckpoint, int StepNumber, JsonElement Metrics, string FineTuningJobId);

public sealed record CheckpointListResponse(string Object, IReadOnlyList<CheckpointDto> Data, bool HasMore, string? FirstId, string? LastId);

public static partial class FineTuningJobsApi
{
    public static IEndpointRouteBuilder MapFineTuningJobsApi(this IEndpointRouteBuilder app)
    {
        var jobs = app.MapGroup("/v1/fine_tuning/jobs").WithTags("Fine-tuning");
        jobs.MapPost("/", CreateJob).WithErrors(400, 404).WithSummary("Create a fine-tuning job")
            .WithDescription("Validates the training file, then queues the job. `adapter` (our extension) picks the method: `{\"type\": \"lora\", \"rank\": 8, \"alpha\": 16, \"dropout\": 0.05, \"target_modules\": [\"q_proj\", \"v_proj\"]}`.");
        jobs.MapGet("/", ListJobs).WithErrors(400).WithSummary("List fine-tuning jobs, newest first (paged with after/limit)");
        jobs.MapGet("/{jobId}", GetJob).WithErrors(404).WithSummary("Retrieve a fine-tuning job");
        jobs.MapPost("/{jobId}/cancel", CancelJob).WithErrors(400, 404).WithSummary("Cancel a fine-tuning job; a running job stops within one training step");
        jobs.MapPost("/{jobId}/pause", PauseJob).WithErrors(400, 404).WithSummary("Pause a job; it saves its state within one training step")
            .WithDescription("Status `paused`. A paused job keeps its trainer state and continues where it stopped on resume.");
        jobs.MapPost("/{jobId}/resume", ResumeJob).WithErrors(400, 404).WithSummary("Resume a paused job from its saved state");
        jobs.MapGet("/{jobId}/checkpoints", ListCheckpoints).WithErrors(400, 404)
            .WithSummary("List a job's checkpoints (one per epoch), newest first; each is usable as a model");
        jobs.MapGet("/{jobId}/events", ListEvents).WithErrors(400, 404).WithSummary("List a job's events, newest first (paged with after/limit)");
        return app;
    }

    public static FineTuningJobDto ToDto(this FineTuningJob j, IReadOnlyDictionary<string, string>? metadata)
    {
        var hp = new HyperparametersDto(j.Epochs, j.BatchSize, j.LearningRateMultiplier, j.EarlyStoppingPatience);
        // A built-in base's pre-training trains no adapter; its settings are the pre-training's own.
        bool pretraining = j.AdapterType == JobKinds.PretrainingType;
        return new FineTuningJobDto(j.Id, "fine_tuning.job", j.Model, j.CreatedAt, j.FinishedAt, j.FineTunedModel, "org-local", [],
            j.Status, j.ValidationFile, j.TrainingFile, hp, j.TrainedTokens,
            j.ErrorMessage is null ? null : new JobErrorDto(j.ErrorCode ?? "error", j.ErrorMessage, j.ErrorParam),
            j.Seed, j.Suffix, j.Status == JobStatus.Running ? j.EstimatedFinish : null, metadata is { Count: > 0 } ? metadata : null, [],
            new MethodDto(pretraining ? JobKinds.PretrainingType : "supervised", new SupervisedDto(hp)),
            pretraining ? new AdapterDto(JobKinds.PretrainingType, 0, null, null, []) : AdapterDto.From(AdapterConfig.Parse(j.AdapterConfig)),
            j.TrainingFileTokens, j.TrainingFileTokens * j.Epochs);
    }

    /// <summary>Jobs as the API shows them, with their metadata loaded in one query.</summary>
    static async Task<List<FineTuningJobDto>> ToDtosAsync(ServiceDbContext db, IReadOnlyList<FineTuningJob> jobs, CancellationToken cancel)
    {
        var ids = jobs.Select(j => j.Id).ToList();
        var metadata = (await db.JobMetadata.AsNoTracking().Where(m => ids.Contains(m.JobId)).ToListAsync(cancel))
            .GroupBy(m => m.JobId).ToDictionary(g => g.Key, g => (IReadOnlyDictionary<string, string>)g.ToDictionary(m => m.Key, m => m.Value));
        return jobs.Select(j => j.ToDto(metadata.GetValueOrDefault(j.Id))).ToList();
    }

    static async Task<FineTuningJobDto> ToDtoAsync(ServiceDbContext db, FineTuningJob job, CancellationToken cancel) =>
        (await ToDtosAsync(db, [job], cancel))[0];

    static JobEventDto ToDto(this JobEvent e) => new($"ftevent-{e.Id}", "fine_tuning.job.event", e.CreatedAt, e.Level, e.Message, e.Type,
        e.Data is null ? null : JsonDocument.Parse(e.Data).RootElement);

    static async Task<Results<Ok<FineTuningJobDto>, JsonHttpResult<ErrorResponse>>> CreateJob(
        CreateFineTuningJobRequest request, ClaimsPrincipal user, ServiceDbContext db, IBlobStore blobs, JobLifecycle jobs,
        IOptions<FineTuningLimits> limits, IOptions<LimitsOptions> projectLimits, CancellationToken cancel)
    {
        if (string.IsNullOrEmpty(request.Model)) return OpenAiErrors.BadRequest("Missing required parameter: 'model'.", "model");
        if (string.IsNullOrEmpty(request.TrainingFile)) return OpenAiErrors.BadRequest("Missing required parameter: 'training_file'.", "training_file");
        var baseModel = await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == request.Model, cancel);
        if (baseModel is null)
            return OpenAiErrors.Error(404, $"Model {request.Model} does not exist or is not available for fine-tuning.", "model", "model_not_found");
        if (request.Method is { Type: not (null or "supervised") })
            return OpenAiErrors.BadRequest($"Method type '{request.Method.Type}' is not supported; supported: 'supervised'.", "method.type");
        if (request.Suffix is { } suffix && !SuffixPattern().IsMatch(suffix))
            return OpenAiErrors.BadRequest("suffix must be 1-64 characters of letters, digits, '-' and '_'.", "suffix");
        if (request.Seed is < 0 or > int.MaxValue) return OpenAiErrors.BadRequest("seed must be between 0 and 2147483647.", "seed");
        if (request.Metadata is { } metadata && (metadata.Count > 16 || metadata.Any(p => p.Key.Length is 0 or > 64 || p.Value is null || p.Value.Length > 512)))
            return OpenAiErrors.BadRequest("metadata holds at most 16 pairs, keys of 1-64 characters and values of up to 512.", "metadata");

        var baseConfig = ModelConfig.Load(Path.Combine(blobs.Resolve(baseModel.BlobPath), ModelFolder.ConfigFile));
        var config = AdapterRequests.Parse(request.Adapter, baseConfig, out var adapterError);
        if (config is null) return adapterError!;

        int exampleCount;
        long fileTokens;
        if (baseConfig is VitConfig vit)
        {
            var (images, imagesError) = await ReadImagesAsync(request.TrainingFile, "training_file", vit, null, db, blobs, cancel);
            if (images is null) return imagesError!;
            config = ImageClassifierAdapter(config, vit, ImageData.NewLabels(images.Value.File, vit), out adapterError);
            if (config is null) return adapterError!;
            (exampleCount, fileTokens) = (images.Value.Images.Count, images.Value.Images.Count * (vit.NumPatches + 1L));
            if (request.ValidationFile is not null
                && (await ReadImagesAsync(request.ValidationFile, "validation_file", vit, config.Labels, db, blobs, cancel)).Error is { } validationError)
                return validationError;
        }
        else
        {
            var (examples, trainingError) = await ReadDataAsync(request.TrainingFile, "training_file", baseModel, db, blobs, cancel);
            if (examples is null) return trainingError!;
            (exampleCount, fileTokens) = (examples.Count, examples.Sum(e => (long)e.Ids.Length));
            if (request.ValidationFile is not null)
            {
                var (validation, validationError) = await ReadDataAsync(request.ValidationFile, "validation_file", baseModel, db, blobs, cancel);
                if (validation is null) return validationError!;
            }
        }
        if (fileTokens > projectLimits.Value.MaxTrainingTokens)
            return OpenAiErrors.BadRequest($"Training file {request.TrainingFile} has {fileTokens} tokens, more than the limit of {projectLimits.Value.MaxTrainingTokens}.",
                "training_file", "invalid_n_tokens");
        if (exampleCount < limits.Value.MinExamples)
            return OpenAiErrors.BadRequest($"Training file {request.TrainingFile} has {exampleCount} example(s), but must have at least {limits.Value.MinExamples}.",
                "training_file", "invalid_n_examples");

        var hpRequest = request.Method?.Supervised?.Hyperparameters ?? request.Hyperparameters;
        var hp = ResolveHyperparameters(hpRequest, exampleCount, out var hpError);
        if (hp is null) return hpError!;
        if (hp.EarlyStoppingPatience is { } patience && (patience is < 1 or > 50 || request.ValidationFile is null))
            return OpenAiErrors.BadRequest("hyperparameters.early_stopping_patience must be 1-50 and needs a validation_file.", "hyperparameters.early_stopping_patience");

        // The context sees this project's jobs only. Two creates at the same moment may both pass: a soft cap.
        int active = await db.Jobs.CountAsync(j => j.Status == JobStatus.ValidatingFiles || j.Status == JobStatus.Queued || j.Status == JobStatus.Running, cancel);
        if (active >= projectLimits.Value.MaxActiveJobsPerProject)
            return OpenAiErrors.Error(StatusCodes.Status429TooManyRequests,
                $"This project already has {active} fine-tuning jobs queued or running, the most allowed at once ({projectLimits.Value.MaxActiveJobsPerProject}). Wait for one to finish or cancel one.",
                null, "too_many_active_jobs");

        var job = new FineTuningJob
        {
            Id = "ftjob-" + Ids.New(), ProjectId = user.ProjectId()!, Model = baseModel.Id, TrainingFile = request.TrainingFile, ValidationFile = request.ValidationFile,
            Status = JobStatus.Queued, TrainingFileTokens = fileTokens,
            CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), Suffix = request.Suffix, Seed = request.Seed ?? Random.Shared.Next(),
            Epochs = hp.NEpochs, BatchSize = hp.BatchSize, LearningRateMultiplier = hp.LearningRateMultiplier, EarlyStoppingPatience = hp.EarlyStoppingPatience,
            AdapterType = config.Method, AdapterConfig = (config with { BaseModel = baseModel.Id }).ToJson(),
        };
        await jobs.CreateAsync(job, (request.Metadata ?? []).Select(p => new JobMetadata { JobId = job.Id, Key = p.Key, Value = p.Value }),
            [$"Created fine-tuning job: {job.Id}", $"Validated training file: {job.TrainingFile} ({exampleCount} examples, {job.TrainingFileTokens} tokens)"],
            "Fine-tuning job queued", cancel);
        return TypedResults.Ok(await ToDtoAsync(db, job, cancel));
    }

    /// <summary>Reads and tokenizes a data file of the job, or says what is wrong with it (naming the request field).</summary>
    static async Task<(List<TokenizedExample>? Examples, JsonHttpResult<ErrorResponse>? Error)> ReadDataAsync(
        string fileId, string param, BaseModel baseModel, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel)
    {
        var file = await db.Files.AsNoTracking().SingleOrDefaultAsync(f => f.Id == fileId, cancel);
        if (file is null) return (null, OpenAiErrors.BadRequest($"File {fileId} does not exist.", param, "file_not_found"));
        if (file.Purpose != "fine-tune") return (null, OpenAiErrors.BadRequest($"File {fileId} has purpose '{file.Purpose}', not 'fine-tune'.", param));
        try
        {
            await using var stream = blobs.OpenRead(file.BlobPath);
            return (TrainingData.Tokenize(TrainingFile.Parse(stream), TextTokenizers.ForModel(blobs.Resolve(baseModel.BlobPath)), baseModel.ContextLength), null);
        }
        catch (TrainingFileException e)
        {
            return (null, OpenAiErrors.BadRequest($"File {fileId} is invalid: {e.Message}", param, "invalid_file"));
        }
        catch (NotSupportedException e)
        {
            return (null, OpenAiErrors.BadRequest($"File {fileId} does not suit the model '{baseModel.Id}': {e.Message}.", param, "invalid_file"));
        }
    }

    /// <summary>
    /// Reads a labelled-image file for a ViT base: its images checked against the model's size and, when given, every label
    /// against <paramref name="labels"/> (a validation file's against the job's), or says what is wrong (naming the line).
    /// </summary>
    static async Task<((TrainingFile File, LabelledImages Images)? Value, JsonHttpResult<ErrorResponse>? Error)> ReadImagesAsync(
        string fileId, string param, VitConfig vit, IReadOnlyList<string>? labels, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel)
    {
        var file = await db.Files.AsNoTracking().SingleOrDefaultAsync(f => f.Id == fileId, cancel);
        if (file is null) return (null, OpenAiErrors.BadRequest($"File {fileId} does not exist.", param, "file_not_found"));
        if (file.Purpose != "fine-tune") return (null, OpenAiErrors.BadRequest($"File {fileId} has purpose '{file.Purpose}', not 'fine-tune'.", param));
        try
        {
            await using var stream = blobs.OpenRead(file.BlobPath);
            var parsed = TrainingFile.Parse(stream);
            return ((parsed, ImageData.Read(parsed, vit, labels ?? ImageData.NewLabels(parsed, vit) ?? vit.Labels)), null);
        }
        catch (TrainingFileException e)
        {
            return (null, OpenAiErrors.BadRequest($"File {fileId} is invalid: {e.Message}", param, "invalid_file"));
        }
    }

    /// <summary>
    /// An image classifier's adapter: not causal (Lily's router averages over all of an image's tokens), and, when the
    /// file's labels are not the base's, with its own classifier (so the base's is not also adapted).
    /// </summary>
    static AdapterConfig? ImageClassifierAdapter(AdapterConfig config, VitConfig vit, IReadOnlyList<string>? labels, out JsonHttpResult<ErrorResponse>? error)
    {
        error = null;
        config = config with { TaskType = "SEQ_CLS" };
        if (labels is null) return config;
        var targets = config.TargetModules is ["all-linear"]
            ? vit.LinearPaths().Where(p => p != "classifier").Select(p => p.Split('.')[^1]).Distinct().Order().ToList()
            : config.TargetModules.Where(t => t != "classifier").ToList();
        bool adaptsHead;
        // MixLoRA may name no layer at all: its experts adapt the encoder's feed-forward networks.
        try { adaptsHead = targets.Count == 0 ? AdapterMethods.Of(config).RequiresTargetModules : TargetModules.Match(vit.LinearPaths(), targets).Contains("classifier"); }
        catch (ArgumentException) { adaptsHead = true; }   // only the classifier matched
        if (adaptsHead)
        {
            error = OpenAiErrors.BadRequest($"The training file's labels ({string.Join(", ", labels)}) are not the base's ({string.Join(", ", vit.Labels)}): " +
                "the adapter gets a new classifier, so adapter.target_modules must name layers other than the classifier.", "adapter.target_modules");
            return null;
        }
        return config with { TargetModules = targets, ModulesToSave = ["classifier"], Labels = labels };
    }

    /// <summary>"auto" (or absent) picks values for the data set's size, in the spirit of OpenAI's defaults.</summary>
    static HyperparametersDto? ResolveHyperparameters(HyperparametersRequest? request, int examples, out JsonHttpResult<ErrorResponse>? error)
    {
        error = null;
        int? epochs = Auto(request?.NEpochs, "n_epochs", ref error, v => v is >= 1 and <= 50 && v == Math.Floor(v), "an integer between 1 and 50");
        int? batch = Auto(request?.BatchSize, "batch_size", ref error, v => v is >= 1 and <= 256 && v == Math.Floor(v), "an integer between 1 and 256");
        double? lr = AutoDouble(request?.LearningRateMultiplier, "learning_rate_multiplier", ref error, v => v is > 0 and <= 50, "a number in (0, 50]");
        if (error is not null) return null;
        int resolvedBatch = batch ?? Math.Clamp(examples / 64, 1, 32);
        int stepsPerEpoch = (int)Math.Ceiling(examples / (double)resolvedBatch);
        return new HyperparametersDto(epochs ?? Math.Clamp((int)Math.Ceiling(100.0 / stepsPerEpoch), 3, 25), resolvedBatch, lr ?? 1.0,
            request?.EarlyStoppingPatience);
    }

    static int? Auto(JsonElement? value, string name, ref JsonHttpResult<ErrorResponse>? error, Func<double, bool> valid, string expected) =>
        (int?)AutoDouble(value, name, ref error, valid, expected);

    static double? AutoDouble(JsonElement? value, string name, ref JsonHttpResult<ErrorResponse>? error, Func<double, bool> valid, string expected)
    {
        if (value is not { } v || v.ValueKind == JsonValueKind.Null || v.ValueKind == JsonValueKind.String && v.GetString() == "auto") return null;
        if (v.ValueKind == JsonValueKind.Number && valid(v.GetDouble())) return v.GetDouble();
        error ??= OpenAiErrors.BadRequest($"hyperparameters.{name} must be \"auto\" or {expected}, got {v.GetRawText()}.", $"hyperparameters.{name}");
        return null;
    }

    /// <summary>Newest first; <c>metadata[key]=value</c> query parameters keep the jobs with all those pairs.</summary>
    static async Task<Results<Ok<ListResponse<FineTuningJobDto>>, JsonHttpResult<ErrorResponse>>> ListJobs(
        HttpRequest request, ServiceDbContext db, string? after, int? limit, CancellationToken cancel)
    {
        if (limit is < 1 or > 100) return OpenAiErrors.BadRequest("limit must be between 1 and 100.", "limit");
        int take = limit ?? 20;
        var query = db.Jobs.AsNoTracking().AsQueryable();
        if (after is not null)
        {
            var cursor = await db.Jobs.AsNoTracking().SingleOrDefaultAsync(j => j.Id == after, cancel);
            if (cursor is null) return OpenAiErrors.BadRequest($"No such fine-tuning job: {after}", "after");
            query = query.Where(j => j.Sequence < cursor.Sequence);
        }
        foreach (var (name, values) in request.Query)
        {
            if (!name.StartsWith("metadata[", StringComparison.Ordinal) || !name.EndsWith(']')) continue;
            string key = name["metadata[".Length..^1], value = values.ToString();
            query = query.Where(j => db.JobMetadata.Any(m => m.JobId == j.Id && m.Key == key && m.Value == value));
        }
        var page = await query.OrderByDescending(j => j.Sequence).Take(take + 1).ToListAsync(cancel);
        return TypedResults.Ok(new ListResponse<FineTuningJobDto>("list", await ToDtosAsync(db, page.Take(take).ToList(), cancel), page.Count > take));
    }

    static async Task<Results<Ok<FineTuningJobDto>, JsonHttpResult<ErrorResponse>>> GetJob(string jobId, ServiceDbContext db, CancellationToken cancel) =>
        await db.Jobs.AsNoTracking().SingleOrDefaultAsync(j => j.Id == jobId, cancel) is { } job
            ? TypedResults.Ok(await ToDtoAsync(db, job, cancel))
            : OpenAiErrors.NotFound($"No such fine-tuning job: {jobId}", "id");

    static async Task<Results<Ok<FineTuningJobDto>, JsonHttpResult<ErrorResponse>>> CancelJob(
        string jobId, ServiceDbContext db, JobLifecycle jobs, CancellationToken cancel) =>
        await ChangeStatusAsync(jobId, JobStatus.Unfinished, JobStatus.Cancelled, "Fine-tuning job cancelled", db, jobs, cancel);

    static async Task<Results<Ok<FineTuningJobDto>, JsonHttpResult<ErrorResponse>>> PauseJob(
        string jobId, ServiceDbContext db, JobLifecycle jobs, CancellationToken cancel) =>
        // Pre-training keeps no state to resume from: it can be cancelled, not paused.
        await db.Jobs.AnyAsync(j => j.Id == jobId && j.AdapterType == JobKinds.PretrainingType, cancel)
            ? OpenAiErrors.BadRequest($"Job {jobId} pre-trains a built-in model, which cannot be paused; cancel it instead.", "id", "invalid_job_status")
            : await ChangeStatusAsync(jobId, [JobStatus.Queued, JobStatus.Running], JobStatus.Paused, "Fine-tuning job paused", db, jobs, cancel);

    static async Task<Results<Ok<FineTuningJobDto>, JsonHttpResult<ErrorResponse>>> ResumeJob(
        string jobId, ServiceDbContext db, JobLifecycle jobs, IJobQueue queue, CancellationToken cancel)
    {
        var result = await ChangeStatusAsync(jobId, [JobStatus.Paused], JobStatus.Queued, "Fine-tuning job resumed", db, jobs, cancel);
        if (result.Result is Ok<FineTuningJobDto>) queue.Enqueue(JobKind.FineTuning, jobId);
        return result;
    }

    /// <summary>Moves a job from one of <paramref name="from"/> to <paramref name="to"/> with its event (<see cref="JobLifecycle"/>), or says why not.</summary>
    static async Task<Results<Ok<FineTuningJobDto>, JsonHttpResult<ErrorResponse>>> ChangeStatusAsync(
        string jobId, string[] from, string to, string message, ServiceDbContext db, JobLifecycle jobs, CancellationToken cancel)
    {
        var (changed, job) = await jobs.TransitionAsync(jobId, from, to, message, cancel);
        if (job is null) return OpenAiErrors.NotFound($"No such fine-tuning job: {jobId}", "id");
        if (!changed)
            return JobStatus.IsFinished(job.Status)
                ? OpenAiErrors.BadRequest($"Job {jobId} has already finished with status {job.Status}.", "id", "job_finished")
                : OpenAiErrors.BadRequest($"Job {jobId} is {job.Status}; this needs a job that is {string.Join(" or ", from)}.", "id", "invalid_job_status");
        return TypedResults.Ok(await ToDtoAsync(db, job, cancel));
    }

    static async Task<Results<Ok<CheckpointListResponse>, JsonHttpResult<ErrorResponse>>> ListCheckpoints(
        string jobId, ServiceDbContext db, string? after, int? limit, CancellationToken cancel)
    {
        if (!await db.Jobs.AnyAsync(j => j.Id == jobId, cancel)) return OpenAiErrors.NotFound($"No such fine-tuning job: {jobId}", "id");
        if (limit is < 1 or > 100) return OpenAiErrors.BadRequest("limit must be between 1 and 100.", "limit");
        int take = limit ?? 10;
        var query = db.Checkpoints.AsNoTracking().Where(c => c.JobId == jobId);
        if (after is not null)
        {
            var cursor = await db.Checkpoints.AsNoTracking().SingleOrDefaultAsync(c => c.Id == after && c.JobId == jobId, cancel);
            if (cursor is null) return OpenAiErrors.BadRequest($"No such checkpoint: {after}", "after");
            query = query.Where(c => c.StepNumber < cursor.StepNumber);
        }
        var page = await query.OrderByDescending(c => c.StepNumber).Take(take + 1).ToListAsync(cancel);
        var data = page.Take(take).Select(c => new CheckpointDto(c.Id, "fine_tuning.job.checkpoint", c.CreatedAt, c.Name, c.StepNumber,
            JsonDocument.Parse(c.Metrics).RootElement, c.JobId)).ToList();
        return TypedResults.Ok(new CheckpointListResponse("list", data, page.Count > take, data.FirstOrDefault()?.Id, data.LastOrDefault()?.Id));
    }

    static async Task<Results<Ok<ListResponse<JobEventDto>>, JsonHttpResult<ErrorResponse>>> ListEvents(
        string jobId, ServiceDbContext db, string? after, int? limit, CancellationToken cancel)
    {
        if (!await db.Jobs.AnyAsync(j => j.Id == jobId, cancel)) return OpenAiErrors.NotFound($"No such fine-tuning job: {jobId}", "id");
        int take = Math.Clamp(limit ?? 20, 1, 1000);
        var query = db.JobEvents.AsNoTracking().Where(e => e.JobId == jobId);
        if (after is not null)
        {
            if (!after.StartsWith("ftevent-") || !long.TryParse(after["ftevent-".Length..], out var afterId))
                return OpenAiErrors.BadRequest($"'{after}' is not an event id.", "after");
            query = query.Where(e => e.Id < afterId);
        }
        var page = await query.OrderByDescending(e => e.Id).Take(take + 1).ToListAsync(cancel);
        return TypedResults.Ok(new ListResponse<JobEventDto>("list", page.Take(take).Select(e => e.ToDto()).ToList(), page.Count > take));
    }

    [GeneratedRegex("^[A-Za-z0-9_-]{1,64}$")]
    private static partial Regex SuffixPattern();
}
