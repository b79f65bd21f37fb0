using System.Text.Json;
using AdapterService.Core.Storage;

namespace AdapterService.Core.Jobs;

/// <summary>
/// A training step's numbers, as pushed to SignalR clients (<c>progress</c>) and stored in metrics events;
/// <see cref="ValidLoss"/> is set at the end of each epoch when the job has a validation file.
/// </summary>
public sealed record ProgressMessage(
    string JobId, int Step, int TotalSteps, int Epoch, double TrainLoss, double LearningRate, double TokensPerSecond, double EtaSeconds,
    double? ValidLoss = null);

/// <summary>A job's new status (<c>status</c> message); error set when it failed.</summary>
public sealed record StatusMessage(string JobId, string Status, string? FineTunedModel, string? Error);

/// <summary>
/// The data of job events. Every live message is first a persisted event (whichever process wrote it); the API's relay
/// turns new events into SignalR messages, so a browser on any API process sees every worker's progress.
/// </summary>
public static class JobEventData
{
    static readonly JsonSerializerOptions SnakeCase = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    sealed record Metrics(int Step, int TotalSteps, int Epoch, double TrainLoss, double TrainMeanTokenAccuracy, double? ValidLoss,
        double? ValidMeanTokenAccuracy, double LearningRate, double TokensPerSecond, double EtaSeconds, object? Adapter = null);

    sealed record Status(string StatusName, string? FineTunedModel, string? Error);

    /// <summary>A step's metrics; <paramref name="adapter"/> holds what the adapter method reports (Lily's router weights, say).</summary>
    public static string ForMetrics(ProgressMessage m, double trainAccuracy, double? validAccuracy, object? adapter = null) => JsonSerializer.Serialize(
        new Metrics(m.Step, m.TotalSteps, m.Epoch, m.TrainLoss, trainAccuracy, m.ValidLoss, validAccuracy, m.LearningRate, m.TokensPerSecond, m.EtaSeconds, adapter),
        SnakeCase);

    /// <summary>Data of an event that changes the job's status: <c>{"status": …, "fine_tuned_model": …, "error": …}</c>.</summary>
    public static string ForStatus(string status, string? fineTunedModel = null, string? error = null) =>
        JsonSerializer.Serialize(new { status, fine_tuned_model = fineTunedModel, error });

    /// <summary>The live message an event stands for, if any.</summary>
    public static object? ToMessage(JobEvent e)
    {
        if (e.Data is null) return null;
        if (e.Type == "metrics" && JsonSerializer.Deserialize<Metrics>(e.Data, SnakeCase) is { } m)
            return new ProgressMessage(e.JobId, m.Step, m.TotalSteps, m.Epoch, m.TrainLoss, m.LearningRate, m.TokensPerSecond, m.EtaSeconds, m.ValidLoss);
        using var doc = JsonDocument.Parse(e.Data);
        return doc.RootElement.TryGetProperty("status", out var status)
            ? new StatusMessage(e.JobId, status.GetString()!, Text(doc.RootElement, "fine_tuned_model"), Text(doc.RootElement, "error"))
            : null;
    }

    static string? Text(JsonElement element, string name) =>
        element.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString() : null;
}
