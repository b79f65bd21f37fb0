using AdapterService.Api.Infrastructure;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Apis;

/// <summary>OpenAI's model object; <c>parent</c> is the base of a fine-tuned model.</summary>
public sealed record ModelDto(string Id, string Object, long Created, string OwnedBy, string? Parent, string? Description);

public static class ModelsApi
{
    public static IEndpointRouteBuilder MapModelsApi(this IEndpointRouteBuilder app)
    {
        var models = app.MapGroup("/v1/models").WithTags("Models");
        models.MapGet("/", ListModels).WithSummary("List base models and fine-tuned models");
        models.MapGet("/{model}", GetModel).WithErrors(404).WithSummary("Retrieve a base or fine-tuned model");
        return app;
    }

    static ModelDto ToDto(this BaseModel m) => new(m.Id, "model", m.CreatedAt, m.OwnedBy, null, m.Description);
    static ModelDto ToDto(this Adapter a) => new(a.Name, "model", a.CreatedAt, "user", a.BaseModel, $"{a.Method} adapter ({a.ParameterCount:N0} parameters) on {a.BaseModel}");

    static async Task<Ok<ListResponse<ModelDto>>> ListModels(ServiceDbContext db, CancellationToken cancel)
    {
        var bases = await db.BaseModels.AsNoTracking().OrderBy(m => m.Id).ToListAsync(cancel);
        var adapters = await db.Adapters.AsNoTracking().OrderBy(a => a.CreatedAt).ToListAsync(cancel);
        return TypedResults.Ok(new ListResponse<ModelDto>("list", [.. bases.Select(m => m.ToDto()), .. adapters.Select(a => a.ToDto())], false));
    }

    static async Task<Results<Ok<ModelDto>, JsonHttpResult<ErrorResponse>>> GetModel(string model, ServiceDbContext db, CancellationToken cancel) =>
        await ModelResolver.ResolveAsync(db, model, cancel) switch
        {
            { Adapter: { } adapter } => TypedResults.Ok(adapter.ToDto()),
            { Base: var b } => TypedResults.Ok(b.ToDto()),
            null => OpenAiErrors.NotFound($"The model '{model}' does not exist.", "model", "model_not_found"),
        };
}
