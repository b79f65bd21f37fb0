using AdapterService.Api.Infrastructure;
using AdapterService.Core.Inference;
using AdapterService.Core.Storage;
using AdapterService.Core.Vision;
using AdapterService.Workers;
using Hangfire;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Apis;

/// <summary>OpenAI's model object; <c>parent</c> is the base of a fine-tuned model.</summary>
public sealed record ModelDto(string Id, string Object, long Created, string OwnedBy, string? Parent, string? Description);

/// <summary>A queued pre-training of a built-in base model.</summary>
public sealed record PretrainingDto(string Id, string Object, string Status);

public static class ModelsApi
{
    public static IEndpointRouteBuilder MapModelsApi(this IEndpointRouteBuilder app)
    {
        var models = app.MapGroup("/v1/models").WithTags("Models");
        models.MapGet("/", ListModels).WithSummary("List base models and fine-tuned models");
        models.MapGet("/{model}", GetModel).WithErrors(404).WithSummary("Retrieve a base or fine-tuned model");
        models.MapPost("/{model}/pretrain", Pretrain).WithErrors(400, 404).WithSummary("Queue the pre-training of a built-in base model (vit-fashion-mnist-demo)")
            .WithDescription("The service pre-trains its demo ViT on Fashion-MNIST classes 0-4 from Debian's dataset-fashion-mnist package. 202 while queued; the model is listed once trained. 200 with the model when it exists already.");
        models.MapDelete("/{model}", DeleteModel).WithErrors(400, 404).WithSummary("Delete a fine-tuned model (its adapter and files)");
        return app;
    }

    static ModelDto ToDto(this BaseModel m) => new(m.Id, "model", m.CreatedAt, m.OwnedBy, null, m.Description);
    static ModelDto ToModelDto(this Adapter a) => new(a.Name, "model", a.CreatedAt, "user", a.BaseModel, $"{a.Method} adapter ({a.ParameterCount:N0} parameters) on {a.BaseModel}");

    static async Task<Ok<ListResponse<ModelDto>>> ListModels(ServiceDbContext db, CancellationToken cancel)
    {
        var bases = await db.BaseModels.AsNoTracking().OrderBy(m => m.Id).ToListAsync(cancel);
        var adapters = await db.Adapters.AsNoTracking().OrderBy(a => a.CreatedAt).ToListAsync(cancel);
        return TypedResults.Ok(new ListResponse<ModelDto>("list", [.. bases.Select(m => m.ToDto()), .. adapters.Select(a => a.ToModelDto())], false));
    }

    static async Task<Results<Ok<DeletedDto>, JsonHttpResult<ErrorResponse>>> DeleteModel(
        string model, ServiceDbContext db, IBlobStore blobs, InferenceEngine engine, CancellationToken cancel)
    {
        var adapter = await db.Adapters.SingleOrDefaultAsync(a => a.Name == model, cancel);
        if (adapter is not null)
        {
            await AdaptersApi.DeleteAsync(adapter, db, blobs, engine, cancel);
            return TypedResults.Ok(new DeletedDto(model, "model", true));
        }
        return await db.BaseModels.AnyAsync(m => m.Id == model, cancel)
            ? OpenAiErrors.BadRequest($"{model} is a base model; only fine-tuned models can be deleted here.", "model", "cannot_delete_base_model")
            : OpenAiErrors.NotFound($"The model '{model}' does not exist.", "model", "model_not_found");
    }

    static async Task<Results<Ok<ModelDto>, Accepted<PretrainingDto>, JsonHttpResult<ErrorResponse>>> Pretrain(
        string model, ServiceDbContext db, IBackgroundJobClient queue, IConfiguration configuration, CancellationToken cancel)
    {
        if (model != VitPretrainingJob.Id)
            return OpenAiErrors.NotFound($"The service pre-trains only {VitPretrainingJob.Id}; '{model}' is not one of its built-in models.", "model", "model_not_found");
        if (await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == model, cancel) is { } existing) return TypedResults.Ok(existing.ToDto());
        try
        {
            FashionMnist.EnsureInstalled(configuration["Vision:Pretraining:DataFolder"] ?? FashionMnist.DefaultFolder);
        }
        catch (DatasetMissingException e)
        {
            return OpenAiErrors.BadRequest(e.Message, "model", "dataset_missing");
        }
        queue.Enqueue<VitPretrainingJob>(j => j.Run(CancellationToken.None));
        return TypedResults.Accepted($"/v1/models/{model}", new PretrainingDto(model, "model.pretraining", "queued"));
    }

    static async Task<Results<Ok<ModelDto>, JsonHttpResult<ErrorResponse>>> GetModel(string model, ServiceDbContext db, CancellationToken cancel) =>
        await db.Adapters.AsNoTracking().SingleOrDefaultAsync(a => a.Name == model, cancel) is { } adapter
            ? TypedResults.Ok(adapter.ToModelDto())
            : await db.Checkpoints.AsNoTracking().SingleOrDefaultAsync(c => c.Name == model, cancel) is { } checkpoint
                ? TypedResults.Ok(new ModelDto(checkpoint.Name, "model", checkpoint.CreatedAt, "user", checkpoint.BaseModel, $"checkpoint at step {checkpoint.StepNumber} of {checkpoint.JobId}"))
                : await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == model, cancel) is { } baseModel
                    ? TypedResults.Ok(baseModel.ToDto())
                    : OpenAiErrors.NotFound($"The model '{model}' does not exist.", "model", "model_not_found");
}
