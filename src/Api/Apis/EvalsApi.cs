using System.Security.Claims;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Evals;
using AdapterService.Core.Grading;
using AdapterService.Core.Inference;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Apis;

public sealed record EvalDto(string Object, string Id, string Name, JsonElement DataSourceConfig, JsonElement TestingCriteria, long CreatedAt,
    IReadOnlyDictionary<string, string>? Metadata);

public sealed record EvalDeletedDto(string Object, bool Deleted, string EvalId);

public sealed record EvalRunDeletedDto(string Object, bool Deleted, string RunId);

public sealed record ResultCountsDto(int Total, int Errored, int Failed, int Passed);

/// <summary>A criterion's counts; <c>mean_score</c> (our addition) is its mean grade over the graded items.</summary>
public sealed record CriterionResultDto(string TestingCriteria, int Passed, int Failed, double? MeanScore);

public sealed record EvalRunErrorDto(string Code, string Message);

/// <summary>
/// An eval run. <c>runs</c> (our extension) is set only on the answer to a create that named several models: every run
/// the call created, this one (the first) among them. <c>fine_tuning_job_id</c>: the job whose checkpoint it scored.
/// </summary>
public sealed record EvalRunDto(string Object, string Id, string EvalId, string Name, string Model, string Status, JsonElement DataSource,
    ResultCountsDto ResultCounts, IReadOnlyList<CriterionResultDto> PerTestingCriteriaResults, IReadOnlyList<object> PerModelUsage, string? ReportUrl,
    EvalRunErrorDto? Error, long CreatedAt, IReadOnlyDictionary<string, string>? Metadata, string? FineTuningJobId, IReadOnlyList<EvalRunDto>? Runs = null);

public sealed record EvalOutputItemDto(string Object, string Id, string RunId, string EvalId, long CreatedAt, string Status, int DatasourceItemId,
    JsonElement DatasourceItem, JsonElement Results, JsonElement Sample);

public sealed record EvalListResponse<T>(string Object, IReadOnlyList<T> Data, bool HasMore, string? FirstId, string? LastId);

/// <summary>Wakes the <see cref="EvalRunService"/> when runs are created (it also looks every second).</summary>
public sealed class EvalRunSignal
{
    readonly Channel<bool> channel = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });
    public void Wake() => channel.Writer.TryWrite(true);
    public async Task WaitAsync(TimeSpan most, CancellationToken stop)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(most);
        try { await channel.Reader.ReadAsync(timeout.Token); }
        catch (OperationCanceledException) when (!stop.IsCancellationRequested) { }
    }
}

/// <summary>
/// OpenAI's Evals API (the subset that fits; docs/API.md, "Evals"): evals with a custom item schema and testing criteria
/// from the grader library, runs of <c>completions</c> data sources over this service's models, their output items,
/// cancel and delete. Runs execute in the background (<see cref="EvalRunService"/>) through the serving engine.
/// </summary>
public static class EvalsApi
{
    public static IEndpointRouteBuilder MapEvalsApi(this IEndpointRouteBuilder app)
    {
        var evals = app.MapGroup("/v1/evals").WithTags("Evals");
        evals.MapPost("/", CreateEval).WithName("createEval").WithErrors(400, 404, 429).WithSummary("Create an eval: an item schema and testing criteria (graders)");
        evals.MapGet("/", ListEvals).WithName("listEvals").WithErrors(400).WithSummary("List evals (paged with after/limit, order asc|desc)");
        evals.MapGet("/{evalId}", GetEval).WithName("getEval").WithErrors(404).WithSummary("Retrieve an eval");
        evals.MapPost("/{evalId}", UpdateEval).WithName("updateEval").WithErrors(400, 404).WithSummary("Rename an eval or replace its metadata");
        evals.MapDelete("/{evalId}", DeleteEval).WithName("deleteEval").WithErrors(404).WithSummary("Delete an eval with its runs (runs in progress are cancelled)");
        evals.MapPost("/{evalId}/runs", CreateRun).WithName("createEvalRun").WithErrors(400, 404, 429).WithSummary("Start a run (or, with data_source.models, one run per model)")
            .WithDescription("`data_source`: `{\"type\": \"completions\", \"model\": ..., \"input_messages\": {\"type\": \"template\", \"template\": [...]}, \"sampling_params\": {...}, \"source\": {\"type\": \"file_content\" | \"file_id\", ...}}`. Our extension `models` (a list) creates one run per model, admitted to the engine together; the answer is the first run with every run in `runs`.");
        evals.MapGet("/{evalId}/runs", ListRuns).WithName("getEvalRuns").WithErrors(400, 404).WithSummary("List an eval's runs (paged with after/limit, order asc|desc, status)");
        evals.MapGet("/{evalId}/runs/{runId}", GetRun).WithName("getEvalRun").WithErrors(404).WithSummary("Retrieve a run: its status, result counts and per-criterion results");
        evals.MapPost("/{evalId}/runs/{runId}", CancelRun).WithName("cancelEvalRun").WithErrors(400, 404).WithSummary("Cancel a queued or running run");
        evals.MapPost("/{evalId}/runs/{runId}/cancel", CancelRun).WithName("cancelEvalRunAlias").WithErrors(400, 404).WithSummary("Cancel a queued or running run (the same as POST on the run)");
        evals.MapDelete("/{evalId}/runs/{runId}", DeleteRun).WithName("deleteEvalRun").WithErrors(404).WithSummary("Delete a run and its output items");
        evals.MapGet("/{evalId}/runs/{runId}/output_items", ListOutputItems).WithName("getEvalRunOutputItems").WithErrors(400, 404)
            .WithSummary("List a run's output items in item order (paged with after/limit, status pass|fail|error)");
        evals.MapGet("/{evalId}/runs/{runId}/output_items/{itemId}", GetOutputItem).WithName("getEvalRunOutputItem").WithErrors(404).WithSummary("Retrieve one output item");
        return app;
    }

