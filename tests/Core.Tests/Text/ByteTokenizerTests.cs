using AdapterService.Core.Text;

namespace AdapterService.Core.Tests.Text;

public class ByteTokenizerTests
{
    static readonly ByteTokenizer Tokenizer = new();

    /// <summary>A chat template renders the special tokens as text; encoding that text gives the ids EncodeChatPrompt builds.</summary>
    [Fact]
    public void ARenderedChatTemplateEncodesAsTheChatPrompt()
    {
        Assert.Equal(Tokenizer.EncodeChatPrompt([("user", "hi")]), Tokenizer.Encode("<|begin|><|user|>hi<|end|><|assistant|>", addSpecialTokens: false));
        Assert.Equal(Tokenizer.EncodeChatPrompt([("system", "be brief"), ("user", "é <|x|> <|"), ("assistant", "ok")]),
            Tokenizer.Encode("<|system|>be brief<|end|><|user|>é <|x|> <|<|end|><|assistant|>ok<|end|><|assistant|>", addSpecialTokens: true));
        Assert.Equal(Tokenizer.EncodeCompletionPrompt("hi"), Tokenizer.Encode("hi", addSpecialTokens: true));
    }

    [Fact]
    public void DecodesBytesAndSpecialTokensAndStreamsTheSameText()
    {
        var ids = Tokenizer.Encode("<|begin|><|user|>Grüße 🙂<|end|>", addSpecialTokens: false);
        Assert.Equal("<|begin|><|user|>Grüße 🙂<|end|>", Tokenizer.Decode(ids, skipSpecialTokens: false));
        Assert.Equal("Grüße 🙂", Tokenizer.Decode(ids, skipSpecialTokens: true));
        var stream = new StreamingDetokenizer(Tokenizer);
        Assert.Equal("Grüße 🙂", string.Concat(ids.Select(stream.Push)) + stream.Flush());
        Assert.Equal(("<|begin|>", "<|end|>", "<|assistant|>", "<0xF0>", "A"), (Tokenizer.BosToken, Tokenizer.EosToken, Tokenizer.IdToToken(ByteTokenizer.Assistant), Tokenizer.IdToToken(0xF0), Tokenizer.IdToToken('A')));
        Assert.Null(Tokenizer.IdToToken(ByteTokenizer.VocabSize));
        Assert.Equal(ByteTokenizer.Begin + 1, Tokenizer.VocabularySize);
    }
}
