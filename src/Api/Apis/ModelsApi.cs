using System.Security.Claims;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Inference;
using AdapterService.Core.Jobs;
using AdapterService.Core.Exports;
using AdapterService.Core.Models;
using AdapterService.Core.Pretraining;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Apis;

/// <summary>OpenAI's model object; <c>parent</c> is the base of a fine-tuned model.</summary>
public sealed record ModelDto(string Id, string Object, long Created, string OwnedBy, string? Parent, string? Description);

/// <summary>A pre-training of a built-in base model: the fine-tuning job (<c>job_id</c>) whose events and SignalR messages follow it.</summary>
public sealed record PretrainingDto(string Id, string Object, string Status, string JobId);

public static class ModelsApi
{
    public static IEndpointRouteBuilder MapModelsApi(this IEndpointRouteBuilder app)
    {
        var models = app.MapGroup("/v1/models").WithTags("Models");
        models.MapGet("/", ListModels).WithName("listModels").WithSummary("List base models and fine-tuned models");
        models.MapGet("/{model}", GetModel).WithName("retrieveModel").WithErrors(404).WithSummary("Retrieve a base or fine-tuned model");
        models.MapGet("/{model}/export", ExportModel).WithName("exportModel").Produces<Stream>(200, "application/zip", "application/octet-stream").WithErrors(400, 404)
            .WithSummary("Download a model as a zipped Hugging Face folder (a base as stored, a fine-tuned model with its adapter merged into the weights), or with format=gguf as one GGUF file for llama.cpp and Ollama (type f32, f16, bf16 or q8_0)");
        models.MapPost("/{model}/pretrain", Pretrain).WithName("pretrainModel").WithErrors(400, 404, 409, 429)
            .WithSummary("Queue the pre-training of a built-in base model (vit-fashion-mnist-demo, fortunes-llama-demo)")
            .WithDescription("The service pre-trains its demo ViT on Fashion-MNIST classes 0-4 from Debian's dataset-fashion-mnist package, and its demo language model on Debian's fortunes package. 202 with `job_id` while queued or running: a fine-tuning job of method `pretraining` whose events and SignalR `progress`/`status` messages report it. 200 with the model when it exists already.");
        models.MapDelete("/{model}", DeleteModel).WithName("deleteModel").WithErrors(400, 404).WithSummary("Delete a fine-tuned model (its adapter and files)");
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
        var found = await ModelNames.FindAsync(db, model, cancel);
        if (found?.Adapter is { } adapter)
        {
            await AdaptersApi.DeleteAsync(adapter, db, blobs, engine, cancel);
            return TypedResults.Ok(new DeletedDto(model, "model", true));
        }
        return found?.Base is not null
            ? OpenAiErrors.BadRequest($"{model} is a base model; only fine-tuned models can be deleted here.", "model", "cannot_delete_base_model")
            : OpenAiErrors.NotFound($"The model '{model}' does not exist.", "model", "model_not_found");
    }

    /// <summary>The GGUF tensor type an export asks for (<paramref name="fallback"/> when none), or the 400 for a wrong one.</summary>
    internal static JsonHttpResult<ErrorResponse>? GgufTypeOf(string? format, string? type, GgufType fallback, out GgufType chosen)
    {
        chosen = fallback;
        if (type is null) return null;
        if (format == "gguf" && GgufExport.Types.TryGetValue(type, out chosen)) return null;
        return OpenAiErrors.BadRequest(format != "gguf" ? "type applies to format=gguf only."
            : $"type '{type}' is not one of {string.Join(", ", GgufExport.Types.Keys)}.", "type", "invalid_type");
    }

