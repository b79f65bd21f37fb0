using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using AdapterService.Core.Storage;
using AdapterService.Core.Telemetry;

namespace AdapterService.Core.Jobs;

/// <summary>
/// A training step's numbers: the one record that goes from the job's run to the browser. It is stored as the data of a
/// metrics event (snake_case, without the job id, which the event row holds) and pushed to SignalR clients as
/// <c>progress</c> (camelCase) as it is. <see cref="ValidLoss"/> is set at the end of each epoch when the job has a
/// validation file; <see cref="Adapter"/> holds what the adapter method reports (Lily's router weights, say), and
/// <see cref="Objective"/> what the training objective measures beyond loss and accuracy (DPO's reward margin, say), and
/// <see cref="Worker"/> the training process's CPU and memory at that step.
/// </summary>
public sealed record ProgressMessage(
    string JobId, int Step, int TotalSteps, int Epoch, double TrainLoss, double TrainMeanTokenAccuracy, double? ValidLoss,
    double? ValidMeanTokenAccuracy, double LearningRate, double TokensPerSecond, double EtaSeconds, object? Adapter = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] IReadOnlyDictionary<string, double>? Objective = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] WorkerStats? Worker = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int? SweepMember = null);

/// <summary>A job's new status (<c>status</c> message); error set when it failed.</summary>
public sealed record StatusMessage(string JobId, string Status, string? FineTunedModel, string? Error);

/// <summary>
/// The data of job events. Every live message is first a persisted event (whichever process wrote it); the API's relay
/// turns new events into SignalR messages, so a browser on any API process sees every worker's progress.
/// </summary>
public static class JobEventData
{
    /// <summary>The stored form of <see cref="ProgressMessage"/>: snake_case, the job id left out (the event's row has it).</summary>
    static readonly JsonSerializerOptions Stored = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        TypeInfoResolver = new DefaultJsonTypeInfoResolver
        {
            Modifiers =
            {
                info =>
                {
                    if (info.Type != typeof(ProgressMessage)) return;
                    foreach (var property in info.Properties.Where(p => p.Name == "job_id")) property.ShouldSerialize = (_, _) => false;
                },
            },
        },
    };

    /// <summary>A step's metrics as stored: <c>{"step": …, "total_steps": …, …, "adapter": …}</c>.</summary>
    public static string ForMetrics(ProgressMessage progress) => JsonSerializer.Serialize(progress, Stored);

    /// <summary>Data of an event that changes the job's status: <c>{"status": …, "fine_tuned_model": …, "error": …}</c>.</summary>
    public static string ForStatus(string status, string? fineTunedModel = null, string? error = null) =>
        JsonSerializer.Serialize(new { status, fine_tuned_model = fineTunedModel, error });

    /// <summary>The live message an event stands for, if any.</summary>
    public static object? ToMessage(JobEvent e)
    {
        if (e.Data is null) return null;
        if (e.Type == "metrics" && JsonSerializer.Deserialize<ProgressMessage>(e.Data, Stored) is { } progress)
            return progress with { JobId = e.JobId };
        using var doc = JsonDocument.Parse(e.Data);
        return doc.RootElement.TryGetProperty("status", out var status)
            ? new StatusMessage(e.JobId, status.GetString()!, Text(doc.RootElement, "fine_tuned_model"), Text(doc.RootElement, "error"))
            : null;
    }

    static string? Text(JsonElement element, string name) =>
        element.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString() : null;
}
