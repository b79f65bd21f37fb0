using System.Net;
using System.Security.Claims;
using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using AdapterService.Core.Storage;
using Hangfire.Dashboard;
using Microsoft.AspNetCore.Authentication;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Infrastructure;

/// <summary>
/// <c>Auth:AdminKey</c> (env <c>Auth__AdminKey</c>). Set, it turns auth on: every /v1 route and the hub need a key
/// (the admin key or a project's). Unset, everything belongs to the default project and the service listens on
/// loopback only.
/// </summary>
public sealed class AuthOptions
{
    public string? AdminKey { get; set; }
    public bool Enabled => !string.IsNullOrEmpty(AdminKey);

    /// <summary>Compares hashes in constant time, so the answer's timing says nothing about how much of a guess was right.</summary>
    public bool IsAdminKey(string key) =>
        Enabled && CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(key)), SHA256.HashData(Encoding.UTF8.GetBytes(AdminKey!)));
}

public static class Auth
{
    public const string Scheme = "ApiKey";
    /// <summary>Any valid key: the caller acts in its project.</summary>
    public const string ProjectPolicy = "project";
    public const string AdminPolicy = "admin";
    public const string AdminRole = "admin";
    const string ProjectClaim = "project_id";
    const string KeyClaim = "key_id";

    /// <summary>The project a request acts in (null before authentication succeeded).</summary>
    public static string? ProjectId(this ClaimsPrincipal user) => user.FindFirst(ProjectClaim)?.Value;

    /// <summary>The id of the project key a request authenticated with (null for the admin key and with auth off).</summary>
    public static string? KeyId(this ClaimsPrincipal user) => user.FindFirst(KeyClaim)?.Value;

    public static string KeyHash(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    /// <summary>A new secret: <c>sk-proj-</c> and 48 random letters and digits (about 285 bits).</summary>
    public static string NewKey() => "sk-proj-" + Ids.New() + Ids.New();

    public static ClaimsPrincipal Principal(string projectId, bool admin, string? keyId = null)
    {
        List<Claim> claims = [new(ProjectClaim, projectId)];
        if (keyId is not null) claims.Add(new Claim(KeyClaim, keyId));
        if (admin) claims.Add(new Claim(ClaimTypes.Role, AdminRole));
        return new ClaimsPrincipal(new ClaimsIdentity(claims, Scheme));
    }

    public static void AddApiKeyAuth(this IServiceCollection services, IConfiguration configuration)
    {
        services.Configure<AuthOptions>(configuration.GetSection("Auth"));
        services.AddAuthentication(Scheme).AddScheme<AuthenticationSchemeOptions, ApiKeyHandler>(Scheme, null);
        services.AddAuthorizationBuilder()
            .AddPolicy(ProjectPolicy, p => p.RequireAuthenticatedUser())
            .AddPolicy(AdminPolicy, p => p.RequireRole(AdminRole));
    }

    /// <summary>
    /// Without an admin key the service must not be reachable from other machines: a non-loopback address in the
    /// configured URLs stops the start with this message.
    /// </summary>
    public static void RequireLoopbackWithoutKeys(IConfiguration configuration)
    {
        if (configuration.GetSection("Auth").Get<AuthOptions>() is { Enabled: true }) return;
        var urls = (configuration["urls"] ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries)
            .Concat(configuration.GetSection("Kestrel:Endpoints").GetChildren().Select(e => e["Url"] ?? ""));
        var open = urls.Where(url => !IsLoopback(url)).ToList();
        if (open.Count > 0)
            throw new InvalidOperationException(
                $"Refusing to listen on {string.Join(", ", open)} without API keys: set Auth:AdminKey (env Auth__AdminKey) to turn auth on, or listen on a loopback address such as http://127.0.0.1:5080.");
    }

    /// <summary>
    /// The configured URLs are not all that decides where Kestrel listens (<c>ASPNETCORE_HTTP_PORTS</c>, which
    /// Microsoft's container images set, binds <c>*:PORT</c> when <c>Urls</c> is empty; code can add endpoints too).
    /// So without an admin key this also (1) drops, before any byte of HTTP is read, every connection that did not
    /// arrive on a loopback address, and (2) once the server has started, reads the addresses it actually bound and
    /// stops the service, exit code 1, if one is not loopback.
    /// </summary>
    public static void RefuseOpenListenersWithoutKeys(this WebApplicationBuilder builder)
    {
        if (builder.Configuration.GetSection("Auth").Get<AuthOptions>() is { Enabled: true }) return;
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.ConfigureEndpointDefaults(listen => listen.Use(next => connection =>
        {
            if (connection.LocalEndPoint is IPEndPoint { Address: var local } && !IsLoopback(local))
            {
                connection.Abort();
                return Task.CompletedTask;
            }
            return next(connection);
        })));
    }

