using AdapterService.Api.Infrastructure;
using AdapterService.Api.Webhooks;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Apis;

/// <param name="Url" example="https://hooks.example.com/openai">Where events are POSTed: https (http only where the server allows it), a host webhooks may reach.</param>
/// <param name="Events" example="[&quot;fine_tuning.job.succeeded&quot;, &quot;fine_tuning.job.failed&quot;]">The event types to receive; omitted: all of them.</param>
/// <param name="Description" example="CI notifications">A label, up to 512 characters.</param>
public sealed record CreateWebhookRequest(string? Url, List<string>? Events, string? Description);

/// <summary>A webhook endpoint. <c>secret</c> (<c>whsec_…</c>, for verifying signatures) is set once, in the answer that creates it.</summary>
public sealed record WebhookEndpointDto(string Id, string Object, string Url, IReadOnlyList<string> Events, string? Description, long CreatedAt, string? Secret = null);

public sealed record WebhookEventData(string Id);

/// <summary>
/// One event sent (or being sent) to an endpoint: <c>status</c> <c>pending</c> (with <c>next_attempt_at</c>),
/// <c>delivered</c> or <c>failed</c> (given up), its attempts and the last one's HTTP status or error.
/// </summary>
public sealed record WebhookDeliveryDto(string Id, string Object, string EventId, string Type, WebhookEventData Data, long CreatedAt, string Status,
    int Attempts, int? LastStatusCode, string? LastError, long? NextAttemptAt, long? DeliveredAt);

/// <summary>
/// A project's webhook endpoints (OpenAI configures them in its dashboard; this API is the service's own). Events use
/// OpenAI's types and body, signed as Standard Webhooks, so OpenAI's clients verify them (<c>client.webhooks.unwrap</c>).
/// </summary>
public static class WebhooksApi
{
    public static IEndpointRouteBuilder MapWebhooksApi(this IEndpointRouteBuilder app)
    {
        var webhooks = app.MapGroup("/v1/webhooks").WithTags("Webhooks");
        webhooks.MapPost("/", Create).WithName("createWebhookEndpoint").WithErrors(400, 401)
            .WithSummary("Create a webhook endpoint; the answer is the only place its signing `secret` appears");
        webhooks.MapGet("/", List).WithName("listWebhookEndpoints").WithErrors(401).WithSummary("List the project's webhook endpoints");
        webhooks.MapGet("/{webhookId}", Get).WithName("retrieveWebhookEndpoint").WithErrors(401, 404).WithSummary("Retrieve a webhook endpoint");
        webhooks.MapDelete("/{webhookId}", Delete).WithName("deleteWebhookEndpoint").WithErrors(401, 404)
            .WithSummary("Delete a webhook endpoint and its pending deliveries");
        webhooks.MapGet("/{webhookId}/deliveries", Deliveries).WithName("listWebhookDeliveries").WithErrors(400, 401, 404)
            .WithSummary("The endpoint's delivery log, newest first: each event's attempts, last status code and next retry");
        return app;
    }

    static WebhookEndpointDto ToDto(this WebhookEndpoint e, string? secret = null) =>
        new(e.Id, "webhook_endpoint", e.Url, e.EventList, e.Description, e.CreatedAt, secret);

    static WebhookDeliveryDto ToDto(this WebhookDelivery d) =>
        new(d.Id, "webhook.delivery", d.EventId, d.Type, new WebhookEventData(d.DataId), d.CreatedAt, d.Status, d.Attempts, d.LastStatusCode, d.LastError,
            Seconds(d.NextAttemptAt), Seconds(d.DeliveredAt));

    static long? Seconds(long? milliseconds) => milliseconds is { } ms ? (ms + 999) / 1000 : null;

