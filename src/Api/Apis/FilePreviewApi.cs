using AdapterService.Api.Infrastructure;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Apis;

/// <param name="Model" example="tiny-llama-demo">The base model (or a fine-tuned model, whose base is used) the file would train.</param>
/// <param name="MaxExamples">How many of the first examples to render (1 to 20, default 3).</param>
/// <param name="ChatTemplate">As a job's chat_template: a name of the base's templates or a template's source (default: the base's own).</param>
public sealed record FilePreviewRequest(string? Model, int? MaxExamples, string? ChatTemplate);

/// <summary>A run of tokens of one sequence, decoded; <c>trained</c>: the loss is computed on them (the assistant's turns, a completion).</summary>
public sealed record PreviewSegment(string Text, bool Trained);

/// <summary>One sequence an example trains on (a preference pair has two: chosen, then rejected), cut to the context as training cuts it.</summary>
public sealed record PreviewSequence(int Tokens, int TrainedTokens, bool Truncated, IReadOnlyList<PreviewSegment> Segments);

/// <summary>An example as the model will see it; <c>label</c> for an image.</summary>
public sealed record PreviewExample(int Line, IReadOnlyList<PreviewSequence>? Sequences, string? Label, string? ImageSize);

/// <summary>Examples whose longest sequence has from <c>from</c> to <c>to</c> tokens (both included).</summary>
public sealed record HistogramBin(int From, int To, int Count);

/// <summary>Token counts of the first <c>counted</c> examples (each example's longest sequence, before cutting to the context).</summary>
public sealed record TokenCounts(int Counted, int Min, int Max, double Mean, long Total, IReadOnlyList<HistogramBin> Histogram);

/// <summary>What a job would train on: the file's first examples rendered with the model's text rules, and counts over the file.</summary>
public sealed record FilePreviewResponse(
    string Object, string FileId, string Model, string Format, int Examples, int? ContextLength, IReadOnlyList<PreviewExample> Data,
    TokenCounts? TokenCounts, int? Truncated, IReadOnlyList<int>? TruncatedLines, IReadOnlyDictionary<string, int>? LabelCounts);

/// <summary><c>POST /v1/files/{file_id}/preview</c>: a training file seen through a base model's tokenizer and chat template before a job starts.</summary>
public static class FilePreviewApi
{
    /// <summary>At most this many examples are tokenized for the counts: the work of one request stays bounded whatever the file's size.</summary>
    public const int MaxCounted = 2000;
    const int MaxRendered = 20, Bins = 10;

    public static RouteGroupBuilder MapFilePreview(this RouteGroupBuilder files)
    {
        files.MapPost("/{fileId}/preview", Preview).WithName("previewFile").WithErrors(400, 404)
            .WithSummary("Preview a training file with a model: its first examples rendered with the chat template, token counts, truncation, labels")
            .WithDescription($"Our extension. Renders the first `max_examples` examples as the job would train on them (the trained tokens marked), counts the tokens of the first {MaxCounted} examples (a histogram), and how many exceed the model's context and would be cut. For a file of labelled images: each label's number of images.");
        return files;
    }