    /// <summary>
    /// The bound addresses (<see cref="Microsoft.AspNetCore.Hosting.Server.Features.IServerAddressesFeature"/>) that are
    /// not loopback, when auth is off; a Unix socket is local and passes.
    /// </summary>
    public static IReadOnlyList<string> OpenListeners(IEnumerable<string> boundAddresses, AuthOptions auth) =>
        auth.Enabled ? [] : boundAddresses.Where(a => !a.StartsWith("http://unix:", StringComparison.OrdinalIgnoreCase)
                                                      && !a.StartsWith("https://unix:", StringComparison.OrdinalIgnoreCase) && !IsLoopback(a)).ToList();

    public static string OpenListenersMessage(IEnumerable<string> open) =>
        $"Refusing to serve: the server listens on {string.Join(", ", open)} without API keys. Set Auth:AdminKey (env Auth__AdminKey) to turn auth on, or listen on a loopback address only (Urls=http://127.0.0.1:5080; an empty Urls with ASPNETCORE_HTTP_PORTS set listens on every interface).";

    static bool IsLoopback(IPAddress ip) => IPAddress.IsLoopback(ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4() : ip);

    static bool IsLoopback(string url)
    {
        var host = url.Split("://", 2)[^1].Split('/')[0];
        host = host.StartsWith('[') ? host[1..host.IndexOf(']')] : host.Split(':')[0];
        return host.Length == 0 || host == "localhost" || IPAddress.TryParse(host, out var ip) && IsLoopback(ip);
    }
}

/// <summary>
/// Reads <c>Authorization: Bearer KEY</c> (or <c>access_token</c> in the query for the hub, where browsers' WebSockets
/// cannot send headers). The admin key acts in the default project with the admin role; a project key, found by its
/// hash, acts in its project. With auth off every caller acts in the default project as admin.
/// </summary>
public sealed class ApiKeyHandler(
    IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder, IOptions<AuthOptions> auth, ServiceDbContext db)
    : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
{
    protected override async Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        if (!auth.Value.Enabled) return Success(Auth.Principal(Project.DefaultId, admin: true));
        var key = KeyOf(Request);
        if (key is null) return AuthenticateResult.NoResult();
        if (auth.Value.IsAdminKey(key)) return Success(Auth.Principal(Project.DefaultId, admin: true));
        var hash = Auth.KeyHash(key);
        var found = await db.ApiKeys.AsNoTracking().Where(k => k.Hash == hash).Select(k => new { k.ProjectId, k.Id }).SingleOrDefaultAsync(Context.RequestAborted);
        return found is null ? AuthenticateResult.Fail("Incorrect API key provided.") : Success(Auth.Principal(found.ProjectId, admin: false, found.Id));
    }

    AuthenticateResult Success(ClaimsPrincipal user) => AuthenticateResult.Success(new AuthenticationTicket(user, Scheme.Name));

    static string? KeyOf(HttpRequest request)
    {
        var header = request.Headers.Authorization.ToString();
        if (header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)) return header["Bearer ".Length..].Trim() is { Length: > 0 } key ? key : null;
        return request.Path.StartsWithSegments("/hubs") && request.Query["access_token"].ToString() is { Length: > 0 } token ? token : null;
    }

    protected override async Task HandleChallengeAsync(AuthenticationProperties properties)
    {
        var message = KeyOf(Request) is null
            ? "You didn't provide an API key. Provide it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY)."
            : "Incorrect API key provided.";
        await OpenAiErrors.Error(StatusCodes.Status401Unauthorized, message, null, "invalid_api_key").ExecuteAsync(Context);
    }

    protected override async Task HandleForbiddenAsync(AuthenticationProperties properties) =>
        await OpenAiErrors.Error(StatusCodes.Status403Forbidden, "This endpoint needs the admin key.", null, "insufficient_permissions").ExecuteAsync(Context);
}

/// <summary>The Hangfire dashboard: with auth on, admin key only; with auth off, requests from this machine only.</summary>
public sealed class HangfireDashboardAuthorization(AuthOptions auth) : IDashboardAuthorizationFilter
{
    static readonly LocalRequestsOnlyAuthorizationFilter Local = new();

    public bool Authorize(DashboardContext context) =>
        auth.Enabled ? context.GetHttpContext().User.IsInRole(Auth.AdminRole) : Local.Authorize(context);
}
