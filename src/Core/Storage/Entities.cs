namespace AdapterService.Core.Storage;

/// <summary>A tenant: files, jobs and adapters belong to one project, and its API keys see only its own.</summary>
public sealed class Project
{
    /// <summary>Owns everything when auth is off, and what existed before projects did; the admin key acts in it.</summary>
    public const string DefaultId = "proj_default";

    public required string Id { get; init; }
    public required string Name { get; init; }
    public long CreatedAt { get; init; }
}

/// <summary>A project's API key. Only its SHA-256 is stored; the secret is shown once, when it is created.</summary>
public sealed class ApiKey
{
    public required string Id { get; init; }
    public required string ProjectId { get; init; }
    public required string Name { get; init; }
    /// <summary>SHA-256 of the whole key, lower-case hex.</summary>
    public required string Hash { get; init; }
    /// <summary>The key's first characters, so a user can tell keys apart (<c>sk-proj-AbCd…</c>).</summary>
    public required string RedactedValue { get; init; }
    public long CreatedAt { get; init; }
}

/// <summary>An uploaded file; its bytes live in the blob store at <see cref="BlobPath"/>.</summary>
public sealed class StoredFile
{
    public required string Id { get; init; }
    public string ProjectId { get; init; } = Project.DefaultId;
    public required string Filename { get; init; }
    public required string Purpose { get; init; }
    public long Bytes { get; init; }
    public long CreatedAt { get; init; }
    public required string BlobPath { get; init; }
    // The file's facts (Data.FileFacts), measured at upload; set later for a row from before they were stored.
    public int ExampleCount { get; set; }
    /// <summary>Creation time in UTC ticks: orders files created within the same second (list paging).</summary>
    public long Sequence { get; init; } = DateTime.UtcNow.Ticks;
    public string? Format { get; set; }
    /// <summary>An image file's labels, each with its first line, as JSON.</summary>
    public string? Labels { get; set; }
    /// <summary>An image file's sizes ("28x28"), each with its first line, as JSON.</summary>
    public string? ImageSizes { get; set; }
}

/// <summary>Tokens of a text file for one base model (cut to its context length): measured once, reused by every job.</summary>
public sealed class FileTokenCount
{
    public required string FileId { get; init; }
    public required string BaseModel { get; init; }
    public long Tokens { get; init; }
}

/// <summary>A base model registered with the service; its Hugging Face folder lives in the blob store.</summary>
public sealed class BaseModel
{
    public required string Id { get; init; }
    public required string Family { get; init; }
    public required string Description { get; init; }
    public required string BlobPath { get; init; }
    public long ParameterCount { get; init; }
    public int ContextLength { get; init; }
    public required string Dtype { get; init; }
    public required string Tokenizer { get; init; }
    public long CreatedAt { get; init; }
    public string OwnedBy { get; init; } = "system";
}

public static class JobStatus
{
    public const string ValidatingFiles = "validating_files", Queued = "queued", Running = "running",
        Succeeded = "succeeded", Failed = "failed", Cancelled = "cancelled";

    public const string Paused = "paused";

    /// <summary>Statuses a job can still leave: cancel applies to them, and their files cannot be deleted.</summary>
    public static readonly string[] Unfinished = [ValidatingFiles, Queued, Running, Paused];
    public static bool IsFinished(string status) => status is Succeeded or Failed or Cancelled;
}

