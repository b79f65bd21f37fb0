using System.Text.Json;
using AdapterService.Core.Data;
using AdapterService.Core.Grading;
using AdapterService.Core.Text;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Training;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Jobs;

/// <summary>
/// A job's data files as job creation checks them: from the facts stored at upload, and for a language model from the
/// token count stored per base model. The file is read only for what was never measured: a row from before facts were
/// stored, or a base it was not tokenized for yet.
/// </summary>
public static class JobFiles
{
    /// <summary>The file's facts and token count; the count with a job's own chat template (a name of the base's templates or a source) is not stored.</summary>
    public static async Task<DataFile> ReadAsync(ServiceDbContext db, IBlobStore blobs, string fileId, string param, BaseModel baseModel,
        ModelConfig baseConfig, string? chatTemplate, CancellationToken cancel)
    {
        var row = await db.Files.SingleOrDefaultAsync(f => f.Id == fileId, cancel);
        if (row is null) return Failed(fileId, new($"File {fileId} does not exist.", param, "file_not_found"));
        if (row.Purpose != "fine-tune") return Failed(fileId, new($"File {fileId} has purpose '{row.Purpose}', not 'fine-tune'.", param));
        try
        {
            TrainingFile? parsed = null;
            var facts = FileFacts.From(row);
            if (facts is null)
            {
                parsed = Parse(blobs, row);
                facts = FileFacts.Of(parsed);
                facts.WriteTo(row);
                await db.SaveChangesAsync(cancel);
            }
            if (baseConfig is VitConfig) return new DataFile(fileId, facts, null);   // images: JobSpecification checks the facts
            if (facts.Format == TrainingFileFormat.Image) throw new TrainingFileException(0, FileFacts.ImagesForLanguageModel);
            if (chatTemplate is null
                && await db.FileTokenCounts.AsNoTracking().SingleOrDefaultAsync(c => c.FileId == fileId && c.BaseModel == baseModel.Id, cancel) is { } stored)
                return new DataFile(fileId, facts, stored.Tokens);
            parsed ??= Parse(blobs, row);
            long tokens = Tokenize(parsed, blobs, baseModel, chatTemplate).Tokens;
            if (chatTemplate is not null) return new DataFile(fileId, facts, tokens);
            var count = new FileTokenCount { FileId = fileId, BaseModel = baseModel.Id, Tokens = tokens };
            db.FileTokenCounts.Add(count);
            try { await db.SaveChangesAsync(cancel); }
            catch (DbUpdateException) { db.Entry(count).State = EntityState.Detached; }   // measured by a concurrent request: the same number
            return new DataFile(fileId, facts, tokens);
        }
        catch (TrainingFileException e)
        {
            return Failed(fileId, new($"File {fileId} is invalid: {e.Message}", param, "invalid_file"));
        }
        catch (ChatTemplateException e)
        {
            return Failed(fileId, new($"The chat template cannot be used with the model '{baseModel.Id}': {e.Message}", "chat_template", "invalid_chat_template"));
        }
        catch (NotSupportedException e)
        {
            return Failed(fileId, new($"File {fileId} does not suit the model '{baseModel.Id}': {e.Message}.", param, "invalid_file"));
        }
    }

    /// <summary>
    /// The worker's read of a language model's file: it needs the token ids, so this one parses and tokenizes; whatever
    /// is wrong with the bytes now (they were checked at upload) throws <see cref="TrainingFileException"/> and fails the job.
    /// </summary>
    public static TokenizedFile LoadTokenized(ServiceDbContext db, IBlobStore blobs, string fileId, BaseModel baseModel, string? chatTemplate) =>
        Tokenize(Parse(blobs, db.Files.AsNoTracking().Single(f => f.Id == fileId)), blobs, baseModel, chatTemplate);

    static TokenizedFile Tokenize(TrainingFile file, IBlobStore blobs, BaseModel baseModel, string? chatTemplate)
    {
        var text = ModelText.ForModel(blobs.Resolve(baseModel.BlobPath));
        var template = chatTemplate is not null || file.Examples.Any(e => e is ChatExample or PromptExample) ? text.ChooseTemplate(chatTemplate) : null;
        return TrainingData.Tokenize(file, text, template, baseModel.ContextLength);
    }

    /// <summary>
    /// The worker's read of a reinforcement file: each prompt's ids (rendered with the job's chat template and the
    /// generation prompt, cut to leave <paramref name="completionTokens"/> of the context for the answer) and its line, the grader's item.
    /// </summary>
    public static List<RlPrompt> LoadPrompts(ServiceDbContext db, IBlobStore blobs, string fileId, BaseModel baseModel, string? chatTemplate, int completionTokens)
    {
        var file = Parse(blobs, db.Files.AsNoTracking().Single(f => f.Id == fileId));
        var text = ModelText.ForModel(blobs.Resolve(baseModel.BlobPath));
        var template = text.ChooseTemplate(chatTemplate);
        int room = Math.Max(1, baseModel.ContextLength - completionTokens);
        return file.Examples.OfType<PromptExample>().Select(p =>
        {
            var ids = text.EncodePrompt(p, template).Ids;
            return new RlPrompt(p.Line, ids.Length > room ? ids[^room..] : ids, JsonDocument.Parse(p.Item).RootElement.Clone());
        }).ToList();
    }

    /// <summary>
    /// The first line of a reinforcement file that lacks an item field <paramref name="grader"/> renders, as
    /// "Line N: ..." naming the field; null when every line has every field (or the file is of another format).
    /// </summary>
    public static async Task<string?> MissingGraderFieldAsync(ServiceDbContext db, IBlobStore blobs, string fileId, Grader grader, CancellationToken cancel)
    {
        var row = await db.Files.AsNoTracking().SingleAsync(f => f.Id == fileId, cancel);
        foreach (var p in Parse(blobs, row).Examples.OfType<PromptExample>())
        {
            using var item = JsonDocument.Parse(p.Item);
            if (grader.MissingItemField(item.RootElement) is { } field)
                return $"Line {p.Line} of file {fileId} has no field '{field[5..]}', which the grader uses as {{{{{field}}}}}.";
        }
        return null;
    }

    /// <summary>The worker's read of an image file: its pixels and class indices into <paramref name="labels"/>.</summary>
    public static LabelledImages LoadImages(ServiceDbContext db, IBlobStore blobs, string fileId, VitConfig config, IReadOnlyList<string> labels) =>
        ImageData.Read(Parse(blobs, db.Files.AsNoTracking().Single(f => f.Id == fileId),
            new TrainingFileOptions(KeepPixels: true, ImageSide: config.ImageSize, MaxDecodedBytes: long.MaxValue)), config, labels);   // the budget was held at upload

    static DataFile Failed(string fileId, JobSpecError error) => new(fileId, null, null, error);

    /// <summary>Without options for facts and text: an image line keeps its size, not its pixels.</summary>
    static TrainingFile Parse(IBlobStore blobs, StoredFile row, TrainingFileOptions? options = null)
    {
        using var stream = blobs.OpenRead(row.BlobPath);
        return TrainingFile.Parse(stream, options ?? new TrainingFileOptions(KeepPixels: false, MaxDecodedBytes: long.MaxValue));
    }
}
