using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Apis;

/// <summary>
/// A model name as requests use it: a base model, a fine-tuned model (base + adapter) or a checkpoint of a job
/// (base + the adapter saved at that step). <see cref="AdapterKey"/> identifies the adapter weights for caching.
/// </summary>
public sealed record ResolvedModel(BaseModel Base, string? AdapterKey, string? AdapterBlobPath);

public static class ModelResolver
{
    public static async Task<ResolvedModel?> ResolveAsync(ServiceDbContext db, string name, CancellationToken cancel)
    {
        string? baseId = name, key = null, blobPath = null;
        if (name.StartsWith("ft:", StringComparison.Ordinal))
        {
            if (await db.Adapters.AsNoTracking().SingleOrDefaultAsync(a => a.Name == name, cancel) is { } adapter)
                (baseId, key, blobPath) = (adapter.BaseModel, adapter.Id, adapter.BlobPath);
            else if (await db.Checkpoints.AsNoTracking().SingleOrDefaultAsync(c => c.Name == name && db.Jobs.Any(j => j.Id == c.JobId), cancel) is { } checkpoint)
                (baseId, key, blobPath) = (checkpoint.BaseModel, checkpoint.Id, checkpoint.BlobPath);
            else return null;
        }
        var baseModel = await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == baseId, cancel);
        return baseModel is null ? null : new ResolvedModel(baseModel, key, blobPath);
    }
}