    static JsonHttpResult<ErrorResponse> ToResult(this EvalException e) => OpenAiErrors.Error(e.Status, e.Message, e.Param, e.Code);

    static readonly string[] Unsupported = ["logs", "stored_completions", "label_model"];

    static async Task<Results<Ok<EvalDto>, JsonHttpResult<ErrorResponse>>> CreateEval(JsonElement body, ClaimsPrincipal user, ServiceDbContext db, IBlobStore blobs,
        InferenceEngine engine, IOptions<LimitsOptions> limits, CancellationToken cancel)
    {
        try
        {
            if (body.ValueKind != JsonValueKind.Object) throw new EvalException("The request body must be a JSON object.", "body");
            string? name = OptionalString(body, "name");
            if (!body.TryGetProperty("data_source_config", out var config) || config.ValueKind != JsonValueKind.Object)
                throw new EvalException("Missing required parameter: 'data_source_config'.", "data_source_config");
            string type = config.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "";
            if (type != "custom")
                throw new EvalException($"data_source_config.type '{type}' is not supported; this service's evals use 'custom' (an item_schema).", "data_source_config.type");
            if (!config.TryGetProperty("item_schema", out var itemSchema) || itemSchema.ValueKind != JsonValueKind.Object)
                throw new EvalException("Missing required parameter: 'data_source_config.item_schema' (a JSON schema object).", "data_source_config.item_schema");
            if (itemSchema.TryGetProperty("required", out var required) && (required.ValueKind != JsonValueKind.Array || required.EnumerateArray().Any(r => r.ValueKind != JsonValueKind.String)))
                throw new EvalException("data_source_config.item_schema.required must be an array of property names.", "data_source_config.item_schema.required");
            bool includeSample = config.TryGetProperty("include_sample_schema", out var inc) && inc.ValueKind == JsonValueKind.True;
            if (!body.TryGetProperty("testing_criteria", out var criteriaJson)) throw new EvalException("Missing required parameter: 'testing_criteria'.", "testing_criteria");
            var criteria = EvalCriteria.Parse(criteriaJson);
            var judge = new EngineJudge(engine, db, blobs);
            foreach (var c in criteria)
                foreach (var (model, path) in c.Grader.JudgeModels)
                    if (!await judge.ExistsAsync(model, cancel))
                        throw new EvalException($"The judge model '{model}' does not exist or is not a language model.", path, "model_not_found", 404);
            var metadata = ReadMetadata(body);
            if (await db.Evals.CountAsync(cancel) >= limits.Value.MaxEvalsPerProject)
                return OpenAiErrors.Error(429, $"This project has {limits.Value.MaxEvalsPerProject} evals, the most allowed; delete one first.", null, "too_many_evals");

            var schema = new JsonObject
            {
                ["type"] = "object",
                ["properties"] = new JsonObject
                {
                    ["item"] = JsonNode.Parse(itemSchema.GetRawText()),
                    ["sample"] = includeSample ? new JsonObject
                    {
                        ["type"] = "object",
                        ["properties"] = new JsonObject { ["output_text"] = new JsonObject { ["type"] = "string" }, ["output_json"] = new JsonObject { ["type"] = "object" } },
                    } : null,
                },
                ["required"] = includeSample ? new JsonArray("item", "sample") : new JsonArray("item"),
            };
            if (!includeSample) schema["properties"]!.AsObject().Remove("sample");
            // Each criterion stored with its name, so a later read (and a run) sees the names the answers use.
            var named = new JsonArray([.. criteriaJson.EnumerateArray().Select((c, i) =>
            {
                var node = JsonNode.Parse(c.GetRawText())!.AsObject();
                node["name"] = criteria[i].Name;
                return (JsonNode)node;
            })]);
            var eval = new Eval
            {
                Id = "eval_" + Ids.New(), ProjectId = user.ProjectId()!, Name = name ?? "eval", CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
                DataSourceConfig = new JsonObject { ["type"] = "custom", ["schema"] = schema }.ToJsonString(), TestingCriteria = named.ToJsonString(),
                Metadata = metadata is null ? null : JsonSerializer.Serialize(metadata),
            };
            db.Evals.Add(eval);
            await db.SaveChangesAsync(cancel);
            return TypedResults.Ok(ToDto(eval));
        }
        catch (EvalException e) { return e.ToResult(); }
    }

