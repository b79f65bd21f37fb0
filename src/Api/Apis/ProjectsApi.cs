using System.Security.Claims;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Apis;

/// <summary>OpenAI's project object.</summary>
public sealed record ProjectDto(string Id, string Object, string Name, long CreatedAt, string Status);

/// <param name="Name" example="team-a">Up to 256 characters.</param>
public sealed record CreateProjectRequest(string? Name);

/// <param name="Name" example="ci">A label for the key, up to 256 characters (optional).</param>
public sealed record CreateApiKeyRequest(string? Name);

/// <summary>A project API key as listed: only its redacted value. <c>value</c> is set once, in the answer that creates it.</summary>
public sealed record ApiKeyDto(string Id, string Object, string Name, string RedactedValue, long CreatedAt, string ProjectId, string? Value = null);

/// <summary>Bytes a project keeps of one kind, and its quota (0: none).</summary>
public sealed record StorageAmountDto(long Bytes, long Limit);

/// <summary>What a project keeps in storage against its quotas (<c>Quotas:*</c>).</summary>
public sealed record ProjectUsageDto(string Object, string ProjectId, StorageAmountDto Files, StorageAmountDto Adapters, StorageAmountDto Checkpoints);

/// <summary>Admin endpoints (admin key only): projects are tenants, each with its own API keys.</summary>
public static class ProjectsApi
{
    public static IEndpointRouteBuilder MapProjectsApi(this IEndpointRouteBuilder app)
    {
        var projects = app.MapGroup("/v1/organization/projects").WithTags("Admin").RequireAuthorization(Auth.AdminPolicy);
        projects.MapPost("/", CreateProject).WithName("create-project").WithErrors(400, 401, 403).WithSummary("Create a project (a tenant)");
        projects.MapGet("/", ListProjects).WithName("list-projects").WithErrors(401, 403).WithSummary("List projects");
        projects.MapGet("/{projectId}", GetProject).WithName("retrieve-project").WithErrors(401, 403, 404).WithSummary("Retrieve a project");
        projects.MapPost("/{projectId}/api_keys", CreateKey).WithName("createProjectApiKey").WithErrors(400, 401, 403, 404)
            .WithSummary("Create an API key for a project; the answer is the only place its secret `value` appears");
        projects.MapGet("/{projectId}/api_keys", ListKeys).WithName("list-project-api-keys").WithErrors(401, 403, 404).WithSummary("List a project's API keys (redacted)");
        projects.MapGet("/{projectId}/api_keys/{keyId}", GetKey).WithName("retrieve-project-api-key").WithErrors(401, 403, 404).WithSummary("Retrieve an API key (redacted)");
        projects.MapDelete("/{projectId}/api_keys/{keyId}", DeleteKey).WithName("delete-project-api-key").WithErrors(401, 403, 404).WithSummary("Revoke an API key at once");
        // A project key reads its own project's usage; the admin key any project's.
        app.MapGet("/v1/projects/{projectId}/usage", GetUsage).RequireAuthorization(Auth.ProjectPolicy).WithTags("Projects").WithName("retrieve-project-usage").WithErrors(401, 404)
            .WithSummary("A project's storage (files, adapters, checkpoints) in bytes, with its quotas; beyond a quota uploads, imports and new jobs answer 413 `quota_exceeded`");
        return app;
    }

    static async Task<Results<Ok<ProjectUsageDto>, JsonHttpResult<ErrorResponse>>> GetUsage(string projectId, ClaimsPrincipal user, ServiceDbContext db,
        IBlobStore blobs, IOptions<QuotaOptions> quotas, CancellationToken cancel)
    {
        // Another project's id answers as a missing one (tenants do not learn each other's ids).
        bool visible = user.ProjectId() == projectId || user.IsInRole(Auth.AdminRole) && await db.Projects.AnyAsync(p => p.Id == projectId, cancel);
        if (!visible) return NoProject(projectId);
        var usage = await StorageUsage.OfAsync(db, blobs, projectId, cancel);
        var q = quotas.Value;
        return TypedResults.Ok(new ProjectUsageDto("project.usage", projectId, new(usage.FileBytes, q.MaxFileBytes),
            new(usage.AdapterBytes, q.MaxAdapterBytes), new(usage.CheckpointBytes, q.MaxCheckpointBytes)));
    }

    static ProjectDto ToDto(this Project p) => new(p.Id, "organization.project", p.Name, p.CreatedAt, "active");
    static ApiKeyDto ToDto(this ApiKey k, string? value = null) => new(k.Id, "organization.project.api_key", k.Name, k.RedactedValue, k.CreatedAt, k.ProjectId, value);

