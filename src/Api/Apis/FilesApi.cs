using System.Security.Claims;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Data;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Apis;

/// <summary>OpenAI's file object.</summary>
public sealed record FileDto(string Id, string Object, long Bytes, long CreatedAt, string Filename, string Purpose, string Status);

/// <summary>A page of files, with OpenAI's cursor fields.</summary>
public sealed record FileListResponse(string Object, IReadOnlyList<FileDto> Data, bool HasMore, string? FirstId, string? LastId);

public sealed record DeletedDto(string Id, string Object, bool Deleted);

/// <summary><c>Files:MaxUploadBytes</c>: the largest upload accepted (default 512 MiB).</summary>
public sealed class FileLimits
{
    public long MaxUploadBytes { get; set; } = 512L << 20;
    /// <summary><c>Files:MaxModelUploadBytes</c>: the largest zipped base model accepted, and the most its files may unpack to (default 16 GiB).</summary>
    public long MaxModelUploadBytes { get; set; } = 16L << 30;
    /// <summary>
    /// <c>Files:MaxDecodedImageBytes</c>: the grayscale bytes an image file's images may decode to together (default
    /// 1 GiB), checked from each PNG's header before it is inflated: a few KB of PNG can declare 16 MB of pixels.
    /// </summary>
    public long MaxDecodedImageBytes { get; set; } = TrainingFileOptions.DefaultMaxDecodedBytes;
}

public static class FilesApi
{
    public static IEndpointRouteBuilder MapFilesApi(this IEndpointRouteBuilder app)
    {
        var files = app.MapGroup("/v1/files").WithTags("Files");
        files.MapPost("/", UploadFile).WithName("createFile").DisableAntiforgery().WithErrors(400, 413, 415)
            .WithSummary("Upload a file")
            .WithDescription("Multipart form with `file` and `purpose=fine-tune`. Training files are JSONL: chat (`{\"messages\": [...]}`) or prompt/completion (`{\"prompt\": \"...\", \"completion\": \"...\"}`); each line is validated and the first bad line is reported by number.");
        files.MapGet("/", ListFiles).WithName("listFiles").WithErrors(400).WithSummary("List files, newest first by default (paged with after/limit, filtered by purpose)");
        files.MapGet("/{fileId}", GetFile).WithName("retrieveFile").WithErrors(404).WithSummary("Retrieve a file's metadata");
        files.MapGet("/{fileId}/content", GetFileContent).WithName("downloadFile").Produces<Stream>(200, "application/octet-stream").WithErrors(404).WithSummary("Download a file's content");
        files.MapDelete("/{fileId}", DeleteFile).WithName("deleteFile").WithErrors(404, 409).WithSummary("Delete a file (refused while an unfinished job uses it)");
        files.MapFilePreview();
        return app;
    }

    public static FileDto ToDto(this StoredFile f) => new(f.Id, "file", f.Bytes, f.CreatedAt, f.Filename, f.Purpose, "processed");

    static async Task<Results<Ok<FileDto>, JsonHttpResult<ErrorResponse>>> UploadFile(
        HttpRequest request, ClaimsPrincipal user, ServiceDbContext db, IBlobStore blobs, IOptions<FileLimits> limits,
        IOptions<LimitsOptions> trainingLimits, IOptions<QuotaOptions> quotas, CancellationToken cancel)
    {
        var (form, refused) = await Forms.ReadUploadAsync(request, limits.Value.MaxUploadBytes,
            "the file as multipart/form-data with fields 'file' and 'purpose'", cancel);
        if (form is null) return refused!;
        var purpose = form["purpose"].ToString();
        if (purpose.Length == 0) return OpenAiErrors.BadRequest("Missing required parameter: 'purpose'.", "purpose");
        if (purpose != "fine-tune")
            return OpenAiErrors.BadRequest($"'{purpose}' is not a supported purpose; supported: 'fine-tune'.", "purpose");
        var upload = form.Files.GetFile("file");
        if (upload is null) return OpenAiErrors.BadRequest("Missing required parameter: 'file'.", "file");
        // The quota before the parse: counting is cheap, checking every line is not.
        if (await Quotas.RefuseAsync(db, blobs, quotas.Value, user.ProjectId()!, "files", upload.Length, cancel) is { } over) return over;

        TrainingFile parsed;
        try
        {
            await using var check = upload.OpenReadStream();
            // Checked, not kept: an image line keeps its size and label, its pixels are inflated row by row and dropped.
            parsed = TrainingFile.Parse(check, new TrainingFileOptions(KeepPixels: false, MaxDecodedBytes: limits.Value.MaxDecodedImageBytes));
        }
        catch (TrainingFileException e)
        {
            return OpenAiErrors.BadRequest($"Invalid file format for fine-tuning: {e.Message}", "file", "invalid_file_format");
        }
        if (parsed.Examples.Count > trainingLimits.Value.MaxTrainingExamples)
            return OpenAiErrors.BadRequest($"Invalid file format for fine-tuning: {parsed.Examples.Count} examples, more than the limit of {trainingLimits.Value.MaxTrainingExamples}.",
                "file", "invalid_file_format");

        var id = "file-" + Ids.New();
        var blobPath = BlobPaths.FilePath(id);
        long bytes;
        await using (var content = upload.OpenReadStream()) bytes = await blobs.WriteAsync(blobPath, content, cancel);
        var row = new StoredFile
        {
            Id = id, ProjectId = user.ProjectId()!, Filename = Path.GetFileName(upload.FileName), Purpose = purpose, Bytes = bytes, BlobPath = blobPath,
            CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
        };
        // What job creation checks later (format, size, an image file's labels and sizes) is stored now: the file is parsed once.
        FileFacts.Of(parsed).WriteTo(row);
        db.Files.Add(row);
        await db.SaveChangesAsync(cancel);
        return TypedResults.Ok(row.ToDto());
    }

