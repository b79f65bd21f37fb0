using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Storage;

/// <summary>
/// <c>Quotas:*</c>: the bytes one project may keep in the blob store, by kind. 0 turns a quota off. A project's
/// checkpoints are those of its jobs (the adapter folders saved at each epoch).
/// </summary>
public sealed class QuotaOptions
{
    public long MaxFileBytes { get; set; } = 16L << 30;
    public long MaxAdapterBytes { get; set; } = 16L << 30;
    public long MaxCheckpointBytes { get; set; } = 32L << 30;
}

/// <summary>What a project keeps, in bytes, against its quotas.</summary>
public sealed record StorageUsage(long FileBytes, long AdapterBytes, long CheckpointBytes)
{
    /// <summary>
    /// Read from the rows (files and adapters record their size) and, for checkpoints, from their folders. Query filters
    /// are ignored: the project is named, so a worker (no scope) and a request (its own scope) count alike.
    /// </summary>
    public static async Task<StorageUsage> OfAsync(ServiceDbContext db, IBlobStore blobs, string projectId, CancellationToken cancel = default)
    {
        long files = await db.Files.IgnoreQueryFilters().Where(f => f.ProjectId == projectId).SumAsync(f => (long?)f.Bytes, cancel) ?? 0;
        long adapters = await db.Adapters.IgnoreQueryFilters().Where(a => a.ProjectId == projectId).SumAsync(a => (long?)a.SizeBytes, cancel) ?? 0;
        var jobIds = db.Jobs.IgnoreQueryFilters().Where(j => j.ProjectId == projectId).Select(j => j.Id);
        var checkpoints = await db.Checkpoints.Where(c => jobIds.Contains(c.JobId)).Select(c => c.BlobPath).ToListAsync(cancel);
        return new StorageUsage(files, adapters, FolderBytes(blobs, checkpoints));
    }

    /// <summary>
    /// The checkpoint folders' sizes; one deleted meanwhile (retention, a job's deletion) counts nothing. A checkpoint's
    /// folder never changes once published (one rename, never written in place; a deleted one's path is never reused:
    /// it holds its job's id), so each folder is walked once per process and its size remembered: a save's quota check
    /// costs a query of paths, not a walk of every checkpoint of the project.
    /// </summary>
    public static long FolderBytes(IBlobStore blobs, IEnumerable<string> blobPaths)
    {
        long total = 0;
        foreach (var path in blobPaths)
        {
            var key = blobs.Resolve(path);
            if (folderSizes.TryGetValue(key, out var known))
            {
                total += known;
                continue;
            }
            try
            {
                long size = blobs.SizeOf(path);
                folderSizes.TryAdd(key, size);
                total += size;
            }
            catch (IOException) { }
        }
        return total;
    }

    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> folderSizes = new();

    /// <summary>
    /// The first quota that <paramref name="adding"/> more bytes of a kind would pass, as a sentence naming the kind,
    /// the usage and the limit; null when it fits. A quota of 0 is off.
    /// </summary>
    public static string? Exceeded(string kind, long used, long adding, long limit) =>
        limit > 0 && used + adding > limit
            ? $"This project's {kind} would take {used + adding:N0} bytes, over its quota of {limit:N0} bytes (it uses {used:N0}). Delete some {kind} or ask for a larger quota."
            : null;
}
