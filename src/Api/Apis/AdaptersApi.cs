using System.Security.Claims;
using System.Text.Json;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Exports;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Apis;

/// <summary>A stored adapter: the model name it is served as, what it was trained from, its size.</summary>
public sealed record StoredAdapterDto(
    string Id, string Object, string Model, string BaseModel, string Method, long ParameterCount, long SizeBytes, string Sha256,
    string? FineTuningJob, long CreatedAt, JsonElement Config);

/// <summary>Adapters to combine into a new one.</summary>
/// <param name="Adapters">Ids of two or more adapters of the same base model and method (lora or rlrr) over the same layers.</param>
/// <param name="Weights">One weight per adapter; the new adapter's update is the weighted sum of theirs.</param>
/// <param name="Suffix" example="blend">Up to 64 letters, digits, '-' or '_'; part of the new model's name.</param>
public sealed record CombineAdaptersRequest(string[]? Adapters, double[]? Weights, string? Suffix);

public static class AdaptersApi
{
    /// <summary>The files of a PEFT adapter folder.</summary>
    static readonly string[] PeftFiles = [AdapterConfig.FileName, TrainableAdapter.WeightsFileName];
    static readonly string[] TextFiles = [ModelText.TemplateFile, ModelText.TrainedWithFile];

    public static IEndpointRouteBuilder MapAdaptersApi(this IEndpointRouteBuilder app)
    {
        var adapters = app.MapGroup("/v1/adapters").WithTags("Adapters");
        adapters.MapGet("/", ListAdapters).WithName("listAdapters").WithSummary("List stored adapters, newest first");
        adapters.MapGet("/{adapterId}", GetAdapter).WithName("retrieveAdapter").WithErrors(404).WithSummary("Retrieve an adapter");
        adapters.MapDelete("/{adapterId}", DeleteAdapter).WithName("deleteAdapter").WithErrors(404).WithSummary("Delete an adapter and its files; its model name stops serving");
        adapters.MapGet("/{adapterId}/export", ExportAdapter).WithName("exportAdapter").Produces<Stream>(200, "application/zip", "application/octet-stream").WithErrors(400, 404)
            .WithSummary("Download the adapter as a zip in PEFT's layout (adapter_config.json + adapter_model.safetensors), or a LoRA adapter with format=gguf as a llama.cpp GGUF adapter");
        adapters.MapPost("/import", ImportAdapter).WithName("importAdapter").DisableAntiforgery().WithErrors(400, 404, 415)
            .WithSummary("Import an adapter from a zip (PEFT LoRA, DoRA or Lily; our RLRR or MixLoRA)")
            .WithDescription("Multipart form: `file` (a zip holding adapter_config.json and adapter_model.safetensors, at its root or in one folder), `model` (the base model id), optional `suffix`. The weights are checked against the base model's layers.");
        adapters.MapPost("/combine", CombineAdapters).WithName("combineAdapters").WithErrors(400, 404)
            .WithSummary("Create an adapter as the weighted sum of existing LoRA (or RLRR) adapters of one base model")
            .WithDescription("Exact: ranks are concatenated, so the new adapter's update is Σ wᵢ · updateᵢ (PEFT's add_weighted_adapter \"cat\"; RLRR's combination of rescalings).");
        return app;
    }

    public static StoredAdapterDto ToDto(this Adapter a) => new(a.Id, "adapter", a.Name, a.BaseModel, a.Method, a.ParameterCount, a.SizeBytes,
        a.Sha256, a.JobId, a.CreatedAt, JsonDocument.Parse(a.Config).RootElement);

    static async Task<Ok<ListResponse<StoredAdapterDto>>> ListAdapters(ServiceDbContext db, CancellationToken cancel)
    {
        var adapters = await db.Adapters.AsNoTracking().OrderByDescending(a => a.CreatedAt).ToListAsync(cancel);
        return TypedResults.Ok(new ListResponse<StoredAdapterDto>("list", adapters.Select(a => a.ToDto()).ToList(), false));
    }