    static async Task<Results<Ok<WebhookEndpointDto>, JsonHttpResult<ErrorResponse>>> Create(CreateWebhookRequest request, HttpContext context,
        ServiceDbContext db, WebhookTargets targets, WebhookSecrets secrets, CancellationToken cancel)
    {
        if (await targets.RefusalAsync(request.Url, cancel) is { } refusal) return OpenAiErrors.BadRequest(refusal, "url");
        var events = request.Events ?? [.. WebhookEvents.All.Order(StringComparer.Ordinal)];
        if (events.Count == 0) return OpenAiErrors.BadRequest("events must name at least one event type (or be left out for all of them).", "events");
        for (int i = 0; i < events.Count; i++)
            if (events[i] is not { } type || !WebhookEvents.All.Contains(type))
                return OpenAiErrors.BadRequest($"events[{i}]: unknown event type '{events[i]}'; one of {string.Join(", ", WebhookEvents.All.Order(StringComparer.Ordinal))}.", "events");
        if (request.Description is { Length: > 512 }) return OpenAiErrors.BadRequest("description must be up to 512 characters.", "description");
        var secret = WebhookSecrets.New();
        var endpoint = new WebhookEndpoint
        {
            Id = "wh_" + Ids.New(), ProjectId = context.User.ProjectId() ?? Project.DefaultId, Url = request.Url!,
            Events = string.Join(' ', events.Distinct()), Description = request.Description, ProtectedSecret = secrets.Protect(secret),
            CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
        };
        db.WebhookEndpoints.Add(endpoint);
        await db.SaveChangesAsync(cancel);
        return TypedResults.Ok(endpoint.ToDto(secret));
    }

    static async Task<Ok<ListResponse<WebhookEndpointDto>>> List(ServiceDbContext db, CancellationToken cancel) =>
        TypedResults.Ok(new ListResponse<WebhookEndpointDto>("list",
            (await db.WebhookEndpoints.AsNoTracking().OrderBy(e => e.CreatedAt).ThenBy(e => e.Id).ToListAsync(cancel)).Select(e => e.ToDto()).ToList(), false));

    static async Task<Results<Ok<WebhookEndpointDto>, JsonHttpResult<ErrorResponse>>> Get(string webhookId, ServiceDbContext db, CancellationToken cancel) =>
        await db.WebhookEndpoints.AsNoTracking().SingleOrDefaultAsync(e => e.Id == webhookId, cancel) is { } endpoint
            ? TypedResults.Ok(endpoint.ToDto())
            : NoEndpoint(webhookId);

    static async Task<Results<Ok<DeletedDto>, JsonHttpResult<ErrorResponse>>> Delete(string webhookId, ServiceDbContext db, CancellationToken cancel)
    {
        if (await db.WebhookEndpoints.Where(e => e.Id == webhookId).ExecuteDeleteAsync(cancel) != 1) return NoEndpoint(webhookId);
        await db.WebhookDeliveries.Where(d => d.EndpointId == webhookId).ExecuteDeleteAsync(cancel);
        return TypedResults.Ok(new DeletedDto(webhookId, "webhook_endpoint.deleted", true));
    }

    /// <summary>The delivery log; <c>limit</c>: how many deliveries, 1 to 100 (default 20).</summary>
    static async Task<Results<Ok<ListResponse<WebhookDeliveryDto>>, JsonHttpResult<ErrorResponse>>> Deliveries(string webhookId, int? limit,
        ServiceDbContext db, CancellationToken cancel)
    {
        if (limit is < 1 or > 100) return OpenAiErrors.BadRequest("limit must be between 1 and 100.", "limit");
        if (!await db.WebhookEndpoints.AnyAsync(e => e.Id == webhookId, cancel)) return NoEndpoint(webhookId);
        int take = limit ?? 20;
        var rows = await db.WebhookDeliveries.AsNoTracking().Where(d => d.EndpointId == webhookId)
            .OrderByDescending(d => d.CreatedAt).ThenByDescending(d => d.Id).Take(take + 1).ToListAsync(cancel);
        return TypedResults.Ok(new ListResponse<WebhookDeliveryDto>("list", rows.Take(take).Select(d => d.ToDto()).ToList(), rows.Count > take));
    }

    static JsonHttpResult<ErrorResponse> NoEndpoint(string webhookId) => OpenAiErrors.NotFound($"No such webhook endpoint: {webhookId}", "webhook_id");
}
