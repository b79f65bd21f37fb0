using System.Net;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Infrastructure;

/// <summary>
/// <c>Security:*</c> settings for browsers. <see cref="AllowedHosts"/>: <c>Host</c> names answered with auth off besides
/// <c>localhost</c> and loopback addresses. <see cref="AllowedOrigins"/>: origins (<c>https://app.example</c>) besides the
/// service's own whose pages may call it.
/// </summary>
public sealed class BrowserOptions
{
    public string[] AllowedHosts { get; set; } = [];
    public string[] AllowedOrigins { get; set; } = [];
}

/// <summary>
/// Without an admin key every caller is admin, so a web page must not be able to reach the service through a browser:
/// DNS rebinding arrives with a foreign <c>Host</c>, a cross-site form post or fetch with a foreign <c>Origin</c> or
/// <c>Sec-Fetch-Site: cross-site</c>. Those are refused; curl and the SDKs send neither header and are unaffected. With
/// auth on the key is the protection (browsers never send it on their own: it is a Bearer header, not a cookie), and
/// only the hub's WebSocket upgrade, which browsers open from any page, is held to the origin.
/// </summary>
public static class BrowserGuard
{
    public static IServiceCollection AddBrowserGuard(this IServiceCollection services, IConfiguration configuration) =>
        services.Configure<BrowserOptions>(configuration.GetSection("Security"));

    public static IApplicationBuilder UseBrowserGuard(this IApplicationBuilder app)
    {
        var auth = app.ApplicationServices.GetRequiredService<IOptions<AuthOptions>>().Value;
        var options = app.ApplicationServices.GetRequiredService<IOptions<BrowserOptions>>().Value;
        return app.Use(async (context, next) =>
        {
            var request = context.Request;
            bool upgrade = context.WebSockets.IsWebSocketRequest;
            if (!auth.Enabled && !IsAllowedHost(request.Host, options))
            {
                await OpenAiErrors.Error(StatusCodes.Status400BadRequest,
                    $"The Host '{request.Host}' is not answered: without API keys this service answers only localhost and loopback addresses (add names to Security:AllowedHosts, or turn auth on).",
                    null, "host_not_allowed").ExecuteAsync(context);
                return;
            }
            if ((!auth.Enabled || upgrade) && CrossSiteReason(request, options) is { } reason)
            {
                await OpenAiErrors.Error(StatusCodes.Status403Forbidden,
                    $"Cross-site requests are refused ({reason}): {(auth.Enabled ? "the hub" : "without API keys, this service")} answers pages of its own origin only (add origins to Security:AllowedOrigins).",
                    null, "cross_site_request").ExecuteAsync(context);
                return;
            }
            await next(context);
        });
    }

    public static bool IsAllowedHost(HostString host, BrowserOptions options)
    {
        if (!host.HasValue) return true;   // HTTP/1.0 without Host: no browser sends that
        var name = host.Host.TrimEnd('.');
        if (name.StartsWith('[') && name.EndsWith(']')) name = name[1..^1];
        return name.Equals("localhost", StringComparison.OrdinalIgnoreCase)
               || name.EndsWith(".localhost", StringComparison.OrdinalIgnoreCase)   // RFC 6761: always loopback
               || IPAddress.TryParse(name, out var ip) && IPAddress.IsLoopback(ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4() : ip)
               || options.AllowedHosts.Contains(name, StringComparer.OrdinalIgnoreCase);
    }

    /// <summary>Why the request comes from another site's page, or null: a foreign <c>Origin</c>, or <c>Sec-Fetch-Site: cross-site</c>.</summary>
    public static string? CrossSiteReason(HttpRequest request, BrowserOptions options)
    {
        if (request.Headers["Sec-Fetch-Site"].ToString().Equals("cross-site", StringComparison.OrdinalIgnoreCase)) return "Sec-Fetch-Site: cross-site";
        var origin = request.Headers.Origin.ToString();
        if (origin.Length == 0) return null;
        string own = $"{request.Scheme}://{request.Host}";
        bool allowed = origin.Equals(own, StringComparison.OrdinalIgnoreCase)
                       || options.AllowedOrigins.Any(o => origin.Equals(o.TrimEnd('/'), StringComparison.OrdinalIgnoreCase));
        return allowed ? null : $"Origin {origin}";
    }
}
