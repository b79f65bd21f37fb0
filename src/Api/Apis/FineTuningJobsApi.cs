using System.Security.Claims;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Adapters;
using AdapterService.Core.Evals;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.Mvc;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Apis;

/// <summary>The fine-tuning jobs API: routes and handlers. Requests and answers are in FineTuningJobDtos.cs, adapter options in AdapterRequests.cs.</summary>
public static partial class FineTuningJobsApi
{
    /// <summary>The longest <c>chat_template</c> a job or request may give (real templates are under 20 000 characters).</summary>
    public const int ChatTemplateLimit = 65536;

    public static IEndpointRouteBuilder MapFineTuningJobsApi(this IEndpointRouteBuilder app)
    {
        var jobs = app.MapGroup("/v1/fine_tuning/jobs").WithTags("Fine-tuning");
        jobs.MapPost("/", CreateJob).WithName("createFineTuningJob").WithErrors(400, 404).WithSummary("Create a fine-tuning job")
            .WithDescription("Validates the training file, then queues the job. `adapter` (our extension) picks the method: `{\"type\": \"lora\", \"rank\": 8, \"alpha\": 16, \"dropout\": 0.05, \"target_modules\": [\"q_proj\", \"v_proj\"]}`.");
        jobs.MapGet("/", ListJobs).WithName("listPaginatedFineTuningJobs").WithErrors(400).WithSummary("List fine-tuning jobs, newest first (paged with after/limit)");
        jobs.MapGet("/{jobId}", GetJob).WithName("retrieveFineTuningJob").WithErrors(404).WithSummary("Retrieve a fine-tuning job");
        jobs.MapPost("/{jobId}/cancel", CancelJob).WithName("cancelFineTuningJob").WithErrors(400, 404).WithSummary("Cancel a fine-tuning job; a running job stops within one training step");
        jobs.MapPost("/{jobId}/pause", PauseJob).WithName("pauseFineTuningJob").WithErrors(400, 404).WithSummary("Pause a job; it saves its state within one training step")
            .WithDescription("Status `paused`. A paused job keeps its trainer state and continues where it stopped on resume.");
        jobs.MapPost("/{jobId}/resume", ResumeJob).WithName("resumeFineTuningJob").WithErrors(400, 404).WithSummary("Resume a paused job from its saved state");
        jobs.MapGet("/{jobId}/checkpoints", ListCheckpoints).WithName("listFineTuningJobCheckpoints").WithErrors(400, 404)
            .WithSummary("List a job's checkpoints (one per epoch), newest first; each is usable as a model");
        jobs.MapGet("/{jobId}/events", ListEvents).WithName("listFineTuningEvents").WithErrors(400, 404).WithSummary("List a job's events, newest first (paged with after/limit)");
        return app;
    }

    /// <summary>
    /// 429 when the project (the context sees its jobs only) has its most jobs validating, queued or running, or would
    /// have with the <paramref name="adding"/> trainings of a new job. A sweep counts as one job per member: it trains that many adapters.
    /// </summary>
    static async Task<JsonHttpResult<ErrorResponse>?> ActiveJobsRefusalAsync(ServiceDbContext db, LimitsOptions limits, CancellationToken cancel, int adding = 1)
    {
        var sweeps = await db.Jobs.Where(j => j.Status == JobStatus.ValidatingFiles || j.Status == JobStatus.Queued || j.Status == JobStatus.Running)
            .Select(j => j.Sweep).ToListAsync(cancel);
        int active = sweeps.Sum(s => s is null ? 1 : JsonSerializer.Deserialize<Sweep>(s)!.Values.Count);
        return active + adding <= limits.MaxActiveJobsPerProject ? null : OpenAiErrors.Error(StatusCodes.Status429TooManyRequests,
            $"This project already has {active} fine-tuning jobs queued or running (a sweep counts once per member)" +
            (adding > 1 ? $"; this sweep's {adding} members would pass" : ", already") +
            $" the most allowed at once ({limits.MaxActiveJobsPerProject}). Wait for one to finish or cancel one.",
            null, "too_many_active_jobs");
    }