    static async Task<Results<Ok<EvalDto>, JsonHttpResult<ErrorResponse>>> UpdateEval(string evalId, JsonElement body, ServiceDbContext db, CancellationToken cancel)
    {
        var eval = await db.Evals.SingleOrDefaultAsync(e => e.Id == evalId, cancel);
        if (eval is null) return OpenAiErrors.NotFound($"No such eval: {evalId}", "eval_id");
        try
        {
            if (body.ValueKind != JsonValueKind.Object) throw new EvalException("The request body must be a JSON object.", "body");
            if (OptionalString(body, "name") is { } name) eval.Name = name;
            if (ReadMetadata(body) is { } metadata) eval.Metadata = JsonSerializer.Serialize(metadata);
        }
        catch (EvalException e) { return e.ToResult(); }
        await db.SaveChangesAsync(cancel);
        return TypedResults.Ok(ToDto(eval));
    }

    static async Task<Results<Ok<EvalListResponse<EvalDto>>, JsonHttpResult<ErrorResponse>>> ListEvals(ServiceDbContext db, [AsParameters] PageQuery paging,
        string? order, CancellationToken cancel)
    {
        var (after, limit) = paging;
        if (limit is < 1 or > 100) return OpenAiErrors.BadRequest("limit must be between 1 and 100.", "limit");
        if (order is not (null or "asc" or "desc")) return OpenAiErrors.BadRequest("order must be 'asc' or 'desc'.", "order");
        var query = db.Evals.AsNoTracking().AsQueryable();
        if (after is not null)
        {
            var cursor = await db.Evals.AsNoTracking().SingleOrDefaultAsync(e => e.Id == after, cancel);
            if (cursor is null) return OpenAiErrors.BadRequest($"No such eval: {after}", "after");
            query = order == "desc" ? query.Where(e => e.Sequence < cursor.Sequence) : query.Where(e => e.Sequence > cursor.Sequence);
        }
        query = order == "desc" ? query.OrderByDescending(e => e.Sequence) : query.OrderBy(e => e.Sequence);
        int take = limit ?? 20;
        var page = await query.Take(take + 1).ToListAsync(cancel);
        var data = page.Take(take).Select(ToDto).ToList();
        return TypedResults.Ok(new EvalListResponse<EvalDto>("list", data, page.Count > take, data.FirstOrDefault()?.Id, data.LastOrDefault()?.Id));
    }

    static async Task<Results<Ok<EvalDto>, JsonHttpResult<ErrorResponse>>> GetEval(string evalId, ServiceDbContext db, CancellationToken cancel) =>
        await db.Evals.AsNoTracking().SingleOrDefaultAsync(e => e.Id == evalId, cancel) is { } eval
            ? TypedResults.Ok(ToDto(eval)) : OpenAiErrors.NotFound($"No such eval: {evalId}", "eval_id");

