using System.Globalization;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.RateLimiting;

namespace AdapterService.Api.Infrastructure;

/// <summary><c>Limits:*</c> settings: back-pressure per project (tenant).</summary>
public sealed class LimitsOptions
{
    /// <summary>Requests to /v1 per project and minute (a fixed window); 0 turns the limit off.</summary>
    public int RequestsPerMinute { get; set; } = 3000;
    /// <summary>Jobs a project may have validating, queued or running at once; creating one more answers 429.</summary>
    public int MaxActiveJobsPerProject { get; set; } = 16;
    /// <summary>Eval runs a project may have queued or in progress at once; a create that would pass it answers 429.</summary>
    public int MaxActiveEvalRunsPerProject { get; set; } = 16;
    /// <summary>Evals a project may keep.</summary>
    public int MaxEvalsPerProject { get; set; } = 1000;
    /// <summary>Examples (non-empty lines) a training or validation file may hold; also the most items an eval run may score.</summary>
    public int MaxTrainingExamples { get; set; } = 100_000;
    /// <summary>Tokens of one epoch of a job's training file (after cutting examples to the context length).</summary>
    public long MaxTrainingTokens { get; set; } = 50_000_000;
    /// <summary>The largest request body other than uploads (JSON bodies), enforced by Kestrel.</summary>
    public long MaxRequestBodyBytes { get; set; } = 8L << 20;
}

public static class Limits
{
    public static void AddLimits(this WebApplicationBuilder builder)
    {
        var limits = builder.Configuration.GetSection("Limits").Get<LimitsOptions>() ?? new LimitsOptions();
        builder.Services.Configure<LimitsOptions>(builder.Configuration.GetSection("Limits"));
        // Uploads raise this for their own request, up to Files:MaxUploadBytes.
        builder.WebHost.ConfigureKestrel(o => o.Limits.MaxRequestBodySize = limits.MaxRequestBodyBytes);
        builder.Services.AddRateLimiter(o =>
        {
            o.GlobalLimiter = PartitionedRateLimiter.Create<HttpContext, string>(context =>
                limits.RequestsPerMinute > 0 && OpenAiErrors.IsApiRoute(context.Request.Path) && context.User.ProjectId() is { } project
                    ? RateLimitPartition.GetFixedWindowLimiter(project, _ => new FixedWindowRateLimiterOptions
                    {
                        PermitLimit = limits.RequestsPerMinute, Window = TimeSpan.FromMinutes(1), QueueLimit = 0,
                    })
                    : RateLimitPartition.GetNoLimiter(""));
            o.OnRejected = async (rejected, cancel) =>
            {
                int seconds = rejected.Lease.TryGetMetadata(MetadataName.RetryAfter, out var retry) ? Math.Max(1, (int)Math.Ceiling(retry.TotalSeconds)) : 60;
                rejected.HttpContext.Response.Headers.RetryAfter = seconds.ToString(CultureInfo.InvariantCulture);
                await OpenAiErrors.Error(StatusCodes.Status429TooManyRequests,
                    $"Rate limit reached: {limits.RequestsPerMinute} requests per minute for this project. Retry after {seconds} s.",
                    null, "rate_limit_exceeded").ExecuteAsync(rejected.HttpContext);
            };
        });
    }
}
