using AdapterService.Core.Data;
using AdapterService.Core.Text;

namespace AdapterService.Core.Training;

public static class TrainingData
{
    /// <summary>Tokenizes every example; longer ones are cut to the context length (as OpenAI does).</summary>
    public static List<TokenizedExample> Tokenize(TrainingFile file, ITextTokenizer tokenizer, int contextLength) =>
        file.Format == TrainingFileFormat.Image
            ? throw new TrainingFileException(0, FileFacts.ImagesForLanguageModel)
            : file.Examples.Select(e =>
        {
            var (ids, train) = tokenizer.EncodeExample(e);
            int n = Math.Min(ids.Count, contextLength);
            return new TokenizedExample(ids.Take(n).ToArray(), train.Take(n).ToArray());
        }).ToList();
}