    static async Task<Results<Ok<EvalDeletedDto>, JsonHttpResult<ErrorResponse>>> DeleteEval(string evalId, ServiceDbContext db, CancellationToken cancel)
    {
        if (!await db.Evals.AnyAsync(e => e.Id == evalId, cancel)) return OpenAiErrors.NotFound($"No such eval: {evalId}", "eval_id");
        // Runs in progress stop at their next window; their rows go with the eval.
        await db.EvalRuns.Where(r => r.EvalId == evalId && (r.Status == EvalRunStatus.Queued || r.Status == EvalRunStatus.InProgress))
            .ExecuteUpdateAsync(s => s.SetProperty(r => r.Status, EvalRunStatus.Canceled), cancel);
        await db.EvalOutputItems.Where(i => i.EvalId == evalId).ExecuteDeleteAsync(cancel);
        await db.EvalRuns.Where(r => r.EvalId == evalId).ExecuteDeleteAsync(cancel);
        await db.Evals.Where(e => e.Id == evalId).ExecuteDeleteAsync(cancel);
        return TypedResults.Ok(new EvalDeletedDto("eval.deleted", true, evalId));
    }

    static async Task<Results<Ok<EvalRunDto>, JsonHttpResult<ErrorResponse>>> CreateRun(string evalId, JsonElement body, ClaimsPrincipal user, ServiceDbContext db,
        IBlobStore blobs, InferenceEngine engine, EvalRunSignal signal, IOptions<LimitsOptions> limits, CancellationToken cancel)
    {
        var eval = await db.Evals.AsNoTracking().SingleOrDefaultAsync(e => e.Id == evalId, cancel);
        if (eval is null) return OpenAiErrors.NotFound($"No such eval: {evalId}", "eval_id");
        try
        {
            if (body.ValueKind != JsonValueKind.Object) throw new EvalException("The request body must be a JSON object.", "body");
            if (!body.TryGetProperty(EvalDataSource.Path, out var dataSource)) throw new EvalException("Missing required parameter: 'data_source'.", EvalDataSource.Path);
            var source = EvalDataSource.Parse(dataSource);
            string? name = OptionalString(body, "name");
            var metadata = ReadMetadata(body);
            // Every model first (cheap), then the items (they may be a file): nothing runs for a bad request.
            var judge = new EngineJudge(engine, db, blobs);
            bool listed = dataSource.TryGetProperty("models", out var m) && m.ValueKind == JsonValueKind.Array;
            for (int i = 0; i < source.Models.Count; i++)
                if (!await judge.ExistsAsync(source.Models[i], cancel))
                    throw new EvalException($"The model '{source.Models[i]}' does not exist or is not a language model.", source.ModelParams[i], "model_not_found", 404);
            var criteria = EvalRuns.CriteriaOf(eval);
            var items = await source.ItemsAsync(db, blobs, criteria, EvalRuns.RequiredItemFields(eval), limits.Value.MaxTrainingExamples, cancel);

            int active = await db.EvalRuns.CountAsync(r => r.Status == EvalRunStatus.Queued || r.Status == EvalRunStatus.InProgress, cancel);
            if (active + source.Models.Count > limits.Value.MaxActiveEvalRunsPerProject)
                return OpenAiErrors.Error(429, $"This project has {active} eval runs queued or running; {source.Models.Count} more would pass the most allowed at once ({limits.Value.MaxActiveEvalRunsPerProject}). Wait for one to finish or cancel one.",
                    null, "too_many_active_runs");

            string group = "evalgroup_" + Ids.New();
            var runs = source.Models.Select(model =>
            {
                var stored = JsonNode.Parse(dataSource.GetRawText())!.AsObject();
                stored.Remove("models");
                stored["model"] = model;
                return new EvalRun
                {
                    Id = "evalrun_" + Ids.New(), EvalId = eval.Id, ProjectId = user.ProjectId()!, Name = name ?? $"{eval.Name} on {model}", Model = model, Group = group,
                    DataSource = stored.ToJsonString(), Metadata = metadata is null ? null : JsonSerializer.Serialize(metadata), Total = 0,
                    CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
                };
            }).ToList();
            db.EvalRuns.AddRange(runs);
            await db.SaveChangesAsync(cancel);
            signal.Wake();
            var dtos = runs.Select(r => ToDto(r)).ToList();
            return TypedResults.Ok(listed ? dtos[0] with { Runs = dtos } : dtos[0]);
        }
        catch (EvalException e) { return e.ToResult(); }
    }