    static async Task<Results<Ok<ProjectDto>, JsonHttpResult<ErrorResponse>>> CreateProject(CreateProjectRequest request, ServiceDbContext db, CancellationToken cancel)
    {
        if (string.IsNullOrWhiteSpace(request.Name) || request.Name.Length > 256)
            return OpenAiErrors.BadRequest("name is required, up to 256 characters.", "name");
        var project = new Project { Id = "proj_" + Ids.New(), Name = request.Name, CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds() };
        db.Projects.Add(project);
        await db.SaveChangesAsync(cancel);
        return TypedResults.Ok(project.ToDto());
    }

    static async Task<Ok<ListResponse<ProjectDto>>> ListProjects(ServiceDbContext db, CancellationToken cancel) =>
        TypedResults.Ok(new ListResponse<ProjectDto>("list",
            (await db.Projects.AsNoTracking().OrderBy(p => p.CreatedAt).ThenBy(p => p.Id).ToListAsync(cancel)).Select(p => p.ToDto()).ToList(), false));

    static async Task<Results<Ok<ProjectDto>, JsonHttpResult<ErrorResponse>>> GetProject(string projectId, ServiceDbContext db, CancellationToken cancel) =>
        await db.Projects.AsNoTracking().SingleOrDefaultAsync(p => p.Id == projectId, cancel) is { } project
            ? TypedResults.Ok(project.ToDto())
            : NoProject(projectId);

    static async Task<Results<Ok<ApiKeyDto>, JsonHttpResult<ErrorResponse>>> CreateKey(
        string projectId, CreateApiKeyRequest? request, ServiceDbContext db, CancellationToken cancel)
    {
        if (!await db.Projects.AnyAsync(p => p.Id == projectId, cancel)) return NoProject(projectId);
        if (request?.Name is { Length: > 256 }) return OpenAiErrors.BadRequest("name must be up to 256 characters.", "name");
        var secret = Auth.NewKey();
        var key = new ApiKey
        {
            Id = "key_" + Ids.New(), ProjectId = projectId, Name = request?.Name ?? "", Hash = Auth.KeyHash(secret),
            RedactedValue = $"{secret[..12]}...{secret[^4..]}", CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
        };
        db.ApiKeys.Add(key);
        await db.SaveChangesAsync(cancel);
        return TypedResults.Ok(key.ToDto(secret));
    }

    static async Task<Results<Ok<ListResponse<ApiKeyDto>>, JsonHttpResult<ErrorResponse>>> ListKeys(string projectId, ServiceDbContext db, CancellationToken cancel)
    {
        if (!await db.Projects.AnyAsync(p => p.Id == projectId, cancel)) return NoProject(projectId);
        var keys = await db.ApiKeys.AsNoTracking().Where(k => k.ProjectId == projectId).OrderBy(k => k.CreatedAt).ThenBy(k => k.Id).ToListAsync(cancel);
        return TypedResults.Ok(new ListResponse<ApiKeyDto>("list", keys.Select(k => k.ToDto()).ToList(), false));
    }

    static async Task<Results<Ok<ApiKeyDto>, JsonHttpResult<ErrorResponse>>> GetKey(string projectId, string keyId, ServiceDbContext db, CancellationToken cancel) =>
        await db.ApiKeys.AsNoTracking().SingleOrDefaultAsync(k => k.Id == keyId && k.ProjectId == projectId, cancel) is { } key
            ? TypedResults.Ok(key.ToDto())
            : NoKey(keyId);

    static async Task<Results<Ok<DeletedDto>, JsonHttpResult<ErrorResponse>>> DeleteKey(
        string projectId, string keyId, ServiceDbContext db, Hubs.HubKeys hubKeys, CancellationToken cancel)
    {
        if (await db.ApiKeys.Where(k => k.Id == keyId && k.ProjectId == projectId).ExecuteDeleteAsync(cancel) != 1) return NoKey(keyId);
        hubKeys.Revoked(keyId);   // its live hub connections were let in by the key: they close now
        return TypedResults.Ok(new DeletedDto(keyId, "organization.project.api_key.deleted", true));
    }

    static JsonHttpResult<ErrorResponse> NoProject(string projectId) => OpenAiErrors.NotFound($"No such project: {projectId}", "project_id");
    static JsonHttpResult<ErrorResponse> NoKey(string keyId) => OpenAiErrors.NotFound($"No such API key: {keyId}", "key_id");
}
