using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterService.Api.Infrastructure;

/// <summary>
/// The API's side of <see cref="QuotaOptions"/>: an upload, an adapter import or combination, and a job creation are
/// refused with 413 <c>quota_exceeded</c> when they would pass a project's quota. 413 rather than 429: the OpenAI SDKs
/// retry a 429 on their own, and waiting does not free space.
/// </summary>
public static class Quotas
{
    /// <summary>The refusal when <paramref name="adding"/> bytes of <paramref name="kind"/> would pass the project's quota, else null.</summary>
    public static async Task<JsonHttpResult<ErrorResponse>?> RefuseAsync(ServiceDbContext db, IBlobStore blobs, QuotaOptions quotas, string projectId,
        string kind, long adding, CancellationToken cancel)
    {
        var usage = await StorageUsage.OfAsync(db, blobs, projectId, cancel);
        var (used, limit) = Of(usage, quotas, kind);
        return StorageUsage.Exceeded(kind, used, adding, limit) is { } over ? Refusal(over) : null;
    }

    /// <summary>
    /// Job creation: refused while the project's adapters or checkpoints are at their quota already, since the job's
    /// adapter and checkpoints would have nowhere to go.
    /// </summary>
    public static async Task<JsonHttpResult<ErrorResponse>?> RefuseJobAsync(ServiceDbContext db, IBlobStore blobs, QuotaOptions quotas, string projectId, CancellationToken cancel)
    {
        var usage = await StorageUsage.OfAsync(db, blobs, projectId, cancel);
        foreach (var kind in new[] { "adapters", "checkpoints" })
        {
            var (used, limit) = Of(usage, quotas, kind);
            if (limit > 0 && used >= limit)
                return Refusal($"This project's {kind} take {used:N0} bytes, its whole quota of {limit:N0} bytes, so a new job's {(kind == "adapters" ? "model" : "checkpoints")} could not be kept. Delete some {kind} or ask for a larger quota.");
        }
        return null;
    }

    static (long Used, long Limit) Of(StorageUsage usage, QuotaOptions quotas, string kind) => kind switch
    {
        "files" => (usage.FileBytes, quotas.MaxFileBytes),
        "adapters" => (usage.AdapterBytes, quotas.MaxAdapterBytes),
        "checkpoints" => (usage.CheckpointBytes, quotas.MaxCheckpointBytes),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "not a storage kind"),
    };

    static JsonHttpResult<ErrorResponse> Refusal(string message) =>
        OpenAiErrors.Error(StatusCodes.Status413PayloadTooLarge, message, null, "quota_exceeded");
}