    static async Task<Results<Ok<EvalListResponse<EvalRunDto>>, JsonHttpResult<ErrorResponse>>> ListRuns(string evalId, ServiceDbContext db, [AsParameters] PageQuery paging,
        string? order, string? status, CancellationToken cancel)
    {
        var (after, limit) = paging;
        if (!await db.Evals.AnyAsync(e => e.Id == evalId, cancel)) return OpenAiErrors.NotFound($"No such eval: {evalId}", "eval_id");
        if (limit is < 1 or > 100) return OpenAiErrors.BadRequest("limit must be between 1 and 100.", "limit");
        if (order is not (null or "asc" or "desc")) return OpenAiErrors.BadRequest("order must be 'asc' or 'desc'.", "order");
        var query = db.EvalRuns.AsNoTracking().Where(r => r.EvalId == evalId);
        if (status is not null) query = query.Where(r => r.Status == status);
        if (after is not null)
        {
            var cursor = await db.EvalRuns.AsNoTracking().SingleOrDefaultAsync(r => r.Id == after && r.EvalId == evalId, cancel);
            if (cursor is null) return OpenAiErrors.BadRequest($"No such run: {after}", "after");
            query = order == "desc" ? query.Where(r => r.Sequence < cursor.Sequence) : query.Where(r => r.Sequence > cursor.Sequence);
        }
        query = order == "desc" ? query.OrderByDescending(r => r.Sequence) : query.OrderBy(r => r.Sequence);
        int take = limit ?? 20;
        var page = await query.Take(take + 1).ToListAsync(cancel);
        var data = page.Take(take).Select(r => ToDto(r)).ToList();
        return TypedResults.Ok(new EvalListResponse<EvalRunDto>("list", data, page.Count > take, data.FirstOrDefault()?.Id, data.LastOrDefault()?.Id));
    }

    static async Task<EvalRun?> FindRunAsync(ServiceDbContext db, string evalId, string runId, CancellationToken cancel) =>
        await db.EvalRuns.AsNoTracking().SingleOrDefaultAsync(r => r.Id == runId && r.EvalId == evalId, cancel);

    static async Task<Results<Ok<EvalRunDto>, JsonHttpResult<ErrorResponse>>> GetRun(string evalId, string runId, ServiceDbContext db, CancellationToken cancel) =>
        await FindRunAsync(db, evalId, runId, cancel) is { } run ? TypedResults.Ok(ToDto(run)) : OpenAiErrors.NotFound($"No such run: {runId}", "run_id");

    static async Task<Results<Ok<EvalRunDto>, JsonHttpResult<ErrorResponse>>> CancelRun(string evalId, string runId, ServiceDbContext db, CancellationToken cancel)
    {
        if (await FindRunAsync(db, evalId, runId, cancel) is null) return OpenAiErrors.NotFound($"No such run: {runId}", "run_id");
        bool changed = await EvalRuns.EndAsync(db, runId, EvalRunStatus.Canceled, cancel: cancel);
        var run = (await FindRunAsync(db, evalId, runId, cancel))!;
        return changed || run.Status == EvalRunStatus.Canceled ? TypedResults.Ok(ToDto(run))
            : OpenAiErrors.BadRequest($"Run {runId} has already finished with status {run.Status}.", "run_id", "run_finished");
    }

    static async Task<Results<Ok<EvalRunDeletedDto>, JsonHttpResult<ErrorResponse>>> DeleteRun(string evalId, string runId, ServiceDbContext db, CancellationToken cancel)
    {
        if (await FindRunAsync(db, evalId, runId, cancel) is null) return OpenAiErrors.NotFound($"No such run: {runId}", "run_id");
        await db.EvalRuns.Where(r => r.Id == runId).ExecuteUpdateAsync(s => s.SetProperty(r => r.Status, EvalRunStatus.Canceled), cancel);
        await db.EvalOutputItems.Where(i => i.RunId == runId).ExecuteDeleteAsync(cancel);
        await db.EvalRuns.Where(r => r.Id == runId).ExecuteDeleteAsync(cancel);
        return TypedResults.Ok(new EvalRunDeletedDto("eval.run.deleted", true, runId));
    }