/// <summary>A fine-tuning job. The row is the source of truth for its status; the queue only carries its id.</summary>
public sealed class FineTuningJob
{
    public required string Id { get; init; }
    public string ProjectId { get; init; } = Project.DefaultId;
    public required string Model { get; init; }
    public required string TrainingFile { get; init; }
    public string? ValidationFile { get; init; }
    public string Status { get; set; } = JobStatus.ValidatingFiles;
    public long CreatedAt { get; init; }
    /// <summary>Creation time in UTC ticks: orders jobs created within the same second (list paging).</summary>
    public long Sequence { get; init; } = DateTime.UtcNow.Ticks;
    public long? FinishedAt { get; set; }
    public string? FineTunedModel { get; set; }
    public string? Suffix { get; init; }
    public long Seed { get; init; }
    public int Epochs { get; init; }
    public int BatchSize { get; init; }
    public double LearningRateMultiplier { get; init; }
    /// <summary>Stop after this many epochs without a lower validation loss (needs a validation file).</summary>
    public int? EarlyStoppingPatience { get; init; }
    public required string AdapterType { get; init; }
    /// <summary>The adapter's PEFT config (adapter_config.json) as resolved at creation.</summary>
    public required string AdapterConfig { get; init; }
    /// <summary>What the job optimises: OpenAI's <c>method.type</c>, a name in <see cref="Jobs.JobObjectives"/> (how the adapter is built is <see cref="AdapterType"/>).</summary>
    public string Objective { get; init; } = Jobs.JobObjectives.Supervised;
    /// <summary>The objective's own part of <c>method.{type}</c> as resolved at creation (its hyperparameters beyond the shared ones, say), as JSON; null when it has none.</summary>
    public string? ObjectiveSettings { get; init; }
    /// <summary>The fine-tuned model or checkpoint the job continues from, as the request named it; null when it starts from the base.</summary>
    public string? StartModel { get; init; }
    /// <summary>The blob folder of <see cref="StartModel"/>'s adapter: the weights training starts from.</summary>
    public string? StartAdapterPath { get; init; }
    /// <summary>The chat template the job trains with (a name of the base's templates or a template's source); the base's own when null.</summary>
    public string? ChatTemplate { get; init; }
    public long? TrainedTokens { get; set; }
    /// <summary>Tokens in the training file (after cutting examples to the context length): one epoch's worth.</summary>
    public long TrainingFileTokens { get; init; }
    /// <summary>The worker training the job; it renews <see cref="LeaseUntil"/> while it trains, so a worker that died
    /// loses the job to the next one that fetches it, and two workers never train the same job.</summary>
    public string? LeaseOwner { get; set; }
    public long? LeaseUntil { get; set; }
    /// <summary>Unix time the running job expects to finish, updated as steps complete.</summary>
    public long? EstimatedFinish { get; set; }
    public string? ErrorCode { get; set; }
    public string? ErrorMessage { get; set; }
    public string? ErrorParam { get; set; }
    /// <summary>The W3C trace context of the request that created the job, so the worker's run continues its trace.</summary>
    public string? TraceParent { get; set; }
    /// <summary>A hyperparameter sweep's parameter and values as JSON (<see cref="Jobs.Sweep"/>); null for a job of one training.</summary>
    public string? Sweep { get; set; }

    /// <summary>Where the sweep's JSON lists a rank sweep's member adapter configs (<see cref="Jobs.Sweep.Adapters"/>).</summary>
    public const string SweepAdaptersKey = "adapters";

    /// <summary>
    /// The adapter config (JSON) a checkpoint of <paramref name="sweepMember"/> was trained with: a rank sweep's member has
    /// its own; otherwise the job's.
    /// </summary>
    public string AdapterConfigOf(int? sweepMember) =>
        sweepMember is { } m && Sweep is not null && System.Text.Json.JsonDocument.Parse(Sweep).RootElement.TryGetProperty(SweepAdaptersKey, out var adapters)
            && adapters.ValueKind == System.Text.Json.JsonValueKind.Array ? adapters[m].GetString()! : AdapterConfig;
    /// <summary>The eval run at every checkpoint (the request's <c>eval</c> object as validated, JSON); null when none.</summary>
    public string? EvalSettings { get; init; }
}

/// <summary>One key-value pair of a job's user metadata (a table of its own, so list filters run in the database).</summary>
public sealed class JobMetadata
{
    public required string JobId { get; init; }
    public required string Key { get; init; }
    public required string Value { get; init; }
}

/// <summary>One entry of a job's event log; metrics events carry the progress numbers as JSON.</summary>
public sealed class JobEvent
{
    public long Id { get; init; }
    public required string JobId { get; init; }
    public long CreatedAt { get; init; }
    public string Level { get; init; } = "info";
    public required string Message { get; init; }
    public string Type { get; init; } = "message";
    public string? Data { get; init; }
    /// <summary>The training step a metrics event reports.</summary>
    public int? Step { get; init; }
}