    static async Task<Results<Ok<FineTuningJobDto>, JsonHttpResult<ErrorResponse>>> CreateJob(
        CreateFineTuningJobRequest request, ClaimsPrincipal user, ServiceDbContext db, IBlobStore blobs, JobLifecycle jobs,
        IOptions<FineTuningLimits> limits, IOptions<LimitsOptions> projectLimits, IOptions<QuotaOptions> quotas, CancellationToken cancel)
    {
        if (string.IsNullOrEmpty(request.Model)) return OpenAiErrors.BadRequest("Missing required parameter: 'model'.", "model");
        if (string.IsNullOrEmpty(request.TrainingFile)) return OpenAiErrors.BadRequest("Missing required parameter: 'training_file'.", "training_file");
        // A base, or a fine-tuned model (or checkpoint) whose adapter the job continues to train.
        var named = await ModelNames.ForTrainingAsync(db, request.Model, cancel);
        var baseModel = named is { BaseId: var baseId } ? await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == baseId, cancel) : null;
        if (baseModel is null)
            return OpenAiErrors.Error(404, $"Model {request.Model} does not exist or is not available for fine-tuning.", "model", "model_not_found");
        var start = named!.Value.Start;
        var (objective, settings, hyperparameters, methodError) = ReadMethod(request);
        if (methodError is not null) return methodError.ToResult();
        if (request.Suffix is { } suffix && !SuffixPattern().IsMatch(suffix))
            return OpenAiErrors.BadRequest("suffix must be 1-64 characters of letters, digits, '-' and '_'.", "suffix");
        if (request.Seed is < 0 or > int.MaxValue) return OpenAiErrors.BadRequest("seed must be between 0 and 2147483647.", "seed");
        if (request.Metadata is { } metadata && (metadata.Count > 16 || metadata.Any(p => p.Key.Length is 0 or > 64 || p.Value is null || p.Value.Length > 512)))
            return OpenAiErrors.BadRequest("metadata holds at most 16 pairs, keys of 1-64 characters and values of up to 512.", "metadata");

        if (request.ChatTemplate is { Length: 0 or > ChatTemplateLimit })
            return OpenAiErrors.BadRequest($"chat_template must be a template's name or its source of 1 to {ChatTemplateLimit} characters.", "chat_template");
        var baseConfig = ModelConfig.Load(Path.Combine(blobs.Resolve(baseModel.BlobPath), ModelFolder.ConfigFile));
        AdapterConfig? config;
        // A list of ranks is a sweep: one adapter per rank, each read as a job with that one rank would read it.
        Sweep? rankSweep = null;
        List<AdapterConfig>? memberAdapters = null;
        if (request.Adapter is { } asked && asked.ListsRanks())
        {
            if (start is not null)
                return OpenAiErrors.BadRequest($"The job continues from {start.Name}, whose adapter has one rank: {JobSpecification.RankField} must be left out or match it (a rank sweep trains new adapters from a base).",
                    JobSpecification.RankField);
            (rankSweep, var rankError) = Sweep.Read(asked.Rank, Sweep.Rank, JobSpecification.RankField, v => v is >= 1 and <= 256 && v == Math.Floor(v), "an integer between 1 and 256");
            if (rankError is not null) return rankError.ToResult();
            memberAdapters = [];
            foreach (var rank in rankSweep!.Values)
            {
                var member = AdapterRequests.Parse(asked.WithRank((int)rank), baseConfig, out var memberError);
                if (member is null) return memberError!;
                memberAdapters.Add(member);
            }
        }
        if (start is not null)
        {
            config = AdapterConfig.Parse(start.AdapterConfig);
            if (AdapterRequests.Conflict(request.Adapter, config, start.Name, baseConfig) is { } conflict) return conflict;
        }
        else if (memberAdapters is not null) config = memberAdapters[0];
        else
        {
            config = AdapterRequests.Parse(request.Adapter, baseConfig, out var adapterError);
            if (config is null) return adapterError!;
        }
        // A continued job trains with its starting model's chat template unless it names one.
        var chatTemplate = request.ChatTemplate ?? start?.ChatTemplate;

