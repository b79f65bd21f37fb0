using AdapterService.Core.Text;

namespace AdapterService.Core.Tests.Text;

public class ByteTokenizerTests
{
    static readonly ByteTokenizer Tokenizer = new();

    // Special tokens' strings in text are their ids; everything else (an unknown "<|x|>", a lone "<|") is bytes.
    [Fact]
    public void SpecialTokenStringsInTextAreTheirIds()
    {
        int[] Bytes(string text) => System.Text.Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToArray();
        Assert.Equal([ByteTokenizer.Begin, ByteTokenizer.User, .. Bytes("hi"), ByteTokenizer.End, ByteTokenizer.Assistant],
            Tokenizer.Encode("<|begin|><|user|>hi<|end|><|assistant|>", addSpecialTokens: false));
        Assert.Equal([ByteTokenizer.Begin, ByteTokenizer.System, .. Bytes("é <|x|> <|"), ByteTokenizer.End],
            Tokenizer.Encode("<|system|>é <|x|> <|<|end|>", addSpecialTokens: true));
        Assert.Equal([ByteTokenizer.Begin, .. Bytes("hi")], Tokenizer.Encode("hi", addSpecialTokens: true));
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