    static async Task<Results<Ok<FileListResponse>, JsonHttpResult<ErrorResponse>>> ListFiles(
        ServiceDbContext db, string? purpose, string? after, int? limit, string? order, CancellationToken cancel)
    {
        if (order is not (null or "asc" or "desc")) return OpenAiErrors.BadRequest("order must be 'asc' or 'desc'.", "order");
        if (limit is < 1 or > 10_000) return OpenAiErrors.BadRequest("limit must be between 1 and 10000.", "limit");
        int take = limit ?? 10_000;
        bool ascending = order == "asc";
        var query = db.Files.AsNoTracking().AsQueryable();
        if (purpose is not null) query = query.Where(f => f.Purpose == purpose);
        if (after is not null)
        {
            var cursor = await db.Files.AsNoTracking().SingleOrDefaultAsync(f => f.Id == after, cancel);
            if (cursor is null) return OpenAiErrors.BadRequest($"No such File object: {after}", "after");
            query = ascending ? query.Where(f => f.Sequence > cursor.Sequence) : query.Where(f => f.Sequence < cursor.Sequence);
        }
        query = ascending ? query.OrderBy(f => f.Sequence) : query.OrderByDescending(f => f.Sequence);
        var page = await query.Take(take + 1).ToListAsync(cancel);
        var data = page.Take(take).Select(f => f.ToDto()).ToList();
        return TypedResults.Ok(new FileListResponse("list", data, page.Count > take, data.FirstOrDefault()?.Id, data.LastOrDefault()?.Id));
    }

    static async Task<Results<FileStreamHttpResult, JsonHttpResult<ErrorResponse>>> GetFileContent(
        string fileId, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel) =>
        await db.Files.AsNoTracking().SingleOrDefaultAsync(f => f.Id == fileId, cancel) is { } file
            ? TypedResults.File(blobs.OpenRead(file.BlobPath), "application/octet-stream", file.Filename)
            : OpenAiErrors.NotFound($"No such File object: {fileId}", "id");

    static async Task<Results<Ok<DeletedDto>, JsonHttpResult<ErrorResponse>>> DeleteFile(
        string fileId, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel)
    {
        var file = await db.Files.SingleOrDefaultAsync(f => f.Id == fileId, cancel);
        if (file is null) return OpenAiErrors.NotFound($"No such File object: {fileId}", "id");
        var user = await db.Jobs.AsNoTracking()
            .Where(j => (j.TrainingFile == fileId || j.ValidationFile == fileId) && JobStatus.Unfinished.Contains(j.Status))
            .Select(j => j.Id).FirstOrDefaultAsync(cancel);
        if (user is not null)
            return OpenAiErrors.Error(StatusCodes.Status409Conflict, $"File {fileId} is in use by fine-tuning job {user}, which has not finished.", "id", "file_in_use");
        db.Files.Remove(file);
        await db.SaveChangesAsync(cancel);
        blobs.Delete(file.BlobPath);   // after the row: a crash in between leaves an orphan blob, never a row without its bytes
        return TypedResults.Ok(new DeletedDto(fileId, "file", true));
    }

    static async Task<Results<Ok<FileDto>, JsonHttpResult<ErrorResponse>>> GetFile(string fileId, ServiceDbContext db, CancellationToken cancel) =>
        await db.Files.AsNoTracking().SingleOrDefaultAsync(f => f.Id == fileId, cancel) is { } file
            ? TypedResults.Ok(file.ToDto())
            : OpenAiErrors.NotFound($"No such File object: {fileId}", "id");
}