    static async Task<Results<Ok<EvalListResponse<EvalOutputItemDto>>, JsonHttpResult<ErrorResponse>>> ListOutputItems(string evalId, string runId, ServiceDbContext db,
        [AsParameters] PageQuery paging, string? order, string? status, CancellationToken cancel)
    {
        var (after, limit) = paging;
        if (await FindRunAsync(db, evalId, runId, cancel) is null) return OpenAiErrors.NotFound($"No such run: {runId}", "run_id");
        if (limit is < 1 or > 100) return OpenAiErrors.BadRequest("limit must be between 1 and 100.", "limit");
        if (order is not (null or "asc" or "desc")) return OpenAiErrors.BadRequest("order must be 'asc' or 'desc'.", "order");
        if (status is not (null or "pass" or "fail" or "error")) return OpenAiErrors.BadRequest("status must be 'pass', 'fail' or 'error'.", "status");
        var query = db.EvalOutputItems.AsNoTracking().Where(i => i.RunId == runId);
        if (status is not null) query = query.Where(i => i.Status == status);
        if (after is not null)
        {
            var cursor = await db.EvalOutputItems.AsNoTracking().SingleOrDefaultAsync(i => i.Id == after && i.RunId == runId, cancel);
            if (cursor is null) return OpenAiErrors.BadRequest($"No such output item: {after}", "after");
            query = order == "desc" ? query.Where(i => i.ItemIndex < cursor.ItemIndex) : query.Where(i => i.ItemIndex > cursor.ItemIndex);
        }
        query = order == "desc" ? query.OrderByDescending(i => i.ItemIndex) : query.OrderBy(i => i.ItemIndex);
        int take = limit ?? 20;
        var page = await query.Take(take + 1).ToListAsync(cancel);
        var data = page.Take(take).Select(ToDto).ToList();
        return TypedResults.Ok(new EvalListResponse<EvalOutputItemDto>("list", data, page.Count > take, data.FirstOrDefault()?.Id, data.LastOrDefault()?.Id));
    }

    static async Task<Results<Ok<EvalOutputItemDto>, JsonHttpResult<ErrorResponse>>> GetOutputItem(string evalId, string runId, string itemId, ServiceDbContext db, CancellationToken cancel) =>
        await db.EvalOutputItems.AsNoTracking().SingleOrDefaultAsync(i => i.Id == itemId && i.RunId == runId && i.EvalId == evalId, cancel) is { } item
            && await FindRunAsync(db, evalId, runId, cancel) is not null
            ? TypedResults.Ok(ToDto(item)) : OpenAiErrors.NotFound($"No such output item: {itemId}", "output_item_id");

    static EvalDto ToDto(Eval e) => new("eval", e.Id, e.Name, JsonDocument.Parse(e.DataSourceConfig).RootElement, JsonDocument.Parse(e.TestingCriteria).RootElement,
        e.CreatedAt, e.Metadata is null ? null : JsonSerializer.Deserialize<Dictionary<string, string>>(e.Metadata));

    public static EvalRunDto ToDto(EvalRun r) => new("eval.run", r.Id, r.EvalId, r.Name, r.Model, r.Status, JsonDocument.Parse(r.DataSource).RootElement,
        new ResultCountsDto(r.Total, r.Errored, r.Failed, r.Passed),
        [.. EvalRuns.Summaries(r).Select(c => new CriterionResultDto(c.TestingCriteria, c.Passed, c.Failed, c.MeanScore))], [], null,
        r.ErrorMessage is null ? null : new EvalRunErrorDto(r.ErrorCode ?? "run_failed", r.ErrorMessage), r.CreatedAt,
        r.Metadata is null ? null : JsonSerializer.Deserialize<Dictionary<string, string>>(r.Metadata), r.JobId);

    static EvalOutputItemDto ToDto(EvalOutputItem i) => new("eval.run.output_item", i.Id, i.RunId, i.EvalId, i.CreatedAt, i.Status, i.ItemIndex,
        JsonDocument.Parse(i.Item).RootElement, JsonDocument.Parse(i.Results).RootElement, JsonDocument.Parse(i.Sample).RootElement);

    static string? OptionalString(JsonElement body, string key) =>
        !body.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString() : throw new EvalException($"{key} must be a string.", key);

