using AdapterService.Core.Data;
using AdapterService.Core.Text;

namespace AdapterService.Core.Training;

/// <summary>
/// A file's examples as token sequences, and the lines of those cut to the model's context. A preference file's pairs
/// are two sequences each, in order: the chosen conversation, then the rejected one.
/// </summary>
public sealed record TokenizedFile(List<TokenizedExample> Examples, IReadOnlyList<int> TruncatedLines)
{
    public long Tokens => Examples.Sum(e => (long)e.Ids.Length);

    /// <summary>The job event that says which examples were cut, or null when none was.</summary>
    public string? TruncationMessage(string file, int contextLength) => TruncatedLines.Count == 0 ? null
        : $"{TruncatedLines.Count} example(s) of {file} exceed the model's context of {contextLength} tokens and are cut to it: line(s) "
          + string.Join(", ", TruncatedLines.Take(20)) + (TruncatedLines.Count > 20 ? ", …" : "");
}

public static class TrainingData
{
    /// <summary>
    /// Tokenizes every example with the model's text rules and <paramref name="template"/> (the model's own when null);
    /// longer sequences are cut to the context length, as OpenAI does, and their lines reported.
    /// </summary>
    public static TokenizedFile Tokenize(TrainingFile file, ModelText text, ChatTemplate? template, int contextLength)
    {
        if (file.Format == TrainingFileFormat.Image) throw new TrainingFileException(0, FileFacts.ImagesForLanguageModel);
        var examples = new List<TokenizedExample>();
        var truncated = new SortedSet<int>();
        foreach (var example in file.Examples)
        {
            IReadOnlyList<TokenSequence> sequences;
            try { sequences = text.EncodeExample(example, template); }
            catch (ChatTemplateException e) { throw new TrainingFileException(example.Line, $"the chat template cannot render this example: {e.Message}"); }
            foreach (var (ids, train) in sequences)
            {
                if (ids.Length > contextLength) truncated.Add(example.Line);
                int n = Math.Min(ids.Length, contextLength);
                examples.Add(new TokenizedExample(ids[..n], train[..n]));
            }
        }
        return new TokenizedFile(examples, [.. truncated]);
    }
}