/// <summary>An adapter saved at the end of an epoch of a job, servable as its own model.</summary>
public sealed class Checkpoint
{
    public required string Id { get; init; }
    public required string JobId { get; init; }
    /// <summary>The model name it is served as: <c>{fine-tuned model}:ckpt-step-{step}</c>.</summary>
    public required string Name { get; init; }
    public required string BaseModel { get; init; }
    public int StepNumber { get; init; }
    public long CreatedAt { get; init; }
    /// <summary>Metrics at that step as JSON (step, train_loss, train_mean_token_accuracy).</summary>
    public required string Metrics { get; init; }
    public required string BlobPath { get; init; }
    /// <summary>The sweep member (0-based, <see cref="Jobs.Sweep"/>) it is a checkpoint of; null for a job of one training.</summary>
    public int? SweepMember { get; init; }
}

/// <summary>A trained adapter: its row records what it is; its PEFT folder lives in the blob store.</summary>
public sealed class Adapter
{
    public required string Id { get; init; }
    public string ProjectId { get; init; } = Project.DefaultId;
    /// <summary>The model name users call it by, e.g. <c>ft:tiny-llama-demo:my-suffix:ftjob-abc</c>.</summary>
    public required string Name { get; init; }
    public required string BaseModel { get; init; }
    public required string Method { get; init; }
    public required string Config { get; init; }
    public long ParameterCount { get; init; }
    public long SizeBytes { get; init; }
    public required string BlobPath { get; init; }
    /// <summary>SHA-256 of the adapter's files, to check a copy or an export against.</summary>
    public required string Sha256 { get; init; }
    public string? JobId { get; init; }
    public long CreatedAt { get; init; }
}

/// <summary>An eval (OpenAI's Evals API): the shape of its items and its testing criteria (graders); its runs score models.</summary>
public sealed class Eval
{
    public required string Id { get; init; }
    public string ProjectId { get; init; } = Project.DefaultId;
    public required string Name { get; set; }
    /// <summary>The data source config as answered (<c>{"type": "custom", "schema": {...}}</c>), JSON.</summary>
    public required string DataSourceConfig { get; init; }
    /// <summary>The testing criteria as given (grader objects, each with its name), JSON.</summary>
    public required string TestingCriteria { get; init; }
    public string? Metadata { get; set; }
    public long CreatedAt { get; init; }
    /// <summary>Creation time in UTC ticks, for list paging.</summary>
    public long Sequence { get; init; } = DateTime.UtcNow.Ticks;
}

public static class EvalRunStatus
{
    public const string Queued = "queued", InProgress = "in_progress", Completed = "completed", Failed = "failed", Canceled = "canceled";
    public static bool IsFinished(string status) => status is Completed or Failed or Canceled;
}

/// <summary>One run of an eval: one model over the items of its data source. Runs created by one call share a <see cref="Group"/>.</summary>
public sealed class EvalRun
{
    public required string Id { get; init; }
    public required string EvalId { get; init; }
    public string ProjectId { get; init; } = Project.DefaultId;
    public required string Name { get; init; }
    public required string Model { get; init; }
    /// <summary>The runs created by one call, executed (and admitted to the engine) together.</summary>
    public required string Group { get; init; }
    public string Status { get; set; } = EvalRunStatus.Queued;
    /// <summary>The data source as given, with <c>model</c> set to this run's model (JSON).</summary>
    public required string DataSource { get; init; }
    public string? Metadata { get; init; }
    public int Total { get; set; }
    public int Passed { get; set; }
    public int Failed { get; set; }
    public int Errored { get; set; }
    /// <summary>Per criterion: name, passed, failed, and the mean grade (JSON array).</summary>
    public string? PerCriteria { get; set; }
    public string? ErrorCode { get; set; }
    public string? ErrorMessage { get; set; }
    /// <summary>The fine-tuning job whose checkpoint this run scores (evals at checkpoints); null for runs made through the API.</summary>
    public string? JobId { get; init; }
    public long CreatedAt { get; init; }
    public long Sequence { get; init; } = DateTime.UtcNow.Ticks;
}

/// <summary>One item of a run: the item, the model's sample and each criterion's grade.</summary>
public sealed class EvalOutputItem
{
    public required string Id { get; init; }
    public required string RunId { get; init; }
    public required string EvalId { get; init; }
    /// <summary>The item's place in the data source (OpenAI's <c>datasource_item_id</c>).</summary>
    public int ItemIndex { get; init; }
    public required string Status { get; init; }
    public required string Item { get; init; }
    public required string Sample { get; init; }
    public required string Results { get; init; }
    public long CreatedAt { get; init; }
}