    /// <summary>
    /// A zipped Hugging Face folder, or with <c>format=gguf</c> one GGUF file of <c>type</c> f32, f16 (the default: half the
    /// size, what llama.cpp's converter writes by default), bf16 or q8_0. A fine-tuned model comes with its adapter merged.
    /// </summary>
    static async Task<Results<ZipFolderResult, FileStreamHttpResult, JsonHttpResult<ErrorResponse>>> ExportModel(
        string model, string? format, string? type, HttpContext context, ServiceDbContext db, IBlobStore blobs, ExportSlots exports, CancellationToken cancel)
    {
        if (format is not (null or "hf" or "gguf"))
            return OpenAiErrors.BadRequest($"format '{format}' is not one of hf (a zipped Hugging Face folder, the default) and gguf.", "format", "invalid_format");
        if (GgufTypeOf(format, type, GgufType.F16, out var ggufType) is { } badType) return badType;
        var resolved = await ModelNames.ResolveAsync(db, model, cancel);
        if (resolved is null) return OpenAiErrors.NotFound($"The model '{model}' does not exist.", "model", "model_not_found");
        if (exports.TryTake(context) is { } busy) return busy;   // held until the response is sent
        string baseFolder = blobs.Resolve(resolved.Base.BlobPath), temp = blobs.NewTempFolder();
        context.Response.RegisterForDispose(new DeleteWhenDone(temp));   // once the zip is streamed from it, or the request failed
        string? adapterFolder = resolved.AdapterBlobPath is { } adapterPath ? blobs.Resolve(adapterPath) : null;
        try
        {
            if (format == "gguf")
            {
                using var scope = TorchSharp.torch.NewDisposeScope();
                using var loaded = adapterFolder is null ? ModelFolder.Load(baseFolder, BasePrecision.AsStored) : Merged(baseFolder, adapterFolder);
                try
                {
                    return TypedResults.File(WriteGguf(model, loaded, baseFolder, adapterFolder, ggufType, temp + ".gguf"),
                        "application/octet-stream", $"{model.Replace(':', '_')}-{type ?? "f16"}.gguf");
                }
                catch (NotSupportedException e)
                {
                    return OpenAiErrors.BadRequest($"{model} cannot be exported as GGUF: {e.Message}.", "model", "not_exportable");
                }
            }
            var folder = baseFolder;
            if (adapterFolder is not null)
            {
                MergeInto(baseFolder, adapterFolder, temp);
                folder = temp;
            }
            return new ZipFolderResult(folder, $"{model.Replace(':', '_')}.zip");
        }
        catch (NotSupportedException e)
        {
            return OpenAiErrors.BadRequest($"{model} cannot be exported merged: {e.Message}.", "model", "not_mergeable");
        }
    }

