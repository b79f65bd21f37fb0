using System.Text.Json;
using AdapterService.Core.Text;

namespace AdapterService.Core.Tests.Text;

/// <summary>Tiny byte-level BPE tokenizers written here in the files' Hugging Face formats.</summary>
public sealed class HfTokenizerTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("tokenizer-tests-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    /// <summary>GPT-2's reversible byte → printable character map (bytes_to_unicode): a space is 'Ġ', a newline 'Ċ'.</summary>
    static string[] ByteChars()
    {
        var printable = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var chars = new string[256];
        int extra = 0;
        foreach (int b in Enumerable.Range(0, 256)) chars[b] = ((char)(printable.Contains(b) ? b : 256 + extra++)).ToString();
        return chars;
    }

    /// <summary>The 256 byte tokens (ids 0-255), then one token per merge, in merge order.</summary>
    static Dictionary<string, int> Vocab(string[] merges)
    {
        var vocab = ByteChars().Select((c, i) => (c, i)).ToDictionary(x => x.c, x => x.i);
        foreach (var merge in merges) vocab[merge.Replace(" ", "")] = vocab.Count;
        return vocab;
    }

    static readonly string[] Merges = ["3 4", "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor l", "Ġworl d", "1 2", "12 3"];

    void WriteConfig(string eos) => File.WriteAllText(Path.Combine(dir, "config.json"), $$"""{"model_type": "llama", "bos_token_id": 300, "eos_token_id": {{eos}}}""");

    /// <summary>A tokenizer.json shaped like Llama 3's: Split on its regex, then ByteLevel without a regex, merges as pairs.</summary>
    void WriteLlama3TokenizerJson()
    {
        string[] added = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];
        var tokenizer = new
        {
            version = "1.0",
            added_tokens = added.Select((t, i) => new { id = 300 + i, content = t, single_word = false, lstrip = false, rstrip = false, normalized = false, special = true }),
            normalizer = (object?)null,
            pre_tokenizer = new
            {
                type = "Sequence",
                pretokenizers = new object[]
                {
                    new { type = "Split", pattern = new { Regex = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+" }, behavior = "Isolated", invert = false },
                    new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = false },
                },
            },
            post_processor = new
            {
                type = "TemplateProcessing",
                single = new object[] { new { SpecialToken = new { id = "<|begin_of_text|>", type_id = 0 } }, new { Sequence = new { id = "A", type_id = 0 } } },
                special_tokens = new Dictionary<string, object> { ["<|begin_of_text|>"] = new { id = "<|begin_of_text|>", ids = new[] { 300 }, tokens = new[] { "<|begin_of_text|>" } } },
            },
            decoder = new { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
            model = new
            {
                type = "BPE", dropout = (object?)null, unk_token = (object?)null, fuse_unk = false, byte_fallback = false, ignore_merges = true,
                vocab = Vocab(Merges), merges = Merges.Select(m => m.Split(' ')),
            },
        };
        File.WriteAllText(Path.Combine(dir, HfTokenizer.TokenizerFile), JsonSerializer.Serialize(tokenizer));
        WriteConfig("[301, 304]");
    }

    /// <summary>GPT-2's files: vocab.json (with &lt;|endoftext|&gt; as the last id) and merges.txt with its version line.</summary>
    void WriteGpt2Files()
    {
        var vocab = Vocab(Merges);
        vocab["<|endoftext|>"] = 300;
        File.WriteAllText(Path.Combine(dir, HfTokenizer.VocabFile), JsonSerializer.Serialize(vocab));
        File.WriteAllLines(Path.Combine(dir, HfTokenizer.MergesFile), ["#version: 0.2", .. Merges]);
        WriteConfig("300");
    }

    static int Id(string token) => Vocab(Merges)[token];

    [Fact]
    public void Gpt2VocabAndMergesEncodeByMergeRankAndDecodeAnyText()
    {
        WriteGpt2Files();
        var tokenizer = HfTokenizer.Load(dir);

        Assert.Equal([Id("hello"), Id("Ġworld")], tokenizer.Encode("hello world"));
        Assert.Equal([Id("H"), Id("e"), Id("ll"), Id("o")], tokenizer.Encode("Hello"));              // no "H e" merge
        Assert.Equal([Id("12"), Id("34"), Id("5")], tokenizer.Encode("12345"));                      // GPT-2 keeps digit runs whole: "3 4" ranks first
        Assert.Equal([Id("Ã"), Id("©")], tokenizer.Encode("é"));                                     // UTF-8 bytes C3 A9
        Assert.Equal([Id("hello"), 300], tokenizer.Encode("hello<|endoftext|>"));
        Assert.Equal((300, 300), (tokenizer.BosId, tokenizer.EosIds.Single()));
        const string text = "Grüße, 世界! 🙂\n\ttabs  and   spaces 12345";
        Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text), skipSpecialTokens: false));
    }

    /// <summary>Generated tokens are streamed: a character split across tokens comes out whole, once, and special tokens print nothing.</summary>
    [Fact]
    public void StreamedTokensJoinToTheText()
    {
        WriteGpt2Files();
        ITextTokenizer tokenizer = HfTokenizer.Load(dir);
        const string text = "héllo wörld 🙂 123";
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        var stream = new StreamingDetokenizer(tokenizer);
        var pieces = ids.Append(300).Select(stream.Push).Append(stream.Flush()).ToList();
        Assert.Equal(text, string.Concat(pieces));
        Assert.Contains("🙂", pieces.Select(p => p.Trim()));                                       // its 4 bytes are 4 tokens, printed once whole
        Assert.Equal("", tokenizer.Decode([300], skipSpecialTokens: true));                         // <|endoftext|> prints nothing
        // GPT-2's begin id is its end id: never prepended (as its tokenizer does not).
        var rules = ModelText.Of(tokenizer);
        Assert.Equal([Id("hello")], rules.EncodeCompletion("hello"));
        Assert.Throws<NotSupportedException>(() => rules.ChooseTemplate(null));   // no chat template, no fallback format
    }

    /// <summary>Chat examples in the Llama 3 format: the loss on the assistant's content and its end of turn only; the end of turn also ends generation.</summary>
    [Fact]
    public void ChatExamplesTrainOnTheAssistantTurnsOnly()
    {
        WriteLlama3TokenizerJson();
        ITextTokenizer tokenizer = HfTokenizer.Load(dir);
        var example = new AdapterService.Core.Data.ChatExample(1, [new("user", "hello", false), new("assistant", "world", true)]);
        var text = ModelText.Of(tokenizer);   // no template of its own: the Llama 3 format its special tokens have
        var (ids, train) = Assert.Single(text.EncodeExample(example, null));
        var hf = (HfTokenizer)tokenizer;
        Assert.Equal(hf.Encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nworld<|eot_id|>"), ids);
        Assert.Equal([Id("w"), Id("o"), Id("r"), Id("l"), Id("d"), 304], ids.Where((_, i) => train[i]));
        Assert.Contains(304, text.EosIds);
        Assert.Equal(hf.Encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
            text.EncodeChat(ChatConversation.Of([("user", "hello")]), text.Template!));
    }

    [Fact]
    public void ALlama3TokenizerJsonSplitsDigitsInThreesAndKeepsSpecialTokensWhole()
    {
        WriteLlama3TokenizerJson();
        var tokenizer = HfTokenizer.Load(dir);

        Assert.Equal([Id("123"), Id("4"), Id("5")], tokenizer.Encode("12345"));                     // \p{N}{1,3} splits before merging
        Assert.Equal([300, Id("hello"), Id("Ġworld")], tokenizer.Encode("hello world", addSpecialTokens: true));   // the post-processor's template
        Assert.Equal([301, 304], tokenizer.EosIds);
        var text = ModelText.Of(tokenizer);
        string prompt = text.RenderChat(ChatConversation.Of([("system", "be brief"), ("user", "  hello world \n")]), text.Template!);
        Assert.Equal("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
                     + "<|start_header_id|>user<|end_header_id|>\n\nhello world<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", prompt);
        var ids = tokenizer.Encode(prompt);
        Assert.Equal(300, ids[0]);
        Assert.Equal(3, ids.Count(i => i == 302));                                                   // system, user and assistant headers, each one token
        Assert.Equal(prompt, tokenizer.Decode(ids, skipSpecialTokens: false));
        Assert.Equal("system\n\nbe briefuser\n\nhello worldassistant\n\n", tokenizer.Decode(ids, skipSpecialTokens: true));
    }

    [Fact]
    public void ChatMLRendersEachTurnBetweenImStartAndImEnd()
    {
        var chatML = ChatTemplate.Parse(FallbackChatFormats.ChatML);
        var tokenizer = ModelText.BuiltIn.Tokenizer;
        string prompt = chatML.Render(ChatConversation.Of([("system", "s"), ("user", "u"), ("assistant", "a")]), tokenizer, addGenerationPrompt: false).Text;
        Assert.Equal("<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n", prompt);
        Assert.EndsWith("<|im_end|>\n<|im_start|>assistant\n", chatML.Render(ChatConversation.Of([("user", "u")]), tokenizer, addGenerationPrompt: true).Text);
    }

    [Theory]
    [InlineData("\"type\":\"BPE\"", "\"type\":\"Unigram\"", "model.type 'Unigram' is not supported")]
    [InlineData("\"type\":\"Split\"", "\"type\":\"BertPreTokenizer\"", "pre_tokenizer BertPreTokenizer is not supported")]
    [InlineData("\"normalizer\":null", "\"normalizer\":{\"type\":\"Precompiled\"}", "normalizer Precompiled is not supported")]
    [InlineData("\"type\":\"TemplateProcessing\"", "\"type\":\"BertProcessing\"", "post_processor BertProcessing is not supported")]
    [InlineData("\"decoder\":{\"type\":\"ByteLevel\"", "\"decoder\":{\"type\":\"CTC\"", "decoder CTC is not supported")]
    [InlineData("\"Regex\":\"(?i:", "\"Regex\":\"(?i:[", "regex '(?i:[")]
    [InlineData("\"merges\":[[\"3\",\"4\"]", "\"merges\":[[\"3\",\"x4\"]", "merges[0] ('3', 'x4') names a token missing from the vocabulary")]
    [InlineData("\"pattern\":{\"Regex\":", "\"pattern\":7,\"x\":{\"Regex\":", "pattern is missing or not a JSON object")]
    [InlineData("\"added_tokens\":[", "\"added_tokens\":[7,", "an added_tokens entry lacks its content or id")]
    [InlineData("\"pretokenizers\":[", "\"pretokenizers\":[[1],", "pre_tokenizer [1] is not supported")]
    public void UnsupportedTokenizerJsonIsRefusedNamingThePart(string find, string replace, string message)
    {
        WriteLlama3TokenizerJson();
        string path = Path.Combine(dir, HfTokenizer.TokenizerFile);
        string json = File.ReadAllText(path);
        Assert.Contains(find, json);
        File.WriteAllText(path, json.Replace(find, replace));
        Assert.Contains(message, Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(dir)).Message);
    }

    [Fact]
    public void AFolderWithoutTokenizerFilesSaysWhichItLooksFor()
    {
        WriteConfig("1");
        Assert.Contains("has neither tokenizer.json nor vocab.json + merges.txt", Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(dir)).Message);
    }
}