    static async Task<Results<Ok<StoredAdapterDto>, JsonHttpResult<ErrorResponse>>> GetAdapter(string adapterId, ServiceDbContext db, CancellationToken cancel) =>
        await db.Adapters.AsNoTracking().SingleOrDefaultAsync(a => a.Id == adapterId, cancel) is { } adapter
            ? TypedResults.Ok(adapter.ToDto())
            : OpenAiErrors.NotFound($"No such adapter: {adapterId}", "id");

    static async Task<Results<Ok<DeletedDto>, JsonHttpResult<ErrorResponse>>> DeleteAdapter(
        string adapterId, ServiceDbContext db, IBlobStore blobs, InferenceEngine engine, CancellationToken cancel)
    {
        var adapter = await db.Adapters.SingleOrDefaultAsync(a => a.Id == adapterId, cancel);
        if (adapter is null) return OpenAiErrors.NotFound($"No such adapter: {adapterId}", "id");
        await DeleteAsync(adapter, db, blobs, engine, cancel);
        return TypedResults.Ok(new DeletedDto(adapterId, "adapter", true));
    }

    /// <summary>Removes the row first, then the cached weights and the files, so the name never serves half-deleted weights.</summary>
    public static async Task DeleteAsync(Adapter adapter, ServiceDbContext db, IBlobStore blobs, InferenceEngine engine, CancellationToken cancel)
    {
        db.Adapters.Remove(adapter);
        await db.SaveChangesAsync(cancel);
        engine.Evict(adapter.Id);
        blobs.Delete(adapter.BlobPath);
    }

