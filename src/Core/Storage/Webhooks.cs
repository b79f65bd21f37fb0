using System.Collections.Frozen;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Storage;

/// <summary>
/// A project's webhook endpoint: where its events are POSTed. The signing secret is stored only as the API's
/// Data Protection ciphertext (<see cref="ProtectedSecret"/>); the plain <c>whsec_</c> value is shown once.
/// </summary>
public sealed class WebhookEndpoint
{
    public required string Id { get; init; }
    public required string ProjectId { get; init; }
    public required string Url { get; init; }
    /// <summary>The event types it receives, space-separated; empty: every type.</summary>
    public string Events { get; init; } = "";
    public string? Description { get; init; }
    public required string ProtectedSecret { get; init; }
    public long CreatedAt { get; init; }

    public IReadOnlyList<string> EventList => Events.Length == 0 ? [] : Events.Split(' ');
    public bool Receives(string type) => Events.Length == 0 || EventList.Contains(type);
}

/// <summary>
/// One event to one endpoint: the outbox row written in the same transaction as what it announces (so a crash cannot
/// lose it), then sent and retried by the API's sender, which records each attempt here (the delivery log).
/// </summary>
public sealed class WebhookDelivery
{
    public required string Id { get; init; }
    public required string EndpointId { get; init; }
    /// <summary>The event's id (<c>evt_…</c>), the same for every endpoint and every retry: receivers de-duplicate on it.</summary>
    public required string EventId { get; init; }
    public required string Type { get; init; }
    /// <summary>The object the event is about (a job's id): the payload's <c>data.id</c>.</summary>
    public required string DataId { get; init; }
    public long CreatedAt { get; init; }
    /// <summary><see cref="WebhookEvents.Pending"/>, <see cref="WebhookEvents.Delivered"/> or <see cref="WebhookEvents.Failed"/>.</summary>
    public string Status { get; set; } = WebhookEvents.Pending;
    public int Attempts { get; set; }
    public int? LastStatusCode { get; set; }
    public string? LastError { get; set; }
    /// <summary>When the next attempt is due (Unix milliseconds); null once delivered or given up.</summary>
    public long? NextAttemptAt { get; set; }
    public long? DeliveredAt { get; set; }
}

/// <summary>OpenAI's webhook event types this service sends, and the one way to publish an event.</summary>
public static class WebhookEvents
{
    public const string FineTuningJobSucceeded = "fine_tuning.job.succeeded";
    public const string FineTuningJobFailed = "fine_tuning.job.failed";
    public const string FineTuningJobCancelled = "fine_tuning.job.cancelled";
    public const string EvalRunSucceeded = "eval.run.succeeded";
    public const string EvalRunFailed = "eval.run.failed";
    public const string EvalRunCanceled = "eval.run.canceled";   // sic: OpenAI spells the eval one with one "l"

    public const string Pending = "pending", Delivered = "delivered", Failed = "failed";

    public static readonly FrozenSet<string> All = new[]
    {
        FineTuningJobSucceeded, FineTuningJobFailed, FineTuningJobCancelled, EvalRunSucceeded, EvalRunFailed, EvalRunCanceled,
    }.ToFrozenSet();

    /// <summary>The event a job's final status announces (null for a status that is not final).</summary>
    public static string? ForJobStatus(string status) => status switch
    {
        JobStatus.Succeeded => FineTuningJobSucceeded,
        JobStatus.Failed => FineTuningJobFailed,
        JobStatus.Cancelled => FineTuningJobCancelled,
        _ => null,
    };

    /// <summary>
    /// Adds one pending delivery of the event for each of the project's endpoints that receives <paramref name="type"/>.
    /// Nothing is saved here: the caller saves with the change the event announces, in its transaction, so the event is
    /// sent exactly when that change is committed. Eval runs call this with their <c>eval.run.*</c> types and run id.
    /// </summary>
    public static void Publish(ServiceDbContext db, string projectId, string type, string dataId, long createdAt)
    {
        if (!All.Contains(type)) throw new ArgumentException($"unknown webhook event type {type}", nameof(type));
        var endpoints = db.WebhookEndpoints.IgnoreQueryFilters().Where(e => e.ProjectId == projectId).ToList();
        string eventId = "evt_" + Ids.New();
        long due = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        foreach (var endpoint in endpoints.Where(e => e.Receives(type)))
            db.WebhookDeliveries.Add(new WebhookDelivery
            {
                Id = "whdel_" + Ids.New(), EndpointId = endpoint.Id, EventId = eventId, Type = type, DataId = dataId,
                CreatedAt = createdAt, NextAttemptAt = due,
            });
    }
}
