using System.Text.Json.Nodes;
using AdapterService.Core.Text;

namespace AdapterService.Core.Tests.Text;

/// <summary>
/// Pipeline parts the real files do not use, on the Rust tokenizers' documented examples. Each tokenizer.json here has a
/// BPE model with ignore_merges and every expected word in its vocabulary, so each word the pre-tokenizer makes comes out
/// as one token whose string shows it.
/// </summary>
public sealed class HfPipelineTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("hf-pipeline-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    /// <summary>A tokenizer.json of these parts; <paramref name="model"/> adds fields to the model, which replace the defaults before them (the last of a repeated key wins).</summary>
    HfTokenizer Load(string? normalizer, string? preTokenizer, IEnumerable<string> words, string addedTokens = "[]", string model = "", string decoder = "null")
    {
        var vocab = new Dictionary<string, int>();
        foreach (var word in words.SelectMany(w => w.EnumerateRunes().Select(r => r.ToString()).Append(w)))
            vocab.TryAdd(word, vocab.Count);
        var json = JsonNode.Parse($"{{\"added_tokens\": {addedTokens}, \"normalizer\": {normalizer ?? "null"}, \"pre_tokenizer\": {preTokenizer ?? "null"}, "
            + $"\"post_processor\": null, \"decoder\": {decoder}, \"model\": {{\"type\": \"BPE\", \"ignore_merges\": true, \"vocab\": {{}}, \"merges\": [] {model}}}}}")!;
        foreach (var (token, id) in vocab) json["model"]!["vocab"]![token] ??= id;
        File.WriteAllText(Path.Combine(dir, HfTokenizer.TokenizerFile), json.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "config.json"), "{}");
        return HfTokenizer.Load(dir);
    }

    List<string> Words(HfTokenizer tokenizer, string text) => [.. tokenizer.Encode(text, addSpecialTokens: false).Select(id => tokenizer.IdToToken(id)!)];

    [Theory]
    [InlineData("""{"type": "Split", "pattern": {"String": "-"}, "behavior": "Removed"}""", "the-final--countdown", "the|final|countdown")]
    [InlineData("""{"type": "Split", "pattern": {"String": "-"}, "behavior": "Isolated"}""", "the-final--countdown", "the|-|final|-|-|countdown")]
    [InlineData("""{"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithPrevious"}""", "the-final--countdown", "the-|final-|-|countdown")]
    [InlineData("""{"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext"}""", "the-final--countdown", "the|-final|-|-countdown")]
    [InlineData("""{"type": "Split", "pattern": {"String": "-"}, "behavior": "Contiguous"}""", "the-final--countdown", "the|-|final|--|countdown")]
    [InlineData("""{"type": "Split", "pattern": {"Regex": "-+"}, "behavior": "Removed", "invert": true}""", "the-final--countdown", "-|--")]
    [InlineData("""{"type": "Digits", "individual_digits": false}""", "Call 123 please", "Call |123| please")]
    [InlineData("""{"type": "Digits", "individual_digits": true}""", "Call 123 please", "Call |1|2|3| please")]
    [InlineData("""{"type": "Punctuation"}""", "Hey friend!? How are you?!?", "Hey friend|!|?| How are you|?|!|?")]
    [InlineData("""{"type": "Punctuation", "behavior": "Contiguous"}""", "Hey friend!? How", "Hey friend|!?| How")]
    [InlineData("""{"type": "Whitespace"}""", "How are you doing?", "How|are|you|doing|?")]
    [InlineData("""{"type": "WhitespaceSplit"}""", "Hey man!\tOk", "Hey|man!|Ok")]
    [InlineData("""{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}""", "Hey friend!", "▁Hey|▁friend!")]
    [InlineData("""{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": false}""", "Hey friend!", "Hey▁friend!")]
    [InlineData("""{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}""", "Hello there", "ĠHello|Ġthere")]
    [InlineData("""{"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": true}]}""", "ab12 c3", "ab|1|2|c|3")]
    public void PreTokenizersSplitAsTheRustTokenizersDo(string preTokenizer, string text, string words)
    {
        var expected = words.Split('|');
        Assert.Equal(expected, Words(Load(null, preTokenizer, expected), text));
    }

    /// <summary>A tokenizer.json's Split regex that backtracks catastrophically gives up after its match timeout instead of holding the thread (2^40 steps).</summary>
    [Fact]
    public void ABacktrackingSplitRegexTimesOut()
    {
        var tokenizer = Load(null, """{"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated"}""", ["a", "!"]);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Assert.Throws<System.Text.RegularExpressions.RegexMatchTimeoutException>(() => tokenizer.Encode(new string('a', 40) + "!", addSpecialTokens: false));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}");
    }

    [Theory]
    [InlineData("""{"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip", "strip_left": true, "strip_right": true}]}""", "  ＡＢＣ Ｄ  ", "abc d")]
    [InlineData("""{"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}""", "a \t\n b", "a b")]
    [InlineData("""{"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Prepend", "prepend": "_"}]}""", "é", "_e\u0301")]
    [InlineData("""{"type": "Strip", "strip_left": false, "strip_right": true}""", "  x  ", "  x")]
    public void NormalizersRewriteTheTextBeforeSplitting(string normalizer, string text, string normalized) =>
        Assert.Equal([normalized], Words(Load(normalizer, null, [normalized]), text));

    [Fact]
    public void AddedTokensTakeTheSpaceTheyStripAndSingleWordOnesStandAlone()
    {
        const string added = """
            [{"id": 100, "content": "<x>", "lstrip": true, "rstrip": true, "special": true},
             {"id": 101, "content": "ab", "single_word": true, "special": false, "normalized": false}]
            """;
        var tokenizer = Load(null, """{"type": "WhitespaceSplit"}""", ["a", "b", "c", "cab", "abc"], added);
        Assert.Equal(["a", "<x>", "b"], Words(tokenizer, "a   <x>   b"));
        Assert.Equal(["ab", "cab", "abc", "ab"], Words(tokenizer, "ab cab abc ab"));
        Assert.Equal("a b", tokenizer.Decode(tokenizer.Encode("a <x> b", false), skipSpecialTokens: true));
    }

    [Fact]
    public void SubwordPrefixAndWordSuffixTakePartInMerges()
    {
        var prefixed = Load(null, null, [], model: """, "ignore_merges": false, "continuing_subword_prefix": "##", "merges": ["a ##b"], "vocab": {"a": 0, "##b": 1, "ab": 2}""");
        Assert.Equal([2], prefixed.Encode("ab", false));
        var suffixed = Load(null, """{"type": "WhitespaceSplit"}""", [], model: """, "ignore_merges": false, "end_of_word_suffix": "</w>", "merges": ["a b</w>"], "vocab": {"a": 0, "b</w>": 1, "ab</w>": 2}""",
            decoder: """{"type": "BPEDecoder", "suffix": "</w>"}""");
        Assert.Equal([2, 2], suffixed.Encode("ab ab", false));
        Assert.Equal("ab ab", suffixed.Decode([2, 2], skipSpecialTokens: false));
    }

    [Fact]
    public void ByteFallbackSpellsUnknownCharactersAndUnknownOnesFuse()
    {
        var bytes = string.Join(", ", Enumerable.Range(0, 256).Select(b => $"\"<0x{b:X2}>\": {b + 10}"));
        var fallback = Load(null, null, [], model: $$""", "byte_fallback": true, "vocab": {"a": 0, {{bytes}}}""", decoder: """{"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}""");
        Assert.Equal([0, 0xC3 + 10, 0xA9 + 10], fallback.Encode("aé", false));
        Assert.Equal("aé", fallback.Decode([0, 0xC3 + 10, 0xA9 + 10], skipSpecialTokens: false));
        Assert.Equal("a\uFFFD", fallback.Decode([0, 0xC3 + 10], skipSpecialTokens: false));
        var unknown = Load(null, null, [], model: """, "unk_token": "<unk>", "fuse_unk": true, "vocab": {"<unk>": 0, "a": 1}""");
        Assert.Equal([1, 0, 1], unknown.Encode("aéü🙂a", false));
    }
}
