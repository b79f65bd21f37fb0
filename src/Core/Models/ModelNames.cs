using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Models;

/// <summary>
/// What a model name stands for: a base model (its id), an adapter (<c>ft:…</c>, trained, imported or combined), or a
/// checkpoint of a job (<c>ft:…:ckpt-step-N</c>). Exactly one of the three is set.
/// </summary>
public sealed record NamedModel(BaseModel? Base, Adapter? Adapter, Checkpoint? Checkpoint)
{
    /// <summary>The base model's id the name runs on.</summary>
    public string BaseId => Adapter?.BaseModel ?? Checkpoint?.BaseModel ?? Base!.Id;
}

/// <summary>
/// A model name as requests use it, ready to run: the base and, for a fine-tuned model or a checkpoint, its adapter
/// weights. <see cref="AdapterKey"/> identifies those weights for caching.
/// </summary>
public sealed record ResolvedModel(BaseModel Base, string? AdapterKey, string? AdapterBlobPath);

/// <summary>
/// A fine-tuned model a job continues from: its name, its base, its adapter's config and folder, and the chat template
/// its job trained with (null: the base's own, or an imported adapter).
/// </summary>
public sealed record StartingAdapter(string Name, string BaseId, string AdapterConfig, string BlobPath, string? ChatTemplate);

/// <summary>The one resolver of model names, for serving, the models API, export and deletion.</summary>
public static class ModelNames
{
    /// <summary>The name of an adapter trained by a job, imported or combined: <c>ft:{base}:{suffix}:{id}</c> (the suffix may be empty).</summary>
    public static string FineTuned(string baseModel, string? suffix, string id) => $"ft:{baseModel}:{suffix ?? ""}:{id}";

    /// <summary>The name of a job's checkpoint at <paramref name="step"/>: its fine-tuned model's name and <c>:ckpt-step-N</c>.</summary>
    public static string Checkpoint(string fineTunedModel, int step) => $"{fineTunedModel}:ckpt-step-{step}";

    /// <summary>A sweep member's checkpoint: <c>{fine-tuned model}:ckpt-step-N-mK</c> (K numbered from 1, as in the job's events).</summary>
    public static string Checkpoint(string fineTunedModel, int step, int? sweepMember) =>
        sweepMember is { } m ? $"{Checkpoint(fineTunedModel, step)}-m{m + 1}" : Checkpoint(fineTunedModel, step);

    /// <summary>What <paramref name="name"/> names, in this order: an adapter, a checkpoint (of a job still there), a base; null if nothing.</summary>
    public static async Task<NamedModel?> FindAsync(ServiceDbContext db, string name, CancellationToken cancel)
    {
        // Adapter and checkpoint names all start with "ft:"; a base id is looked up as-is.
        if (name.StartsWith("ft:", StringComparison.Ordinal))
        {
            if (await db.Adapters.AsNoTracking().SingleOrDefaultAsync(a => a.Name == name, cancel) is { } adapter) return new(null, adapter, null);
            if (await db.Checkpoints.AsNoTracking().SingleOrDefaultAsync(c => c.Name == name && db.Jobs.Any(j => j.Id == c.JobId), cancel) is { } checkpoint)
                return new(null, null, checkpoint);
        }
        return await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == name, cancel) is { } baseModel ? new(baseModel, null, null) : null;
    }

    /// <summary>
    /// The model a fine-tuning job starts from: a base (its id), or a fine-tuned model to continue training: an adapter's
    /// name, a checkpoint's name or a checkpoint's id (<c>ftckpt-…</c>). Null when <paramref name="name"/> names none.
    /// </summary>
    public static async Task<(string BaseId, StartingAdapter? Start)?> ForTrainingAsync(ServiceDbContext db, string name, CancellationToken cancel)
    {
        var checkpoint = name.StartsWith("ftckpt-", StringComparison.Ordinal)
            ? await db.Checkpoints.AsNoTracking().SingleOrDefaultAsync(c => c.Id == name && db.Jobs.Any(j => j.Id == c.JobId), cancel)
            : null;
        var found = checkpoint is not null ? new NamedModel(null, null, checkpoint) : await FindAsync(db, name, cancel);
        switch (found)
        {
            case null: return null;
            case { Adapter: { } a }:
                var trainedBy = a.JobId is null ? null : await db.Jobs.AsNoTracking().SingleOrDefaultAsync(j => j.Id == a.JobId, cancel);
                return (a.BaseModel, new StartingAdapter(a.Name, a.BaseModel, a.Config, a.BlobPath, trainedBy?.ChatTemplate));
            case { Checkpoint: { } c }:
                var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == c.JobId, cancel);
                return (c.BaseModel, new StartingAdapter(c.Name, c.BaseModel, job.AdapterConfigOf(c.SweepMember), c.BlobPath, job.ChatTemplate));
            default: return (found.BaseId, null);
        }
    }

    /// <summary>The base and adapter weights to run <paramref name="name"/> with; null when it names nothing, or its base is gone.</summary>
    public static async Task<ResolvedModel?> ResolveAsync(ServiceDbContext db, string name, CancellationToken cancel)
    {
        var found = await FindAsync(db, name, cancel);
        if (found is null) return null;
        var baseModel = found.Base ?? await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == found.BaseId, cancel);
        if (baseModel is null) return null;
        return found switch
        {
            { Adapter: { } a } => new(baseModel, a.Id, a.BlobPath),
            { Checkpoint: { } c } => new(baseModel, c.Id, c.BlobPath),
            _ => new(baseModel, null, null),
        };
    }
}
