using AdapterService.Core.Data;

namespace AdapterService.Core.Text;

/// <summary>
/// What the service needs of a base model's tokenizer: prompts for chat and completions, training examples with the
/// tokens the loss is taken on, and the bytes of each generated token (streamed through one UTF-8 decoder per request,
/// so a character split across tokens prints once whole).
/// </summary>
public interface ITextTokenizer
{
    /// <summary>Ids that end a reply (besides the model's own end ids).</summary>
    IReadOnlyList<int> EosIds { get; }

    /// <summary>A chat prompt ending where the assistant's answer starts; throws <see cref="NotSupportedException"/> for a model without a chat format.</summary>
    List<int> EncodeChatPrompt(IEnumerable<(string Role, string Content)> messages);

    List<int> EncodeCompletionPrompt(string prompt);

    /// <summary>Token ids and, per id, whether the loss is taken on it (assistant / completion tokens and their end).</summary>
    (List<int> Ids, List<bool> Train) EncodeExample(TrainingExample example);

    /// <summary>The UTF-8 bytes a token stands for; none for special tokens.</summary>
    byte[] TokenBytes(int id);
}

public static class TextTokenizers
{
    // Base model folders never change once stored, so each one's tokenizer is read once.
    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, Lazy<ITextTokenizer>> Loaded = new();

    /// <summary>
    /// The tokenizer of a model folder: its Hugging Face byte-level BPE files, else its SentencePiece <c>tokenizer.model</c>,
    /// else the byte tokenizer of the built-in models.
    /// </summary>
    public static ITextTokenizer ForModel(string folder) => Loaded.GetOrAdd(folder, f => new Lazy<ITextTokenizer>(() => Load(f))).Value;

    static ITextTokenizer Load(string folder)
    {
        bool sentencePiece = File.Exists(Path.Combine(folder, SentencePieceTextTokenizer.ModelFile));
        if (File.Exists(Path.Combine(folder, HfTokenizer.TokenizerFile)) || File.Exists(Path.Combine(folder, HfTokenizer.VocabFile)))
            try { return HfTokenizer.Load(folder); }
            // Llama 2 and Mistral folders ship a tokenizer.json (Metaspace, not byte-level) converted from the tokenizer.model beside it.
            catch (InvalidDataException) when (sentencePiece) { }
        return sentencePiece ? SentencePieceTextTokenizer.Load(folder) : new ByteTokenizer();
    }
}