    static async Task<Results<Ok<StoredAdapterDto>, JsonHttpResult<ErrorResponse>>> CombineAdapters(
        CombineAdaptersRequest request, ClaimsPrincipal user, ServiceDbContext db, IBlobStore blobs, IOptions<QuotaOptions> quotas, CancellationToken cancel)
    {
        if (request.Adapters is not { Length: >= 2 and <= 16 } ids)
            return OpenAiErrors.BadRequest("adapters must list 2 to 16 adapter ids.", "adapters");
        if (request.Weights is not { } weights || weights.Length != ids.Length || weights.Any(w => !double.IsFinite(w)))
            return OpenAiErrors.BadRequest("weights must give one finite number per adapter.", "weights");
        string suffix = request.Suffix ?? "combined";
        if (suffix.Length > 64 || suffix.Any(c => !char.IsAsciiLetterOrDigit(c) && c is not ('-' or '_')))
            return OpenAiErrors.BadRequest("suffix must be up to 64 letters, digits, '-' and '_'.", "suffix");
        var rows = await db.Adapters.AsNoTracking().Where(a => ids.Contains(a.Id)).ToListAsync(cancel);
        if (ids.FirstOrDefault(id => rows.All(r => r.Id != id)) is { } missing) return OpenAiErrors.NotFound($"No such adapter: {missing}", "adapters");
        var sources = ids.Select(id => rows.Single(r => r.Id == id)).ToList();
        if (sources.Select(a => a.BaseModel).Distinct().Count() > 1)
            return OpenAiErrors.BadRequest("The adapters belong to different base models.", "adapters");

        var adapterId = "adapter-" + Ids.New();
        var temp = blobs.NewTempFolder();
        try
        {
            var config = AdapterComposition.Combine(sources.Select(a => blobs.Resolve(a.BlobPath)).ToList(), weights, temp);
            long parameters = SafeTensors.ReadHeader(Path.Combine(temp, TrainableAdapter.WeightsFileName)).Tensors.Sum(t => t.Shape.Aggregate(1L, (a, d) => a * d));
            if (await Quotas.RefuseAsync(db, blobs, quotas.Value, user.ProjectId()!, "adapters", FolderBytes(temp), cancel) is { } over) return over;
            var blobPath = BlobPaths.AdapterPath(adapterId);
            blobs.CommitFolder(temp, blobPath);
            var adapter = new Adapter
            {
                Id = adapterId, ProjectId = user.ProjectId()!, Name = ModelNames.FineTuned(sources[0].BaseModel, suffix, adapterId), BaseModel = sources[0].BaseModel, Method = config.Method,
                Config = config.ToJson(), ParameterCount = parameters,
                SizeBytes = blobs.SizeOf(blobPath), BlobPath = blobPath, Sha256 = blobs.ContentHash(blobPath), CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
            };
            db.Adapters.Add(adapter);
            await BaseModelsApi.SaveOrDropAsync(db, blobs, blobPath, cancel);
            return TypedResults.Ok(adapter.ToDto());
        }
        catch (ArgumentException e)
        {
            return OpenAiErrors.BadRequest($"These adapters cannot be combined: {e.Message}.", "adapters", "invalid_adapter");
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    /// <summary>
    /// PEFT's zip, or with <c>format=gguf</c> a LoRA adapter as llama.cpp's GGUF adapter (f32 by default: adapters are
    /// small), for use over the base model's GGUF export.
    /// </summary>
    static async Task<Results<ZipFolderResult, FileStreamHttpResult, JsonHttpResult<ErrorResponse>>> ExportAdapter(
        string adapterId, string? format, string? type, HttpContext context, ServiceDbContext db, IBlobStore blobs, ExportSlots exports, CancellationToken cancel)
    {
        if (format is not (null or "peft" or "gguf"))
            return OpenAiErrors.BadRequest($"format '{format}' is not one of peft (a zipped PEFT folder, the default) and gguf.", "format", "invalid_format");
        if (ModelsApi.GgufTypeOf(format, type, GgufType.F32, out var ggufType) is { } badType) return badType;
        var adapter = await db.Adapters.AsNoTracking().SingleOrDefaultAsync(a => a.Id == adapterId, cancel);
        if (adapter is null) return OpenAiErrors.NotFound($"No such adapter: {adapterId}", "id");
        string folder = blobs.Resolve(adapter.BlobPath);
        if (format == "gguf" && AdapterConfig.Load(folder) is not LoraConfig)
            return OpenAiErrors.BadRequest($"{adapter.Id} is a {adapter.Method} adapter; only LoRA adapters have a llama.cpp GGUF form (export the merged model instead).",
                "id", "not_exportable");
        if (exports.TryTake(context) is { } busy) return busy;   // held until the response is sent
        if (format != "gguf") return new ZipFolderResult(folder, $"{adapter.Id}.zip");
        var lora = (LoraConfig)AdapterConfig.Load(folder);
        var baseModel = await db.BaseModels.AsNoTracking().SingleAsync(m => m.Id == adapter.BaseModel, cancel);
        string temp = blobs.NewTempFolder();
        FileStream? file = null;
        try
        {
            using var scope = TorchSharp.torch.NewDisposeScope();
            using var model = ModelFolder.Load(blobs.Resolve(baseModel.BlobPath), BasePrecision.AsStored);   // in the file's types, mapped where it can be
            using var trainable = (LoraAdapter)TrainableAdapter.Create(model, lora);
            trainable.LoadWeights(folder);
            file = new FileStream(temp + ".gguf", FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 20, FileOptions.DeleteOnClose);
            GgufExport.WriteLoraAdapter(file, model, lora, trainable.Weights(), adapter.Id, ggufType);
            file.Position = 0;
            return TypedResults.File(file, "application/octet-stream", $"{adapter.Id}-{type ?? "f32"}.gguf");
        }
        catch (NotSupportedException e)
        {
            file?.Dispose();
            return OpenAiErrors.BadRequest($"{adapter.Id} cannot be exported as GGUF: {e.Message}.", "id", "not_exportable");
        }
        catch
        {
            file?.Dispose();
            throw;
        }
        finally
        {
            Directory.Delete(temp, recursive: true);
        }
    }

    static async Task<Results<Ok<StoredAdapterDto>, JsonHttpResult<ErrorResponse>>> ImportAdapter(
        HttpRequest request, ClaimsPrincipal user, ServiceDbContext db, IBlobStore blobs, IOptions<FileLimits> limits, IOptions<QuotaOptions> quotas,
        CancellationToken cancel)
    {
        var (form, refused) = await Forms.ReadUploadAsync(request, limits.Value.MaxUploadBytes,
            "the adapter as multipart/form-data with fields 'file', 'model' and optionally 'suffix'", cancel);
        if (form is null) return refused!;
        var upload = form.Files.GetFile("file");
        if (upload is null) return OpenAiErrors.BadRequest("Missing required parameter: 'file'.", "file");
        string modelId = form["model"].ToString(), suffix = form["suffix"].ToString();
        var baseModel = await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == modelId, cancel);
        if (baseModel is null) return OpenAiErrors.NotFound($"Base model '{modelId}' does not exist.", "model", "model_not_found");
        if (suffix.Length > 64 || suffix.Any(c => !char.IsAsciiLetterOrDigit(c) && c is not ('-' or '_')))
            return OpenAiErrors.BadRequest("suffix must be up to 64 letters, digits, '-' and '_'.", "suffix");

        var adapterId = "adapter-" + Ids.New();
        var temp = blobs.NewTempFolder();
        try
        {
            var zipPath = Path.Combine(temp, "upload.zip");   // a file on disk: zip reading seeks, which request streams do poorly
            await using (var file = File.Create(zipPath)) await upload.CopyToAsync(file, cancel);
            await using (var zip = File.OpenRead(zipPath))
                SafeZip.Extract(zip, temp, limits.Value.MaxUploadBytes, name => PeftFiles.Contains(name) || TextFiles.Contains(name), PeftFiles);
            File.Delete(zipPath);
            // The template it was trained with (as transformers and this service save it) goes with it, if it parses and suits the base.
            if (baseModel.Family != "vit") ModelText.ForModel(blobs.Resolve(baseModel.BlobPath)).ReadAdapterFiles(temp);
            AdapterConfig config;
            long parameters;
            var baseConfig = ModelConfig.Load(Path.Combine(blobs.Resolve(baseModel.BlobPath), ModelFolder.ConfigFile));
            using (var served = ServedAdapter.Load(temp, baseConfig))
            {
                config = served.Config;
                parameters = served.ParameterCount;
            }
            if (await Quotas.RefuseAsync(db, blobs, quotas.Value, user.ProjectId()!, "adapters", FolderBytes(temp), cancel) is { } over) return over;
            var blobPath = BlobPaths.AdapterPath(adapterId);
            blobs.CommitFolder(temp, blobPath);
            var adapter = new Adapter
            {
                Id = adapterId, ProjectId = user.ProjectId()!, Name = ModelNames.FineTuned(baseModel.Id, suffix, adapterId), BaseModel = baseModel.Id, Method = config.Method,
                Config = config.ToJson(), ParameterCount = parameters, SizeBytes = blobs.SizeOf(blobPath),
                BlobPath = blobPath, Sha256 = blobs.ContentHash(blobPath), CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
            };
            db.Adapters.Add(adapter);
            await BaseModelsApi.SaveOrDropAsync(db, blobs, blobPath, cancel);
            return TypedResults.Ok(adapter.ToDto());
        }
        catch (Exception e) when (e is InvalidDataException or IOException or JsonException or NotSupportedException && !StorageFullException.IsCause(e))
        {
            return OpenAiErrors.BadRequest($"Not an importable adapter: {e.Message}", "file", "invalid_adapter");
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    static long FolderBytes(string folder) => new DirectoryInfo(folder).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
}
