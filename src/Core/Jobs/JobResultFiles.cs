using System.Globalization;
using System.Text;
using System.Text.Json;
using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Jobs;

/// <summary>
/// OpenAI's <c>result_files</c>: when a job ends with steps behind it, a CSV of its step metrics is stored as a file of
/// purpose <c>fine-tune-results</c>. Its id is the job's own random part (<c>ftjob-X</c> → <c>file-X</c>), so the job
/// finds its result file without a column of its own, and a job written twice (a retried transition) keeps one file.
/// </summary>
/// <remarks>
/// The columns come from the metrics events' data: OpenAI's five first (<c>step, train_loss, train_accuracy,
/// valid_loss, valid_mean_token_accuracy</c>), then every other field in the order it first appears, nested objects
/// flattened as <c>adapter.name</c>. A new metric (a preference margin, a reward) is a new column without a change here.
/// A step without a value (validation runs at epochs' ends) leaves its cell empty, as OpenAI's file does.
/// </remarks>
public static class JobResultFiles
{
    public const string Purpose = "fine-tune-results";
    public const string FileName = "step_metrics.csv";

    /// <summary>OpenAI's columns, first and in its order, whether or not the job reported them.</summary>
    static readonly string[] OpenAiColumns = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"];

    /// <summary>Our metrics event names a field differently from OpenAI's CSV column.</summary>
    static readonly Dictionary<string, string> OpenAiNames = new() { ["train_mean_token_accuracy"] = "train_accuracy" };

    public static string IdOf(string jobId) => "file-" + jobId[(jobId.IndexOf('-') + 1)..];

    /// <summary>The CSV of the metrics events' data (the stored JSON objects), one row per step, the last report of a step winning.</summary>
    public static string Csv(IEnumerable<string> metricsData)
    {
        var rows = new SortedDictionary<long, Dictionary<string, string>>();
        var columns = new List<string>(OpenAiColumns);
        foreach (var data in metricsData)
        {
            using var document = JsonDocument.Parse(data);
            var row = new Dictionary<string, string>();
            Flatten(document.RootElement, "", row);
            if (!row.TryGetValue("step", out var step) || !long.TryParse(step, NumberStyles.Integer, CultureInfo.InvariantCulture, out long stepNumber)) continue;
            foreach (var name in row.Keys.Where(name => !columns.Contains(name))) columns.Add(name);
            rows[stepNumber] = row;
        }
        var csv = new StringBuilder().AppendJoin(',', columns.Select(Quote)).Append('\n');
        foreach (var row in rows.Values) csv.AppendJoin(',', columns.Select(c => Quote(row.GetValueOrDefault(c, "")))).Append('\n');
        return csv.ToString();
    }

    static void Flatten(JsonElement element, string prefix, Dictionary<string, string> row)
    {
        foreach (var property in element.EnumerateObject())
        {
            string name = prefix.Length == 0 ? OpenAiNames.GetValueOrDefault(property.Name, property.Name) : $"{prefix}.{property.Name}";
            var value = property.Value;
            switch (value.ValueKind)
            {
                case JsonValueKind.Object: Flatten(value, name, row); break;
                case JsonValueKind.Null or JsonValueKind.Undefined: break;
                case JsonValueKind.String: row[name] = value.GetString()!; break;
                default: row[name] = value.GetRawText(); break;   // numbers as stored (round-trip), booleans, arrays as JSON
            }
        }
    }

    static string Quote(string cell) =>
        cell.AsSpan().IndexOfAny(",\"\n\r") < 0 ? cell : $"\"{cell.Replace("\"", "\"\"")}\"";

    /// <summary>
    /// Writes the job's result file (blob now, row added to <paramref name="db"/> for the caller's transaction to save)
    /// when it has metrics and none yet; false when there is nothing to write.
    /// </summary>
    internal static bool Add(ServiceDbContext db, IBlobStore blobs, string jobId, string projectId)
    {
        string id = IdOf(jobId);
        if (db.Files.IgnoreQueryFilters().Any(f => f.Id == id)) return false;
        var data = db.JobEvents.Where(e => e.JobId == jobId && e.Type == "metrics" && e.Data != null).OrderBy(e => e.Id).Select(e => e.Data!).ToList();
        if (data.Count == 0) return false;
        var blobPath = BlobPaths.FilePath(id);
        long bytes = blobs.WriteAsync(blobPath, new MemoryStream(Encoding.UTF8.GetBytes(Csv(data))), CancellationToken.None).GetAwaiter().GetResult();
        db.Files.Add(new StoredFile
        {
            Id = id, ProjectId = projectId, Filename = FileName, Purpose = Purpose, Bytes = bytes, BlobPath = blobPath,
            CreatedAt = JobLifecycle.Now(),
        });
        return true;
    }
}