    /// <summary>OpenAI's metadata: at most 16 string pairs, keys up to 64 characters, values up to 512.</summary>
    static Dictionary<string, string>? ReadMetadata(JsonElement body)
    {
        if (!body.TryGetProperty("metadata", out var m) || m.ValueKind == JsonValueKind.Null) return null;
        if (m.ValueKind != JsonValueKind.Object || m.EnumerateObject().Count() > 16
            || m.EnumerateObject().Any(p => p.Name.Length is 0 or > 64 || p.Value.ValueKind != JsonValueKind.String || p.Value.GetString()!.Length > 512))
            throw new EvalException("metadata holds at most 16 pairs, keys of 1-64 characters and string values of up to 512.", "metadata");
        return m.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
    }
}

/// <summary>
/// Executes eval runs in the API process, through its serving engine: the queued runs of each create call together
/// (several calls' groups at once, so they share the engine's batches too). State is in the database: a run is claimed by
/// a conditional update, so with several API processes each runs once; runs left in progress by a stopped process are
/// queued again at start (their output items so far are dropped and they start over).
/// </summary>
public sealed class EvalRunService(IServiceScopeFactory scopes, EvalRunSignal signal, ILogger<EvalRunService> log) : BackgroundService
{
    /// <summary>Groups executing at once.</summary>
    const int Concurrent = 4;
    readonly Dictionary<string, Task> running = [];

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        await Task.Yield();
        using (var scope = scopes.CreateScope())
        {
            var db = scope.ServiceProvider.GetRequiredService<ServiceDbContext>();
            var stale = await db.EvalRuns.Where(r => r.Status == EvalRunStatus.InProgress && r.JobId == null).Select(r => r.Id).ToListAsync(stop);
            await db.EvalOutputItems.Where(i => stale.Contains(i.RunId)).ExecuteDeleteAsync(stop);
            await db.EvalRuns.Where(r => stale.Contains(r.Id)).ExecuteUpdateAsync(s => s.SetProperty(r => r.Status, EvalRunStatus.Queued)
                .SetProperty(r => r.Total, 0).SetProperty(r => r.Passed, 0).SetProperty(r => r.Failed, 0).SetProperty(r => r.Errored, 0).SetProperty(r => r.PerCriteria, (string?)null), stop);
            // A checkpoint's run belongs to its job's worker: one left in progress was cut off with it.
            await db.EvalRuns.Where(r => r.Status == EvalRunStatus.InProgress && r.JobId != null).ExecuteUpdateAsync(s => s.SetProperty(r => r.Status, EvalRunStatus.Failed)
                .SetProperty(r => r.ErrorCode, "interrupted").SetProperty(r => r.ErrorMessage, "The service stopped while this run was in progress."), stop);
        }
        while (!stop.IsCancellationRequested)
        {
            try
            {
                foreach (var done in running.Where(r => r.Value.IsCompleted).Select(r => r.Key).ToList()) running.Remove(done);
                if (running.Count < Concurrent)
                {
                    List<string> groups;
                    using (var scope = scopes.CreateScope())
                        groups = await scope.ServiceProvider.GetRequiredService<ServiceDbContext>().EvalRuns.AsNoTracking()
                            .Where(r => r.Status == EvalRunStatus.Queued).OrderBy(r => r.Sequence).Select(r => r.Group).Take(64).ToListAsync(stop);
                    foreach (var group in groups.Distinct().Where(g => !running.ContainsKey(g)).Take(Concurrent - running.Count))
                        running[group] = Task.Run(() => RunGroupAsync(group, stop), stop);
                }
            }
            catch (Exception e) when (e is not OperationCanceledException) { log.LogError(e, "Looking for queued eval runs failed"); }
            await signal.WaitAsync(TimeSpan.FromSeconds(1), stop);
        }
    }

    async Task RunGroupAsync(string group, CancellationToken stop)
    {
        try
        {
            using var scope = scopes.CreateScope();
            var services = scope.ServiceProvider;
            var runs = new EvalRuns(services.GetRequiredService<ServiceDbContext>(), services.GetRequiredService<IBlobStore>(), services.GetRequiredService<InferenceEngine>())
            {
                MaxItems = services.GetRequiredService<IOptions<LimitsOptions>>().Value.MaxTrainingExamples,
            };
            await runs.ExecuteAsync(await runs.ClaimAsync(group, stop), stop);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
        catch (Exception e) { log.LogError(e, "Eval run group {Group} failed", group); }
        finally { signal.Wake(); }
    }
}
