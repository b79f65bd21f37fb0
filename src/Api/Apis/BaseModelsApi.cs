using System.Text.RegularExpressions;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Builtins;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

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
    static readonly Regex ModelFile = new(@"^(config\.json|generation_config\.json|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|tokenizer\.json|tokenizer\.model|tokenizer_config\.json|special_tokens_map\.json|vocab\.json|merges\.txt|chat_template\.jinja)$");

    public static IEndpointRouteBuilder MapBaseModelsApi(this IEndpointRouteBuilder app)
    {
        var bases = app.MapGroup("/v1/base_models").WithTags("Base models");
        bases.MapGet("/", ListBaseModels).WithName("listBaseModels").WithSummary("List base models (built-in and registered)");
        bases.MapGet("/{id}", GetBaseModel).WithName("retrieveBaseModel").WithErrors(404).WithSummary("Retrieve a base model");
        bases.MapPost("/import", ImportBaseModel).WithName("importBaseModel").RequireAuthorization(Auth.AdminPolicy).WithErrors(400, 403, 409)
            .WithSummary("Register a Hugging Face model folder on the server as a base model (admin key)")
            .WithDescription("The folder's config.json picks the family (llama, qwen2, qwen3, mistral, gpt2, vit); its keys and every weight are checked against it before anything is stored, and a faulty folder is a 400 invalid_model naming the file and key.");
        bases.MapPost("/upload", UploadBaseModel).WithName("uploadBaseModel").DisableAntiforgery().RequireAuthorization(Auth.AdminPolicy).WithErrors(400, 403, 409, 413, 415)
            .WithSummary("Register an uploaded zip of a Hugging Face model folder as a base model (admin key)")
            .WithDescription("Multipart form: `file` (a zip of the folder: config.json, model.safetensors or shards with model.safetensors.index.json, tokenizer files; at the zip's root or in one folder, as GET /v1/models/{model}/export writes it), `id`, optional `description`. Up to Files:MaxModelUploadBytes (default 16 GiB).");
        bases.MapDelete("/{id}", DeleteBaseModel).WithName("deleteBaseModel").RequireAuthorization(Auth.AdminPolicy).WithErrors(400, 403, 404, 409)
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
        if (await CheckNewIdAsync(request.Id, db, cancel) is { } refused) return refused;
        if (request.Path is not { Length: > 0 } path || !Directory.Exists(path))
            return OpenAiErrors.BadRequest($"No folder at '{request.Path}' on the server.", "path");
        return await RegisterAsync(request.Id!, request.Description, $"imported from {path}", "path", db, blobs, cancel, temp =>
        {
            var folder = System.IO.Path.GetFullPath(path);
            foreach (var file in Directory.EnumerateFiles(path).Where(f => ModelFile.IsMatch(System.IO.Path.GetFileName(f))))
            {
                // A link may lead anywhere on the server (a key, /etc/passwd as special_tokens_map.json, then exported):
                // only a link that stays inside the folder is followed.
                var name = System.IO.Path.GetFileName(file);
                if (File.ResolveLinkTarget(file, returnFinalTarget: true) is { } target
                    && !System.IO.Path.GetFullPath(target.FullName).StartsWith(folder.TrimEnd(System.IO.Path.DirectorySeparatorChar) + System.IO.Path.DirectorySeparatorChar, StringComparison.Ordinal))
                    throw new InvalidDataException($"{name} is a symbolic link to a file outside the folder; copy the file into the folder instead");
                File.Copy(file, System.IO.Path.Combine(temp, name));
            }
            return Task.CompletedTask;
        });
    }

    static async Task<Results<Ok<BaseModelDto>, JsonHttpResult<ErrorResponse>>> UploadBaseModel(
        HttpRequest request, ServiceDbContext db, IBlobStore blobs, IOptions<FileLimits> limits, CancellationToken cancel)
    {
        long max = limits.Value.MaxModelUploadBytes;
        var (form, refusedForm) = await Forms.ReadUploadAsync(request, max,
            "the model as multipart/form-data with fields 'file' (a zip), 'id' and optionally 'description'", cancel);
        if (form is null) return refusedForm!;
        string id = form["id"].ToString();
        if (await CheckNewIdAsync(id, db, cancel) is { } refused) return refused;
        if (form.Files.GetFile("file") is not { } upload) return OpenAiErrors.BadRequest("Missing required parameter: 'file'.", "file");
        string? description = form.TryGetValue("description", out var d) ? d.ToString() : null;
        return await RegisterAsync(id, description, $"uploaded as {upload.FileName}", "file", db, blobs, cancel, async temp =>
        {
            var zipPath = System.IO.Path.Combine(blobs.NewTempFolder(), "upload.zip");   // on disk: zip reading seeks, which request streams do poorly
            try
            {
                await using (var file = File.Create(zipPath)) await upload.CopyToAsync(file, cancel);
                await using var zip = File.OpenRead(zipPath);
                SafeZip.Extract(zip, temp, max, ModelFile.IsMatch, [ModelFolder.ConfigFile]);
            }
            finally
            {
                Directory.Delete(System.IO.Path.GetDirectoryName(zipPath)!, recursive: true);
            }
        });
    }

    /// <summary>An error if <paramref name="id"/> is no valid id for a new base model or is taken.</summary>
    static async Task<JsonHttpResult<ErrorResponse>?> CheckNewIdAsync(string? id, ServiceDbContext db, CancellationToken cancel)
    {
        if (id is null || !Regex.IsMatch(id, "^[A-Za-z0-9._-]{1,64}$") || id.StartsWith("ft:", StringComparison.Ordinal))
            return OpenAiErrors.BadRequest("id must be 1-64 letters, digits, '.', '-' or '_'.", "id");
        if (!Ids.IsUsableAsFolderName(id))
            return OpenAiErrors.BadRequest($"id '{id}' is reserved: it may not start or end with '.' or be a device name (CON, NUL, COM1, ...).", "id");
        if (await db.BaseModels.AnyAsync(m => m.Id == id, cancel))
            return OpenAiErrors.Error(StatusCodes.Status409Conflict, $"A base model '{id}' exists already.", "id", "model_exists");
        return null;
    }

    /// <summary>
    /// Every file kept is one the service reads, so a folder cannot carry anything else into the store (and out again
    /// through an export): JSON files parse, text files are UTF-8, tokenizer.model loads, and each weights file is the
    /// one model.safetensors or a shard the index names (ModelFolder.Load then reads those against config.json).
    /// </summary>
    static void CheckEveryFileParses(string folder)
    {
        var files = Directory.GetFiles(folder).Select(f => System.IO.Path.GetFileName(f)).ToHashSet(StringComparer.Ordinal);
        foreach (var name in files.Where(n => n.EndsWith(".json", StringComparison.Ordinal)))
        {
            try { using var _ = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(System.IO.Path.Combine(folder, name))); }
            catch (System.Text.Json.JsonException e) { throw new InvalidDataException($"{name} is not valid JSON (line {e.LineNumber + 1})"); }
        }
        foreach (var name in files.Where(n => n is "merges.txt" or "chat_template.jinja"))
            if (!System.Text.Unicode.Utf8.IsValid(File.ReadAllBytes(System.IO.Path.Combine(folder, name))))
                throw new InvalidDataException($"{name} is not UTF-8 text");
        if (files.Contains("tokenizer.model")) SentencePieceTextTokenizer.Load(folder);
        var shards = files.Where(n => n.EndsWith(".safetensors", StringComparison.Ordinal)).ToList();
        HashSet<string> indexed;
        try
        {
            indexed = files.Contains("model.safetensors.index.json")
                ? System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(System.IO.Path.Combine(folder, "model.safetensors.index.json"))).RootElement
                    .TryGetProperty("weight_map", out var map) && map.ValueKind == System.Text.Json.JsonValueKind.Object
                    ? map.EnumerateObject().Select(p => p.Value.ToString()).ToHashSet(StringComparer.Ordinal) : []
                : new HashSet<string>(["model.safetensors"], StringComparer.Ordinal);
        }
        catch (InvalidOperationException)   // a name escaping half a surrogate pair ("\ud800") parses but reads as no string
        {
            throw new InvalidDataException("model.safetensors.index.json: weight_map holds a name that is not valid Unicode text (an unpaired surrogate escape)");
        }
        if (shards.FirstOrDefault(n => !indexed.Contains(n)) is { } unread)
            throw new InvalidDataException($"{unread} is not one of the model's weights files (model.safetensors, or the shards model.safetensors.index.json names)");
    }

    /// <summary>
    /// Lets <paramref name="gather"/> put the folder's files into a temporary folder, loads the model from it (which
    /// checks every weight against config.json) and its tokenizer, then stores the folder and the row. Nothing is kept
    /// when any of it fails.
    /// </summary>
    static async Task<Results<Ok<BaseModelDto>, JsonHttpResult<ErrorResponse>>> RegisterAsync(string id, string? description, string source, string param,
        ServiceDbContext db, IBlobStore blobs, CancellationToken cancel, Func<string, Task> gather)
    {
        var temp = blobs.NewTempFolder();
        try
        {
            await gather(temp);
            CheckEveryFileParses(temp);
            var config = ModelConfig.Load(System.IO.Path.Combine(temp, ModelFolder.ConfigFile));
            long parameters;
            int context = 0;
            string tokenizer = "none";
            using (var model = ModelFolder.Load(temp, BasePrecision.AsStored))   // mapped where it can be: a check, not a copy
            {
                parameters = ((IHuggingFaceModel)model).CheckpointTensors().Sum(t => t.Parameter.numel());
                if (model is CausalLanguageModel lm)
                {
                    context = lm.ContextLength;
                    var text = ModelText.Read(temp);
                    tokenizer = text.Tokenizer switch
                    {
                        HfTokenizer hf => hf.Kind,
                        SentencePieceTextTokenizer sp => $"SentencePiece {sp.Algorithm}",
                        _ when ByteTokenizer.IsSavedIn(temp) => "byte-level",   // this service's own demo models, exported
                        _ => throw new InvalidDataException("the folder has no tokenizer.json (or vocab.json + merges.txt, or tokenizer.model)"),
                    } + (text.Template is null ? "" : ", chat template");
                }
            }
            var blobPath = BlobPaths.ModelPath(id);
            blobs.CommitFolder(temp, blobPath);
            var row = new BaseModel
            {
                Id = id, Family = config.ModelType, BlobPath = blobPath, ParameterCount = parameters, ContextLength = context, Dtype = config.TorchDtype,
                Tokenizer = tokenizer, Description = description ?? $"{config.Architecture} {source}",
                CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), OwnedBy = "organization",
            };
            db.BaseModels.Add(row);
            await SaveOrDropAsync(db, blobs, blobPath, cancel);
            return TypedResults.Ok(row.ToDto());
        }
        catch (Exception e) when (e is InvalidDataException or IOException && !StorageFullException.IsCause(e))
        {
            // The checks name files by name; a message from elsewhere (the tokenizer readers) may hold the temporary
            // folder's path, which is the server's business, so it goes too.
            string message = e.Message.Replace(temp + System.IO.Path.DirectorySeparatorChar, "", StringComparison.Ordinal).Replace(temp, "the folder", StringComparison.Ordinal);
            return OpenAiErrors.BadRequest($"Not a usable model folder: {message}", param, "invalid_model");
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    /// <summary>
    /// Saves the new row of the folder just published as <paramref name="blobPath"/>; when that fails (the database on a
    /// full disk answers SQLITE_FULL) the folder goes too, so nothing half-imported stays and a retry finds the id free.
    /// </summary>
    public static async Task SaveOrDropAsync(ServiceDbContext db, IBlobStore blobs, string blobPath, CancellationToken cancel)
    {
        try
        {
            await db.SaveChangesAsync(cancel);
        }
        catch
        {
            db.ChangeTracker.Clear();
            blobs.Delete(blobPath);
            throw;
        }
    }

    static async Task<Results<Ok<DeletedDto>, JsonHttpResult<ErrorResponse>>> DeleteBaseModel(string id, ServiceDbContext db, IBlobStore blobs,
        InferenceEngine engine, CancellationToken cancel)
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
        engine.EvictBase(id);   // its loaded weights, cache and cached prefixes go once its last rows finish
        return TypedResults.Ok(new DeletedDto(id, "base_model", true));
    }
}