    static async Task<Results<Ok<FilePreviewResponse>, JsonHttpResult<ErrorResponse>>> Preview(
        string fileId, FilePreviewRequest? request, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel)
    {
        var row = await db.Files.AsNoTracking().SingleOrDefaultAsync(f => f.Id == fileId, cancel);
        if (row is null) return OpenAiErrors.NotFound($"No such File object: {fileId}", "id");
        if (string.IsNullOrEmpty(request?.Model)) return OpenAiErrors.BadRequest("Missing required parameter: 'model'.", "model");
        int shown = request.MaxExamples ?? 3;
        if (shown is < 1 or > MaxRendered) return OpenAiErrors.BadRequest($"max_examples must be between 1 and {MaxRendered}.", "max_examples");
        var model = await ModelNames.ResolveAsync(db, request.Model, cancel);
        if (model is null) return OpenAiErrors.NotFound($"The model '{request.Model}' does not exist.", "model", "model_not_found");

        TrainingFile file;
        await using (var stream = blobs.OpenRead(row.BlobPath))
            file = TrainingFile.Parse(stream, new TrainingFileOptions(KeepPixels: false, MaxDecodedBytes: long.MaxValue));   // checked at upload

        bool images = model.Base.Family == "vit";
        if (images != (file.Format == TrainingFileFormat.Image))
            return OpenAiErrors.BadRequest(images ? FileFacts.WrongFormatForImages(model.Base.Family, file.FormatName) : FileFacts.ImagesForLanguageModel, "model");
        if (images)
        {
            var labelled = file.Examples.Cast<ImageExample>().ToList();
            var counts = labelled.GroupBy(e => e.Label).OrderBy(g => g.Key, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Count());
            var first = labelled.Take(shown).Select(e => new PreviewExample(e.Line, null, e.Label, $"{e.Image.Width}x{e.Image.Height}")).ToList();
            return TypedResults.Ok(new FilePreviewResponse("file.preview", fileId, request.Model, file.FormatName, file.Examples.Count, null, first, null, null, null, counts));
        }

        var text = ModelText.ForModel(blobs.Resolve(model.Base.BlobPath));
        int context = model.Base.ContextLength;
        ChatTemplate? template;
        try
        {
            // As the worker chooses (JobFiles): a template only where the examples are chats, or where one is asked for.
            template = request.ChatTemplate is not null || file.Examples.Any(e => e is ChatExample or PromptExample or PreferenceExample)
                ? text.ChooseTemplate(request.ChatTemplate) : null;
        }
        catch (NotSupportedException e) { return OpenAiErrors.BadRequest($"The model '{request.Model}' cannot render this {file.FormatName} file: {e.Message}.", "model"); }
        catch (ChatTemplateException e) { return OpenAiErrors.BadRequest($"Chat template error: {e.Message}", "chat_template"); }

        var data = new List<PreviewExample>();
        var lengths = new List<int>();
        var truncated = new List<int>();
        foreach (var example in file.Examples.Take(MaxCounted))
        {
            IReadOnlyList<TokenSequence> sequences;
            try { sequences = text.EncodeExample(example, template); }
            catch (ChatTemplateException e) { return OpenAiErrors.BadRequest($"Line {example.Line}: the chat template cannot render this example: {e.Message}", "file"); }
            int longest = sequences.Max(s => s.Ids.Length);
            lengths.Add(longest);
            if (longest > context) truncated.Add(example.Line);
            if (data.Count < shown) data.Add(new PreviewExample(example.Line, sequences.Select(s => Render(s, text.Tokenizer, context)).ToList(), null, null));
        }
        return TypedResults.Ok(new FilePreviewResponse("file.preview", fileId, request.Model, file.FormatName, file.Examples.Count, context, data,
            Count(lengths), truncated.Count, truncated.Take(20).ToList(), null));
    }

    /// <summary>The sequence cut to the context, decoded in runs of trained and untrained tokens (special tokens written out).</summary>
    static PreviewSequence Render(TokenSequence sequence, ITextTokenizer tokenizer, int context)
    {
        int n = Math.Min(sequence.Ids.Length, context);
        var segments = new List<PreviewSegment>();
        for (int start = 0; start < n;)
        {
            int end = start;
            while (end < n && sequence.Train[end] == sequence.Train[start]) end++;
            segments.Add(new PreviewSegment(tokenizer.Decode(sequence.Ids[start..end], skipSpecialTokens: false), sequence.Train[start]));
            start = end;
        }
        return new PreviewSequence(sequence.Ids.Length, sequence.Train.Take(n).Count(t => t), sequence.Ids.Length > context, segments);
    }

    /// <summary><see cref="Bins"/> equal bins from 0 to the longest (whole tokens wide).</summary>
    static TokenCounts? Count(List<int> lengths)
    {
        if (lengths.Count == 0) return null;
        int max = lengths.Max(), width = Math.Max(1, (max + Bins) / Bins);
        var histogram = Enumerable.Range(0, (max / width) + 1)
            .Select(b => new HistogramBin(b * width, (b + 1) * width - 1, lengths.Count(l => l / width == b))).ToList();
        return new TokenCounts(lengths.Count, lengths.Min(), max, Math.Round(lengths.Average(), 2), lengths.Sum(l => (long)l), histogram);
    }
}
