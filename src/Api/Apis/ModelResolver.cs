using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Apis;

/// <summary>A model name as requests use it: a base model, or a fine-tuned model (a base plus one adapter).</summary>
public sealed record ResolvedModel(BaseModel Base, Adapter? Adapter);

public static class ModelResolver
{
    public static async Task<ResolvedModel?> ResolveAsync(ServiceDbContext db, string name, CancellationToken cancel)
    {
        var adapter = name.StartsWith("ft:", StringComparison.Ordinal)
            ? await db.Adapters.AsNoTracking().SingleOrDefaultAsync(a => a.Name == name, cancel)
            : null;
        var baseId = adapter?.BaseModel ?? name;
        var baseModel = await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == baseId, cancel);
        return baseModel is null || name.StartsWith("ft:", StringComparison.Ordinal) && adapter is null ? null : new ResolvedModel(baseModel, adapter);
    }
}
