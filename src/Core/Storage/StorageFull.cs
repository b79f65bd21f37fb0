namespace AdapterService.Core.Storage;

/// <summary>
/// A write that failed for want of space: the one failure a full disk becomes, whoever wrote (the blob store, a trainer
/// saving its state into a folder the store publishes, the database). Its message names no server path. The API answers
/// it with 507 (<c>OpenAiErrors</c>), a fine-tuning worker pauses the job with it as the job's error (<c>FineTuningJobRunner</c>).
/// HResult stays 28 (ENOSPC), as the IOException it replaces had it.
/// </summary>
public sealed class StorageFullException : IOException
{
    public StorageFullException(Exception? cause = null) : base(Text, cause) => HResult = 28;

    public const string Text = "The server's storage is full; retry later.";

    /// <summary>The code a job carries while it waits for space (paused), and the error object's code.</summary>
    public const string Code = "storage_full";

    /// <summary>
    /// Whether <paramref name="error"/> or what it wraps is a full disk: this exception, ENOSPC (errno 28, kept as HResult
    /// by .NET's file APIs and by <see cref="Durable"/>), Windows' disk-full codes, SQLite's SQLITE_FULL or PostgreSQL's disk_full.
    /// </summary>
    public static bool IsCause(Exception? error)
    {
        for (var e = error; e is not null; e = e.InnerException)
            if (e is StorageFullException
                or IOException { HResult: 28 or unchecked((int)0x80070070) or unchecked((int)0x80070027) }
                or Microsoft.Data.Sqlite.SqliteException { SqliteErrorCode: 13 }
                or Npgsql.PostgresException { SqlState: "53100" })
                return true;
        if (error is AggregateException aggregate) return aggregate.InnerExceptions.Any(IsCause);
        return false;
    }

    /// <summary>Runs <paramref name="write"/>, turning a full disk into this exception (its cause kept for the logs).</summary>
    public static T Guard<T>(Func<T> write)
    {
        try
        {
            return write();
        }
        catch (Exception e) when (e is not StorageFullException && IsCause(e))
        {
            throw new StorageFullException(e);
        }
    }

    public static void Guard(Action write) => Guard(() => { write(); return 0; });

    public static async Task<T> GuardAsync<T>(Func<Task<T>> write)
    {
        try
        {
            return await write();
        }
        catch (Exception e) when (e is not StorageFullException && IsCause(e))
        {
            throw new StorageFullException(e);
        }
    }
}
