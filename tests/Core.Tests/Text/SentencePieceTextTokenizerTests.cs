using System.Text;
using AdapterService.Core.Data;
using AdapterService.Core.Text;
using static AdapterService.Tests.Shared.SentencePieceModelWriter;

namespace AdapterService.Core.Tests.Text;

/// <summary>Tiny SentencePiece models written here from the .proto spec, encoded and decoded through Microsoft.ML.Tokenizers.</summary>
public sealed class SentencePieceTextTokenizerTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("sentencepiece-tests-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    string Folder(string name, byte[] model, string config = "{}")
    {
        var folder = Directory.CreateDirectory(Path.Combine(dir, name)).FullName;
        File.WriteAllBytes(Path.Combine(folder, SentencePieceTextTokenizer.ModelFile), model);
        File.WriteAllText(Path.Combine(folder, "config.json"), config);
        return folder;
    }

    static string Streamed(ITextTokenizer tokenizer, IEnumerable<int> ids)
    {
        var stream = new StreamingDetokenizer(tokenizer);
        return string.Concat(ids.Select(stream.Push)) + stream.Flush();
    }

    [Fact]
    public void EncodesWordsWithTheirPrefixBytesForUnknownCharactersAndDecodesBack()
    {
        var tokenizer = SentencePieceTextTokenizer.Load(Folder("tiny", Write(TinyPieces())));
        Assert.Equal(("BPE", 1, 2), (tokenizer.Algorithm, tokenizer.BosId, tokenizer.EosIds.Single()));   // the model's own ids: config.json names none
        int hello = TinyId("▁hello");
        Assert.Equal([hello, hello], tokenizer.Encode("hello hello"));
        Assert.Equal([TinyId("▁he"), TinyId("l"), TinyId("o")], tokenizer.Encode("helo"));   // one l: "▁hel" is no piece
        // 'é' is no piece: byte fallback spells its UTF-8 bytes C3 A9; the 3 before them is the id offset of <0x00>.
        var ids = tokenizer.Encode("hé");
        Assert.Equal([TinyId("▁h"), 3 + 0xC3, 3 + 0xA9], ids);
        Assert.Equal("hé", tokenizer.Decode(ids, skipSpecialTokens: false));
        // Streamed token by token, the bytes of 'é' join into one character; the text is the whole decode's (no leading space).
        Assert.Equal("hé hello", Streamed(tokenizer, [.. ids, hello]));
        Assert.Equal(tokenizer.Decode([.. ids, hello], skipSpecialTokens: true), Streamed(tokenizer, [1, .. ids, hello, 2]));
        Assert.Equal([1, hello], ModelText.Of(tokenizer).EncodeCompletion("hello"));
        Assert.Equal([1, hello], tokenizer.Encode("hello", addSpecialTokens: true));
        Assert.Equal(("<s>", "</s>", "<unk>"), (tokenizer.BosToken, tokenizer.EosToken, tokenizer.IdToToken(0)));
        Assert.Equal("", tokenizer.Decode([1], skipSpecialTokens: true));
    }

    [Fact]
    public void CompletionExamplesReadAsOneTextAndChatWithoutATemplateIsRefused()
    {
        var tokenizer = SentencePieceTextTokenizer.Load(Folder("example", Write(TinyPieces()), """{"bos_token_id": 1, "eos_token_id": [2]}"""));
        var text = ModelText.Of(tokenizer);
        var (ids, train) = Assert.Single(text.EncodeExample(new CompletionExample(1, "hello", " hello"), null));
        int hello = TinyId("▁hello");
        // The completion continues the prompt: " hello" is one word, not a second word-start prefix plus "▁hello".
        Assert.Equal([1, hello, hello, 2], ids);
        Assert.Equal([false, false, true, true], train);
        Assert.Equal([hello, hello], tokenizer.Encode("hello hello"));
        Assert.Throws<NotSupportedException>(() => text.ChooseTemplate(null));
        Assert.Throws<NotSupportedException>(() => text.EncodeExample(new ChatExample(1, [new ChatMessage("user", "hello", false)]), null));

        // A Llama 2 folder's tokenizer_config.json has a chat template, which its tokenizer.model cannot encode: no chat,
        // and a fine-tuned model of it records no template (the job does not fail when it saves its adapter).
        var withTemplate = Folder("with-template", Write(TinyPieces()), """{"bos_token_id": 1, "eos_token_id": [2]}""");
        File.WriteAllText(Path.Combine(withTemplate, HfTokenizer.ConfigFile), """{"chat_template": "{{ messages[0].content }}"}""");
        var folderText = ModelText.ForModel(withTemplate);
        Assert.Null(folderText.Template);
        Assert.Throws<NotSupportedException>(() => folderText.ChooseTemplate(null));
    }

    [Fact]
    public void WithoutByteFallbackUnknownCharactersAreUnk()
    {
        var tokenizer = SentencePieceTextTokenizer.Load(Folder("no-fallback", Write(TinyPieces(), byteFallback: false)));
        Assert.Equal([TinyId("▁h"), 0], tokenizer.Encode("hé"));
    }

    [Fact]
    public void TheFolderPicksItsTokenizerAndBrokenModelsAreRefused()
    {
        Assert.IsType<SentencePieceTextTokenizer>(TextTokenizers.Read(Folder("only-model", Write(TinyPieces()))));
        // Llama 2 folders carry a Metaspace tokenizer.json beside the tokenizer.model it came from: the model is used.
        var both = Folder("both", Write(TinyPieces()));
        File.WriteAllText(Path.Combine(both, HfTokenizer.TokenizerFile), """{"model": {"type": "Unigram"}}""");
        Assert.IsType<SentencePieceTextTokenizer>(TextTokenizers.Read(both));
        Assert.IsType<ByteTokenizer>(TextTokenizers.Read(Directory.CreateDirectory(Path.Combine(dir, "none")).FullName));

        Assert.Throws<InvalidDataException>(() => SentencePieceTextTokenizer.Load(Folder("garbage", Encoding.UTF8.GetBytes("not a model at all"))));
        Assert.Throws<InvalidDataException>(() => SentencePieceTextTokenizer.Load(Folder("word", Write(TinyPieces(), modelType: 3))));
        Assert.Throws<InvalidDataException>(() => SentencePieceTextTokenizer.Load(Folder("empty", [])));
    }
}