    /// <summary>
    /// Writes the GGUF to <paramref name="path"/> one tensor at a time and returns it opened for the response, which
    /// deletes it once sent.
    /// </summary>
    static FileStream WriteGguf(string model, TorchSharp.torch.nn.Module loaded, string baseFolder, string? adapterFolder, GgufType type, string path)
    {
        var text = ModelText.ForModel(baseFolder);
        var file = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 20, FileOptions.DeleteOnClose);
        try
        {
            GgufExport.Write(file, loaded, baseFolder, model, type, text.TemplateOfAdapter(adapterFolder) ?? text.Template);
            file.Position = 0;
            return file;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>Writes the base with the adapter folded into its weights (and the base's other files, such as the tokenizer) into <paramref name="output"/>.</summary>
    static void MergeInto(string baseFolder, string adapterFolder, string output)
    {
        using var scope = TorchSharp.torch.NewDisposeScope();
        using var model = Merged(baseFolder, adapterFolder);
        ModelFolder.Save(model, output);
        // The model chats with the template it was trained with: the folder carries it (transformers reads chat_template.jinja first).
        string trained = Path.Combine(adapterFolder, ModelText.TemplateFile);
        if (File.Exists(trained)) File.Copy(trained, Path.Combine(output, ModelText.TemplateFile));
        foreach (var file in Directory.GetFiles(baseFolder).Where(f => !File.Exists(Path.Combine(output, Path.GetFileName(f)))))
            File.Copy(file, Path.Combine(output, Path.GetFileName(file)));
    }

    /// <summary>The base with the adapter folded into its weights, kept in the base file's types (a bf16 base stays bf16).</summary>
    static TorchSharp.torch.nn.Module<TorchSharp.torch.Tensor, TorchSharp.torch.Tensor> Merged(string baseFolder, string adapterFolder)
    {
        var model = ModelFolder.Load(baseFolder, BasePrecision.AsStored);
        try
        {
            using var adapter = TrainableAdapter.Create(model, AdapterConfig.Load(adapterFolder));
            adapter.LoadWeights(adapterFolder);
            adapter.Attach(model);
            adapter.Merge(model);
            if (model.LinearLayers().Any(l => l.Layer.Adapter is not null) || model.NormLayers().Any(n => n.Layer.Adapter is not null))
                throw new NotSupportedException("its shifts have no bias to go into in this model");
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Queues a pre-training job for a built-in base, or answers with the one queued or running already; once the model
    /// exists, answers with it. The job is the caller's project's, so its events and SignalR messages are theirs to follow.
    /// </summary>
    /// <summary>One check-and-create at a time in this process: concurrent POSTs find the job the first one made.</summary>
    static readonly SemaphoreSlim PretrainGate = new(1, 1);

    static async Task<Results<Ok<ModelDto>, Accepted<PretrainingDto>, JsonHttpResult<ErrorResponse>>> Pretrain(
        string model, ServiceDbContext db, IEnumerable<IPretrainedBuiltin> builtins, JobLifecycle jobs, ClaimsPrincipal user,
        IOptions<LimitsOptions> limits, CancellationToken cancel)
    {
        var builtin = builtins.FirstOrDefault(b => b.Id == model);
        if (builtin is null)
            return OpenAiErrors.NotFound($"The service pre-trains only {string.Join(" and ", builtins.Select(b => b.Id))}; '{model}' is not one of its built-in models.",
                "model", "model_not_found");
        await PretrainGate.WaitAsync(cancel);
        try
        {
            if (await db.BaseModels.AsNoTracking().SingleOrDefaultAsync(m => m.Id == model, cancel) is { } existing) return TypedResults.Ok(existing.ToDto());
            if (await db.Jobs.AsNoTracking().IgnoreQueryFilters()
                    .Where(j => j.AdapterType == JobKinds.PretrainingType && j.Model == model && JobStatus.Unfinished.Contains(j.Status))
                    .FirstOrDefaultAsync(cancel) is { } running)
            {
                // Another project's job id is theirs: its events and hub messages are not this caller's to follow.
                if (running.ProjectId == user.ProjectId())
                    return TypedResults.Accepted($"/v1/fine_tuning/jobs/{running.Id}", new PretrainingDto(model, "model.pretraining", running.Status, running.Id));
                return OpenAiErrors.Error(StatusCodes.Status409Conflict,
                    $"{model} is being pre-trained for another project; it is served to every project once that job has finished.", "model", "pretraining_in_progress");
            }
            // A pre-training job is a job of the caller's project: it counts against the project's cap like any other.
            int active = await db.Jobs.CountAsync(j => j.Status == JobStatus.ValidatingFiles || j.Status == JobStatus.Queued || j.Status == JobStatus.Running, cancel);
            if (active >= limits.Value.MaxActiveJobsPerProject)
                return OpenAiErrors.Error(StatusCodes.Status429TooManyRequests,
                    $"This project already has {active} fine-tuning jobs queued or running, the most allowed at once ({limits.Value.MaxActiveJobsPerProject}). Wait for one to finish or cancel one.",
                    null, "too_many_active_jobs");
            try
            {
                builtin.EnsureDataInstalled();
            }
            catch (DatasetMissingException e)
            {
                return OpenAiErrors.BadRequest(e.Message, "model", "dataset_missing");
            }
            long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            var job = new FineTuningJob
            {
                Id = "ftjob-" + Ids.New(), ProjectId = user.ProjectId()!, Model = model, TrainingFile = builtin.Corpus,
                CreatedAt = now, Epochs = 1, LearningRateMultiplier = 1, AdapterType = JobKinds.PretrainingType, AdapterConfig = builtin.Settings,
            };
            await jobs.CreateAsync(job, [], [], $"Pre-training job created for {model}", cancel);
            return TypedResults.Accepted($"/v1/fine_tuning/jobs/{job.Id}", new PretrainingDto(model, "model.pretraining", job.Status, job.Id));
        }
        finally
        {
            PretrainGate.Release();
        }
    }

    static async Task<Results<Ok<ModelDto>, JsonHttpResult<ErrorResponse>>> GetModel(string model, ServiceDbContext db, CancellationToken cancel) =>
        await ModelNames.FindAsync(db, model, cancel) switch
        {
            { Adapter: { } adapter } => TypedResults.Ok(adapter.ToModelDto()),
            { Checkpoint: { } checkpoint } => TypedResults.Ok(new ModelDto(checkpoint.Name, "model", checkpoint.CreatedAt, "user", checkpoint.BaseModel,
                $"checkpoint at step {checkpoint.StepNumber} of {checkpoint.JobId}")),
            { Base: { } baseModel } => TypedResults.Ok(baseModel.ToDto()),
            _ => (Results<Ok<ModelDto>, JsonHttpResult<ErrorResponse>>)OpenAiErrors.NotFound($"The model '{model}' does not exist.", "model", "model_not_found"),
        };
}
