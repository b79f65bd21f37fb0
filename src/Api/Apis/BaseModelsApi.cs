using System.Text.RegularExpressions;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Formats;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Apis;

/// <summary>A Hugging Face model folder on the server to register as a base model.</summary>
/// <param name="Path" example="/srv/models/gpt2">The folder: config.json, model.safetensors (or shards with model.safetensors.index.json), tokenizer files.</param>
/// <param name="Id" example="gpt2">The base model's id (letters, digits, '.', '-', '_'; up to 64).</param>
/// <param name="Description">Shown in the model list.</param>
public sealed record ImportBaseModelRequest(string? Path, string? Id, string? Description);

/// <summary>A registered base model: what it is built from.</summary>
public sealed record BaseModelDto(string Id, string Object, string Family, long ParameterCount, int ContextLength, string Dtype, string Tokenizer,
    string Description, long CreatedAt, string OwnedBy);

/// <summary>Base models: the built-in ones and Hugging Face folders an administrator registers.</summary>
public static class BaseModelsApi
{
    /// <summary>The files of a Hugging Face folder the service reads; nothing else is copied.</summary>
    static readonly Regex ModelFile = new(@"^(config\.json|generation_config\.json|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|vocab\.json|merges\.txt)$");

    public static IEndpointRouteBuilder MapBaseModelsApi(this IEndpointRouteBuilder app)
    {
        var bases = app.MapGroup("/v1/base_models").WithTags("Base models");
        bases.MapGet("/", ListBaseModels).WithSummary("List base models (built-in and registered)");
        bases.MapGet("/{id}", GetBaseModel).WithErrors(404).WithSummary("Retrieve a base model");
        bases.MapPost("/import", ImportBaseModel).RequireAuthorization(Auth.AdminPolicy).WithErrors(400, 403, 409)
            .WithSummary("Register a Hugging Face model folder on the server as a base model (admin key)")
            .WithDescription("The folder's config.json picks the family (llama, gpt2, vit); every weight is checked against it before anything is stored.");
        bases.MapDelete("/{id}", DeleteBaseModel).RequireAuthorization(Auth.AdminPolicy).WithErrors(400, 403, 404, 409)
            .WithSummary("Delete a registered base model that no adapter or job uses (admin key)");
        return app;
    }

    static BaseModelDto ToDto(this BaseModel m) =>
        new(m.Id, "base_model", m.Family, m.ParameterCount, m.ContextLength, m.Dtype, m.Tokenizer, m.Description, m.CreatedAt, m.OwnedBy);

    static async Task<Ok<ListResponse<BaseModelDto>>> ListBaseModels(ServiceDbContext db, CancellationToken cancel) =>
        TypedResults.Ok(new ListResponse<BaseModelDto>("list", (await db.BaseModels.AsNoTracking().OrderBy(m => m.Id).ToListAsync(cancel)).Select(m => m.ToDto()).ToList(), false));

    static async Task<Results<Ok<BaseModelDto>, JsonHttpResult<ErrorResponse>>> GetBaseModel(string id, ServiceDbContext db, CancellationToken cancel) =>
        await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == id, cancel) is { } model
            ? TypedResults.Ok(model.ToDto())
            : OpenAiErrors.NotFound($"No such base model: {id}", "id", "model_not_found");

    static async Task<Results<Ok<BaseModelDto>, JsonHttpResult<ErrorResponse>>> ImportBaseModel(
        ImportBaseModelRequest request, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel)
    {
        if (request.Id is not { } id || !Regex.IsMatch(id, "^[A-Za-z0-9._-]{1,64}$") || id.StartsWith("ft:", StringComparison.Ordinal))
            return OpenAiErrors.BadRequest("id must be 1-64 letters, digits, '.', '-' or '_'.", "id");
        if (request.Path is not { Length: > 0 } path || !Directory.Exists(path))
            return OpenAiErrors.BadRequest($"No folder at '{request.Path}' on the server.", "path");
        if (await db.BaseModels.AnyAsync(m => m.Id == id, cancel))
            return OpenAiErrors.Error(StatusCodes.Status409Conflict, $"A base model '{id}' exists already.", "id", "model_exists");

        var temp = blobs.NewTempFolder();
        try
        {
            foreach (var file in Directory.EnumerateFiles(path).Where(f => ModelFile.IsMatch(System.IO.Path.GetFileName(f))))
                File.Copy(file, System.IO.Path.Combine(temp, System.IO.Path.GetFileName(file)));
            var config = ModelConfig.Load(System.IO.Path.Combine(temp, ModelFolder.ConfigFile));
            long parameters;
            int context = 0;
            string tokenizer = "none";
            using (var model = ModelFolder.Load(temp))   // reads and checks every weight against the config
            {
                parameters = ((IHuggingFaceModel)model).CheckpointTensors().Sum(t => t.Parameter.numel());
                if (model is CausalLanguageModel lm)
                {
                    context = lm.ContextLength;
                    tokenizer = TextTokenizers.ForModel(temp) is HfTokenizer hf
                        ? $"byte-level BPE{(hf.Chat is { } chat ? $", {chat} chat format" : "")}"
                        : throw new InvalidDataException("the folder has no tokenizer.json (or vocab.json + merges.txt)");
                }
            }
            var blobPath = BlobPaths.ModelPath(id);
            blobs.CommitFolder(temp, blobPath);
            var row = new BaseModel
            {
                Id = id, Family = config.ModelType, BlobPath = blobPath, ParameterCount = parameters, ContextLength = context, Dtype = config.TorchDtype,
                Tokenizer = tokenizer, Description = request.Description ?? $"{config.Architecture} imported from {path}",
                CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), OwnedBy = "organization",
            };
            db.BaseModels.Add(row);
            await db.SaveChangesAsync(cancel);
            return TypedResults.Ok(row.ToDto());
        }
        catch (Exception e) when (e is InvalidDataException or IOException)
        {
            return OpenAiErrors.BadRequest($"Not a usable model folder: {e.Message}", "path", "invalid_model");
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    static async Task<Results<Ok<DeletedDto>, JsonHttpResult<ErrorResponse>>> DeleteBaseModel(string id, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel)
    {
        var model = await db.BaseModels.SingleOrDefaultAsync(m => m.Id == id, cancel);
        if (model is null) return OpenAiErrors.NotFound($"No such base model: {id}", "id", "model_not_found");
        if (BuiltinModels.All.Any(b => b.Id == id)) return OpenAiErrors.BadRequest($"{id} is built in and cannot be deleted.", "id");
        // Every project's adapters and jobs count, not just the caller's.
        if (await db.Adapters.IgnoreQueryFilters().AnyAsync(a => a.BaseModel == id, cancel) || await db.Jobs.IgnoreQueryFilters().AnyAsync(j => j.Model == id, cancel))
            return OpenAiErrors.Error(StatusCodes.Status409Conflict, $"Adapters or jobs use {id}; delete them first.", "id", "model_in_use");
        db.BaseModels.Remove(model);
        await db.SaveChangesAsync(cancel);
        blobs.Delete(model.BlobPath);
        return TypedResults.Ok(new DeletedDto(id, "base_model", true));
    }
}