        // The cap first: reading and tokenizing a file costs far more than counting (a full project is refused cheaply).
        if (await ActiveJobsRefusalAsync(db, projectLimits.Value, cancel) is { } full) return full;
        if (await Quotas.RefuseJobAsync(db, blobs, quotas.Value, user.ProjectId()!, cancel) is { } noRoom) return noRoom;

        // An eval at every checkpoint: it runs on the checkpoints' adapters, so the base must be a language model.
        EvalAttachment? eval = null;
        if (request.Eval is { ValueKind: not JsonValueKind.Null } evalJson)
        {
            if (baseModel.Family == "vit") return OpenAiErrors.BadRequest($"eval needs a language model; {baseModel.Id} classifies images.", "eval");
            try { eval = await EvalAttachment.CheckAsync(evalJson, db, blobs, projectLimits.Value.MaxTrainingExamples, cancel); }
            catch (EvalException e) { return OpenAiErrors.Error(e.Status, e.Message, e.Param, e.Code); }
        }

        // The files are checked from the facts stored at upload (and token counts stored per base); the specification
        // decides the rest, naming the first problem in the order the API always has.
        var training = await JobFiles.ReadAsync(db, blobs, request.TrainingFile, "training_file", baseModel, baseConfig, chatTemplate, cancel);
        var validation = request.ValidationFile is null || training.Error is not null ? null
            : await JobFiles.ReadAsync(db, blobs, request.ValidationFile, "validation_file", baseModel, baseConfig, chatTemplate, cancel);
        var (spec, specError) = JobSpecification.Resolve(hyperparameters, config, baseConfig, training, validation,
            new JobLimits(limits.Value.MinExamples, projectLimits.Value.MaxTrainingTokens), objective, rankSweep, scoredByEval: eval is not null);
        if (spec is null) return specError!.ToResult();
        // A sweep with an eval scores its members by the mean grade of keep_best's criterion, or else of the eval's first.
        var sweep = spec.Sweep;
        if (sweep is not null && eval is not null)
            sweep = sweep with { Criterion = eval.KeepBest ?? EvalRuns.CriteriaOf(await db.Evals.AsNoTracking().SingleAsync(e => e.Id == eval.EvalId, cancel))[0].Name };
        if (sweep is not null && memberAdapters is not null)
            sweep = sweep with { Adapters = [.. memberAdapters.Select(a => (a with { BaseModel = baseModel.Id }).ToJson())] };
        // An image classifier's new labels would give the adapter another classifier than the one it continues from.
        if (start is not null && !(spec.Adapter.Labels ?? []).SequenceEqual(config.Labels ?? []))
            return OpenAiErrors.BadRequest($"The training file's labels are not those of {start.Name}, whose classifier the job continues to train.", "training_file");
        if (await objective.CheckAsync(settings, db, blobs, request.TrainingFile, request.ValidationFile, cancel) is { } objectiveError)
            return objectiveError.ToResult();
        config = spec.Adapter;
        var hp = new HyperparametersDto(spec.Epochs, spec.BatchSize, spec.LearningRateMultiplier, spec.EarlyStoppingPatience);
        var (exampleCount, fileTokens) = (spec.ExampleCount, spec.TrainingFileTokens);

        // Again, now that the files were read (and a sweep's size is known): a job created meanwhile counts. Two creates at the same moment may both pass: a soft cap.
        if (await ActiveJobsRefusalAsync(db, projectLimits.Value, cancel, spec.Sweep?.Values.Count ?? 1) is { } nowFull) return nowFull;

