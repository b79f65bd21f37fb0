namespace AdapterService.Core.Text;

/// <summary>
/// What the service needs of a base model's tokenizer: Hugging Face's encode and decode and the vocabulary's strings.
/// Prompts, chats and training examples are made of these by <see cref="ModelText"/>; generated text is streamed with a
/// <see cref="StreamingDetokenizer"/>.
/// </summary>
public interface ITextTokenizer
{
    /// <summary>Ids that end a reply (besides the model's own end ids).</summary>
    IReadOnlyList<int> EosIds { get; }

    /// <summary>Hugging Face's encode: with <paramref name="addSpecialTokens"/>, what the post-processor adds (BOS…EOS) around the text's ids.</summary>
    IReadOnlyList<int> Encode(string text, bool addSpecialTokens);

    /// <summary>Hugging Face's decode (the decoder chain); special tokens left out when <paramref name="skipSpecialTokens"/>.</summary>
    string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens);

    /// <summary>The token's string as the vocabulary writes it ("Ġworld", "▁the", "&lt;|im_end|&gt;"); null for an id outside the vocabulary.</summary>
    string? IdToToken(int id);

    /// <summary>Vocabulary size, added tokens included.</summary>
    int VocabularySize { get; }

    /// <summary>tokenizer_config.json's bos_token, which chat templates print; null when absent.</summary>
    string? BosToken { get; }

    /// <summary>tokenizer_config.json's eos_token, which chat templates print; null when absent.</summary>
    string? EosToken { get; }
}

public static class TextTokenizers
{
    /// <summary>
    /// Reads the tokenizer of a model folder: its Hugging Face tokenizer files, else its SentencePiece <c>tokenizer.model</c>,
    /// else the byte tokenizer of the built-in models. Not kept: <see cref="ModelText.ForModel"/> keeps a stored folder's.
    /// </summary>
    public static ITextTokenizer Read(string folder)
    {
        bool sentencePiece = File.Exists(Path.Combine(folder, SentencePieceTextTokenizer.ModelFile));
        if (File.Exists(Path.Combine(folder, HfTokenizer.TokenizerFile)) || File.Exists(Path.Combine(folder, HfTokenizer.VocabFile)))
            try { return HfTokenizer.Load(folder); }
            // A tokenizer.json this pipeline refuses (a Unigram model) may have the tokenizer.model it was converted from beside it.
            catch (InvalidDataException) when (sentencePiece) { }
        return sentencePiece ? SentencePieceTextTokenizer.Load(folder) : new ByteTokenizer();
    }
}
