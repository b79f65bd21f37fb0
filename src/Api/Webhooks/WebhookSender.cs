using System.Text;
using System.Text.Json;
using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Webhooks;

/// <summary>
/// Sends the webhook outbox: every pending delivery whose time has come is claimed (a conditional update, so two API
/// processes never send the same attempt), POSTed with OpenAI's event body and the Standard Webhooks headers, and
/// recorded: delivered on a 2xx answer; otherwise retried after <see cref="WebhookOptions.RetryDelay"/> until
/// <see cref="WebhookOptions.MaxAttempts"/>, then failed. Redirects are not followed (a 3xx is a failed attempt).
/// </summary>
public sealed class WebhookSender(IServiceScopeFactory scopes, WebhookOptions options, WebhookTargets targets, WebhookSecrets secrets,
    ILogger<WebhookSender> log) : BackgroundService
{
    const int Batch = 16;

    readonly HttpClient http = new(new SocketsHttpHandler
    {
        AllowAutoRedirect = false, UseProxy = false, ConnectCallback = targets.ConnectAsync,
        PooledConnectionLifetime = TimeSpan.FromMinutes(1),   // a host's addresses are checked again on each new connection
    })
    {
        Timeout = TimeSpan.FromSeconds(options.TimeoutSeconds),
        DefaultRequestHeaders = { { "User-Agent", "AdapterService-Webhooks/1" } },
    };

    static long NowMs() => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(options.PollSeconds));
        while (await timer.WaitForNextTickAsync(stop))
        {
            try
            {
                while (await SendDueAsync(stop) == Batch) { }   // a backlog goes out without waiting for the next tick
            }
            catch (Exception e) when (!stop.IsCancellationRequested)
            {
                log.LogWarning(e, "Sending webhooks failed; retrying");
            }
        }
    }

    /// <summary>Sends the deliveries due now (at most one batch, concurrently); returns how many it claimed.</summary>
    async Task<int> SendDueAsync(CancellationToken stop)
    {
        using var scope = scopes.CreateScope();
        var db = scope.ServiceProvider.GetRequiredService<ServiceDbContext>();
        long now = NowMs();
        var due = await db.WebhookDeliveries.AsNoTracking().Where(d => d.Status == WebhookEvents.Pending && d.NextAttemptAt <= now)
            .OrderBy(d => d.NextAttemptAt).Take(Batch).ToListAsync(stop);
        // Held for longer than an attempt can take: a process that dies mid-attempt leaves it to be sent again then.
        long heldUntil = now + (long)(options.TimeoutSeconds * 1000) + 30_000;
        var claimed = new List<(WebhookDelivery Delivery, WebhookEndpoint? Endpoint)>();
        foreach (var delivery in due)
        {
            if (await db.WebhookDeliveries.Where(d => d.Id == delivery.Id && d.Status == WebhookEvents.Pending && d.NextAttemptAt == delivery.NextAttemptAt)
                    .ExecuteUpdateAsync(s => s.SetProperty(d => d.NextAttemptAt, heldUntil), stop) == 0) continue;
            claimed.Add((delivery, await db.WebhookEndpoints.IgnoreQueryFilters().AsNoTracking().SingleOrDefaultAsync(e => e.Id == delivery.EndpointId, stop)));
        }
        var outcomes = await Task.WhenAll(claimed.Select(c => AttemptAsync(c.Delivery, c.Endpoint, stop)));
        foreach (var ((delivery, endpoint), (status, error)) in claimed.Zip(outcomes))
        {
            if (endpoint is null)
            {
                await db.WebhookDeliveries.Where(d => d.Id == delivery.Id).ExecuteDeleteAsync(stop);   // its endpoint was deleted meanwhile
                continue;
            }
            int attempts = delivery.Attempts + 1;
            long at = NowMs();
            bool delivered = status is >= 200 and < 300;
            bool givenUp = !delivered && attempts >= options.MaxAttempts;
            long? next = delivered || givenUp ? null : at + (long)options.RetryDelay(attempts).TotalMilliseconds;
            await db.WebhookDeliveries.Where(d => d.Id == delivery.Id).ExecuteUpdateAsync(s => s
                .SetProperty(d => d.Attempts, attempts)
                .SetProperty(d => d.LastStatusCode, status)
                .SetProperty(d => d.LastError, error)
                .SetProperty(d => d.Status, delivered ? WebhookEvents.Delivered : givenUp ? WebhookEvents.Failed : WebhookEvents.Pending)
                .SetProperty(d => d.NextAttemptAt, next)
                .SetProperty(d => d.DeliveredAt, delivered ? at : null), stop);
            if (!delivered)
                log.LogInformation("Webhook {EventId} ({Type}) to endpoint {EndpointId}: attempt {Attempts} failed ({Error}){Next}", delivery.EventId,
                    delivery.Type, delivery.EndpointId, attempts, error, givenUp ? "; given up" : "");
        }
        return due.Count;
    }

    /// <summary>One POST of the event: the answer's status code, or the error that kept it from answering (or from 2xx).</summary>
    async Task<(int? Status, string? Error)> AttemptAsync(WebhookDelivery delivery, WebhookEndpoint? endpoint, CancellationToken stop)
    {
        if (endpoint is null) return (null, null);
        if (await targets.RefusalAsync(endpoint.Url, stop) is { } refusal) return (null, refusal);   // the settings may have changed since
        string secret;
        try
        {
            secret = secrets.Unprotect(endpoint.ProtectedSecret);
        }
        catch (System.Security.Cryptography.CryptographicException)
        {
            return (null, "the endpoint's secret cannot be decrypted with this server's Data Protection keys; create the endpoint again");
        }
        string body = Body(delivery);
        long timestamp = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        using var request = new HttpRequestMessage(HttpMethod.Post, endpoint.Url) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.Add("webhook-id", delivery.EventId);
        request.Headers.Add("webhook-timestamp", timestamp.ToString(System.Globalization.CultureInfo.InvariantCulture));
        request.Headers.Add("webhook-signature", WebhookSecrets.Sign(secret, delivery.EventId, timestamp, body));
        try
        {
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, stop);
            int status = (int)response.StatusCode;
            return (status, status is >= 200 and < 300 ? null : status is >= 300 and < 400 ? $"redirect ({status}) not followed" : $"answered {status}");
        }
        catch (TaskCanceledException) when (!stop.IsCancellationRequested)
        {
            return (null, $"no answer within {options.TimeoutSeconds:0.#} s");
        }
        catch (HttpRequestException e)
        {
            return (null, e.Message);
        }
    }

    /// <summary>OpenAI's event object: <c>{"object": "event", "id", "type", "created_at", "data": {"id"}}</c>.</summary>
    public static string Body(WebhookDelivery delivery) => JsonSerializer.Serialize(new
    {
        @object = "event", id = delivery.EventId, type = delivery.Type, created_at = delivery.CreatedAt, data = new { id = delivery.DataId },
    });

    public override void Dispose()
    {
        http.Dispose();
        base.Dispose();
    }
}