        var job = new FineTuningJob
        {
            Id = "ftjob-" + Ids.New(), ProjectId = user.ProjectId()!, Model = baseModel.Id, TrainingFile = request.TrainingFile, ValidationFile = request.ValidationFile,
            TrainingFileTokens = fileTokens,
            CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), Suffix = request.Suffix, Seed = request.Seed ?? Random.Shared.Next(),
            Epochs = hp.NEpochs, BatchSize = hp.BatchSize, LearningRateMultiplier = hp.LearningRateMultiplier, EarlyStoppingPatience = hp.EarlyStoppingPatience,
            AdapterType = config.Method, AdapterConfig = (config with { BaseModel = baseModel.Id }).ToJson(), ChatTemplate = chatTemplate,
            Objective = objective.Name, ObjectiveSettings = settings?.ToJsonString(), StartModel = start?.Name, StartAdapterPath = start?.BlobPath,
            Sweep = sweep?.ToJson(),
            EvalSettings = eval?.ToJson(),
        };
        var notes = new List<string> { $"Created fine-tuning job: {job.Id}" + (start is null ? "" : $", continuing from {start.Name}"),
            $"Validated training file: {job.TrainingFile} ({exampleCount} examples, {job.TrainingFileTokens} tokens)" };
        if (sweep is not null)
            notes.Add($"Sweep of {sweep.Values.Count} members over {sweep.Parameter} ({string.Join(", ", sweep.Values.Select((_, m) => sweep.Label(m)))}): trained fused, scored by "
                      + (sweep.Criterion is { } criterion ? $"the mean '{criterion}' grade of eval {eval!.EvalId}" : "validation loss"));
        await jobs.CreateAsync(job, (request.Metadata ?? []).Select(p => new JobMetadata { JobId = job.Id, Key = p.Key, Value = p.Value }),
            notes, "Fine-tuning job queued", cancel);
        return TypedResults.Ok(await ToDtoAsync(db, job, cancel));
    }

    /// <summary>
    /// The request's training objective (<c>method.type</c>, supervised when there is no <c>method</c>), its settings
    /// (<c>method.{type}</c> as the objective resolves it) and the shared hyperparameters: those of <c>method.{type}</c>,
    /// or else the top-level <c>hyperparameters</c>.
    /// </summary>
    static (TrainingObjective Objective, JsonObject? Settings, HyperparameterValues? Hyperparameters, JobSpecError? Error) ReadMethod(CreateFineTuningJobRequest request)
    {
        var supervised = JobObjectives.Find(JobObjectives.Supervised)!;
        var method = request.Method;
        if (method is null) return (supervised, null, request.Hyperparameters.ToValues(), null);
        if (string.IsNullOrEmpty(method.Type)) return (supervised, null, null, new("Missing required parameter: 'method.type'.", "method.type"));
        if (JobObjectives.Find(method.Type) is not { } objective)
            return (supervised, null, null, new($"Method type '{method.Type}' is not supported; supported: {string.Join(", ", JobObjectives.All.Select(o => $"'{o}'"))}.",
                "method.type", "unsupported_method_type"));
        var sections = method.Sections ?? [];
        if (sections.Keys.FirstOrDefault(k => k != objective.Name) is { } other)
            return (objective, null, null, new($"method.{other} does not go with method.type '{objective.Name}'.", $"method.{other}"));
        JsonElement? section = sections.TryGetValue(objective.Name, out var given) ? given : null;
        var (settings, error) = objective.Resolve(section);
        if (error is not null) return (objective, null, null, error);
        HyperparameterValues? hyperparameters = request.Hyperparameters.ToValues();
        if (section is { ValueKind: JsonValueKind.Object } s && s.TryGetProperty("hyperparameters", out var h) && h.ValueKind == JsonValueKind.Object)
        {
            HyperparametersRequest? parsed;
            string path = $"method.{objective.Name}.hyperparameters";
            try { parsed = h.Deserialize<HyperparametersRequest>(JsonOptions); }
            catch (JsonException) { return (objective, null, null, new($"{path}.early_stopping_patience must be an integer.", $"{path}.early_stopping_patience")); }
            hyperparameters = parsed.ToValues(path);
        }
        return (objective, settings, hyperparameters, null);
    }

    static readonly JsonSerializerOptions JsonOptions = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Newest first; <c>metadata[key]=value</c> query parameters keep the jobs with all those pairs.</summary>
    static async Task<Results<Ok<ListResponse<FineTuningJobDto>>, JsonHttpResult<ErrorResponse>>> ListJobs(
        HttpRequest request, ServiceDbContext db, [AsParameters] PageQuery paging, CancellationToken cancel)
    {
        var (after, limit) = paging;
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
        string jobId, ServiceDbContext db, JobLifecycle jobs, CancellationToken cancel) =>
        await AnswerAsync(jobId, [JobStatus.Paused], await jobs.ResumeAsync(jobId, "Fine-tuning job resumed", cancel), db, cancel);

    /// <summary>Moves a job from one of <paramref name="from"/> to <paramref name="to"/> with its event (<see cref="JobLifecycle"/>), or says why not.</summary>
    static async Task<Results<Ok<FineTuningJobDto>, JsonHttpResult<ErrorResponse>>> ChangeStatusAsync(
        string jobId, string[] from, string to, string message, ServiceDbContext db, JobLifecycle jobs, CancellationToken cancel) =>
        await AnswerAsync(jobId, from, await jobs.TransitionAsync(jobId, from, to, message, cancel), db, cancel);

    /// <summary>The job after a status change, or why it did not change (no such job, finished, or in another status).</summary>
    static async Task<Results<Ok<FineTuningJobDto>, JsonHttpResult<ErrorResponse>>> AnswerAsync(
        string jobId, string[] from, (bool Changed, FineTuningJob? Job) transition, ServiceDbContext db, CancellationToken cancel)
    {
        var (changed, job) = transition;
        if (job is null) return OpenAiErrors.NotFound($"No such fine-tuning job: {jobId}", "id");
        if (!changed)
            return JobStatus.IsFinished(job.Status)
                ? OpenAiErrors.BadRequest($"Job {jobId} has already finished with status {job.Status}.", "id", "job_finished")
                : OpenAiErrors.BadRequest($"Job {jobId} is {job.Status}; this needs a job that is {string.Join(" or ", from)}.", "id", "invalid_job_status");
        return TypedResults.Ok(await ToDtoAsync(db, job, cancel));
    }

    static async Task<Results<Ok<CheckpointListResponse>, JsonHttpResult<ErrorResponse>>> ListCheckpoints(
        string jobId, ServiceDbContext db, [AsParameters] PageQuery paging, CancellationToken cancel)
    {
        var (after, limit) = paging;
        if (!await db.Jobs.AnyAsync(j => j.Id == jobId, cancel)) return OpenAiErrors.NotFound($"No such fine-tuning job: {jobId}", "id");
        if (limit is < 1 or > 100) return OpenAiErrors.BadRequest("limit must be between 1 and 100.", "limit");
        int take = limit ?? 10;
        var query = db.Checkpoints.AsNoTracking().Where(c => c.JobId == jobId);
        if (after is not null)
        {
            var cursor = await db.Checkpoints.AsNoTracking().SingleOrDefaultAsync(c => c.Id == after && c.JobId == jobId, cancel);
            if (cursor is null) return OpenAiErrors.BadRequest($"No such checkpoint: {after}", "after");
            // A sweep's members have checkpoints at the same steps: the id orders those.
            query = query.Where(c => c.StepNumber < cursor.StepNumber || c.StepNumber == cursor.StepNumber && string.Compare(c.Id, cursor.Id) < 0);
        }
        var page = await query.OrderByDescending(c => c.StepNumber).ThenByDescending(c => c.Id).Take(take + 1).ToListAsync(cancel);
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId, cancel);
        var sweep = Sweep.Of(job);
        var data = page.Take(take).Select(c => new CheckpointDto(c.Id, "fine_tuning.job.checkpoint", c.CreatedAt, c.Name, c.StepNumber,
            JsonDocument.Parse(c.Metrics).RootElement, c.JobId, c.SweepMember,
            c.SweepMember is { } m && sweep is not null ? sweep.Shown(job, m) : null)).ToList();
        return TypedResults.Ok(new CheckpointListResponse("list", data, page.Count > take, data.FirstOrDefault()?.Id, data.LastOrDefault()?.Id));
    }

    static async Task<Results<Ok<ListResponse<JobEventDto>>, JsonHttpResult<ErrorResponse>>> ListEvents(
        string jobId, ServiceDbContext db, [AsParameters] PageQuery paging, CancellationToken cancel)
    {
        var (after, limit) = paging;
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
