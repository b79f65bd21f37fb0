using AdapterService.Api.Infrastructure;
using AdapterService.Core.Data;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Apis;

/// <summary>OpenAI's file object.</summary>
public sealed record FileDto(string Id, string Object, long Bytes, long CreatedAt, string Filename, string Purpose, string Status);

public static class FilesApi
{
    public static IEndpointRouteBuilder MapFilesApi(this IEndpointRouteBuilder app)
    {
        var files = app.MapGroup("/v1/files").WithTags("Files");
        files.MapPost("/", UploadFile).DisableAntiforgery().WithErrors(400)
            .WithSummary("Upload a file")
            .WithDescription("Multipart form with `file` and `purpose=fine-tune`. Training files are JSONL: chat (`{\"messages\": [...]}`) or prompt/completion (`{\"prompt\": \"...\", \"completion\": \"...\"}`); each line is validated and the first bad line is reported by number.");
        files.MapGet("/{fileId}", GetFile).WithErrors(404).WithSummary("Retrieve a file's metadata");
        return app;
    }

    public static FileDto ToDto(this StoredFile f) => new(f.Id, "file", f.Bytes, f.CreatedAt, f.Filename, f.Purpose, "processed");

    static async Task<Results<Ok<FileDto>, JsonHttpResult<ErrorResponse>>> UploadFile(
        HttpRequest request, ServiceDbContext db, BlobStore blobs, CancellationToken cancel)
    {
        if (!request.HasFormContentType)
            return OpenAiErrors.BadRequest("Upload the file as multipart/form-data with fields 'file' and 'purpose'.");
        var form = await request.ReadFormAsync(cancel);
        var purpose = form["purpose"].ToString();
        if (purpose.Length == 0) return OpenAiErrors.BadRequest("Missing required parameter: 'purpose'.", "purpose");
        if (purpose != "fine-tune")
            return OpenAiErrors.BadRequest($"'{purpose}' is not a supported purpose; supported: 'fine-tune'.", "purpose");
        var upload = form.Files.GetFile("file");
        if (upload is null) return OpenAiErrors.BadRequest("Missing required parameter: 'file'.", "file");

        TrainingFile parsed;
        try
        {
            await using var check = upload.OpenReadStream();
            parsed = TrainingFile.Parse(check);
        }
        catch (TrainingFileException e)
        {
            return OpenAiErrors.BadRequest($"Invalid file format for fine-tuning: {e.Message}", "file", "invalid_file_format");
        }

        var id = "file-" + Ids.New();
        var blobPath = BlobStore.FilePath(id);
        long bytes;
        await using (var content = upload.OpenReadStream()) bytes = await blobs.WriteAsync(blobPath, content, cancel);
        var row = new StoredFile
        {
            Id = id, Filename = Path.GetFileName(upload.FileName), Purpose = purpose, Bytes = bytes, BlobPath = blobPath,
            CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), ExampleCount = parsed.Examples.Count,
            Format = parsed.Format == TrainingFileFormat.Chat ? "chat" : "prompt_completion",
        };
        db.Files.Add(row);
        await db.SaveChangesAsync(cancel);
        return TypedResults.Ok(row.ToDto());
    }

    static async Task<Results<Ok<FileDto>, JsonHttpResult<ErrorResponse>>> GetFile(string fileId, ServiceDbContext db, CancellationToken cancel) =>
        await db.Files.AsNoTracking().SingleOrDefaultAsync(f => f.Id == fileId, cancel) is { } file
            ? TypedResults.Ok(file.ToDto())
            : OpenAiErrors.NotFound($"No such File object: {fileId}", "id");
}
