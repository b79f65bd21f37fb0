using System.Text;
using System.Text.Json.Nodes;
using AdapterService.Core.Text;

namespace AdapterService.Core.Tests.Text;

/// <summary>
/// The tokenizers, loaded once per test class, with our ids and the reference's answers for them: the real files of
/// Gemma 3, Qwen 3, Llama 3.1 and Llama 2 (Mistral's vocabulary) on the whole corpus, and files derived here for what
/// those lack on a third of it: Llama 2 with a Metaspace pre-tokenizer and decoder (as newer Llama 2 / Mistral files
/// have), and GPT-2-style byte-level BPE (BpeTrainer's, with and without add_prefix_space). Special tokens are added on
/// a tenth of the texts and the hard cases. All are prepared at once in the background, the reference processes as many
/// at a time as there are cores, so the tests wait for the slowest rather than for the sum.
/// </summary>
public sealed class ReferenceTokenizers : IDisposable
{
    // The slowest for the reference first.
    static readonly string[] All = ["gemma3", "llama2", "qwen3", "llama3_1", "llama2-metaspace", "bytelevel", "bytelevel-prefix"];
    public static readonly TheoryData<string> Names = new(All);

    public sealed record Case(HfTokenizer Tokenizer, List<string> Texts, List<IReadOnlyList<int>> Ids, List<string> SpecialTexts, HfReference.Answer Reference);

    readonly string dir = Directory.CreateTempSubdirectory("hf-reference-").FullName;
    readonly Lazy<List<string>> corpus = new(HfReference.Corpus);
    readonly Lazy<BpeVocabulary> trained;
    readonly SemaphoreSlim references = new(Environment.ProcessorCount);
    readonly Dictionary<string, Task<Case>> cases;

    public ReferenceTokenizers()
    {
        trained = new(() => BpeTrainer.Train(corpus.Value.Where((_, i) => i % 4 == 0), 2000, ["<|endoftext|>"]));
        // Threads of their own: they block on the reference processes, which the thread pool must stay free to read.
        cases = All.ToDictionary(n => n, n => Task.Factory.StartNew(() => Build(n), TaskCreationOptions.LongRunning));
    }

    public Case Get(string name) => cases[name].GetAwaiter().GetResult();

    public void Dispose()
    {
        Task.WaitAll([.. cases.Values.Select(c => c.ContinueWith(_ => { }))]);
        Directory.Delete(dir, recursive: true);
    }

    Case Build(string name)
    {
        var folder = Directory.CreateDirectory(Path.Combine(dir, name)).FullName;
        File.WriteAllText(Path.Combine(folder, "config.json"), "{}");
        string json = Path.Combine(folder, HfTokenizer.TokenizerFile), config = Path.Combine(folder, HfTokenizer.ConfigFile);
        switch (name)
        {
            case "llama2-metaspace":
                var llama2 = JsonNode.Parse(File.ReadAllText(Path.Combine(HfReference.RealFiles("llama2"), "tokenizer.json")))!;
                llama2["normalizer"] = null;
                llama2["pre_tokenizer"] = JsonNode.Parse("""{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}""");
                llama2["decoder"] = JsonNode.Parse("""{"type": "Sequence", "decoders": [{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}, {"type": "ByteFallback"}, {"type": "Fuse"}]}""");
                File.WriteAllText(json, llama2.ToJsonString());
                File.Copy(Path.Combine(HfReference.RealFiles("llama2"), "tokenizer_config.json"), config);
                break;
            case "bytelevel" or "bytelevel-prefix":
                trained.Value.Save(folder, "<|endoftext|>", "<|endoftext|>", 1024);
                if (name == "bytelevel-prefix")
                {
                    var node = JsonNode.Parse(File.ReadAllText(json))!;
                    node["pre_tokenizer"]!["add_prefix_space"] = true;
                    File.WriteAllText(json, node.ToJsonString());
                }
                break;
            default:
                var real = HfReference.RealFiles(name);
                File.CreateSymbolicLink(json, Path.Combine(real, "tokenizer.json"));
                File.CreateSymbolicLink(config, Path.Combine(real, "tokenizer_config.json"));
                break;
        }
        bool whole = !name.Contains('-') && name != "bytelevel";
        var texts = whole ? corpus.Value : corpus.Value.Where((t, i) => i % 3 == 0 || HfReference.HardCases.Contains(t)).ToList();
        var specialTexts = texts.Where((t, i) => i % 10 == 0 || HfReference.HardCases.Contains(t)).ToList();
        var reference = Task.Factory.StartNew(() =>
        {
            references.Wait();
            try { return HfReference.Run(json, config, texts, specialTexts, seed: name.Length * 31 + name[0]); }
            finally { references.Release(); }
        }, TaskCreationOptions.LongRunning);
        var tokenizer = HfTokenizer.Load(folder);
        var ids = texts.Select(t => tokenizer.Encode(t, addSpecialTokens: false)).ToList();
        return new Case(tokenizer, texts, ids, specialTexts, reference.Result);
    }
}

/// <summary>Our tokenizers against Hugging Face's JavaScript tokenizers on every fortunes entry and the hard cases.</summary>
[Collection(TextReferences.Name)]
public sealed class HfReferenceTests(ReferenceTokenizers tokenizers) : IClassFixture<ReferenceTokenizers>
{
    /// <summary>Fails listing the first differences (text, ours, the reference's) rather than only the first.</summary>
    static void AllEqual<T>(string what, IEnumerable<(string Text, T Ours, T Reference)> items, Func<T, T, bool> equal)
    {
        var wrong = items.Where(i => !equal(i.Ours, i.Reference)).ToList();
        Assert.True(wrong.Count == 0, $"{wrong.Count} {what} differ from the reference, e.g.:\n" + string.Join("\n", wrong.Take(5).Select(w =>
            $"  text {Show(w.Text)}\n    ours      {Show(w.Ours)}\n    reference {Show(w.Reference)}")));
    }

    static string Show(object? value) => value switch
    {
        string s => System.Text.Json.JsonSerializer.Serialize(s.Length > 300 ? s[..300] + "…" : s),
        IEnumerable<int> ids => "[" + string.Join(",", ids.Take(60)) + "]",
        _ => $"{value}",
    };

    [Theory]
    [MemberData(nameof(ReferenceTokenizers.Names), MemberType = typeof(ReferenceTokenizers))]
    public void IdsEqualTheReference(string name)
    {
        var c = tokenizers.Get(name);
        AllEqual("encodes (add_special_tokens: false)", c.Texts.Select((t, i) => (t, c.Ids[i], (IReadOnlyList<int>)c.Reference.Plain[i])), Enumerable.SequenceEqual);
        AllEqual("encodes (add_special_tokens: true)", c.SpecialTexts.Select((t, i) => (t, c.Tokenizer.Encode(t, true), (IReadOnlyList<int>)c.Reference.Ids[i])), Enumerable.SequenceEqual);
    }

    [Theory]
    [MemberData(nameof(ReferenceTokenizers.Names), MemberType = typeof(ReferenceTokenizers))]
    public void DecodesEqualTheReference(string name)
    {
        var c = tokenizers.Get(name);
        AllEqual("decodes", c.Texts.Select((t, i) => (t, c.Tokenizer.Decode(c.Reference.Plain[i], false), c.Reference.Decoded[i])), string.Equals);
        AllEqual("decodes skipping special tokens", c.SpecialTexts.Select((t, i) => (t, c.Tokenizer.Decode(c.Reference.Ids[i], true), c.Reference.DecodedSkip[i])), string.Equals);
        AllEqual("decodes of random ids", c.Reference.RandomIds.Select((ids, i) => (Show(ids), c.Tokenizer.Decode(ids, false), c.Reference.DecodedIds[i].Text)), string.Equals);
        AllEqual("decodes of random ids skipping special tokens", c.Reference.RandomIds.Select((ids, i) => (Show(ids), c.Tokenizer.Decode(ids, true), c.Reference.DecodedIds[i].Skip)), string.Equals);
    }

    /// <summary>
    /// decode(encode(x)) is x where the tokenizer is lossless, else what Hugging Face gives: Qwen's NFC form; Llama 3.1's
    /// clean-up of spaces before punctuation; Gemma's and Llama 2's literal ▁ as a space; Llama 2 (Prepend ▁, Strip) adds a
    /// space after a special token in text, so those texts are left out; Metaspace "first" drops a leading space;
    /// add_prefix_space puts one first.
    /// </summary>
    [Theory]
    [MemberData(nameof(ReferenceTokenizers.Names), MemberType = typeof(ReferenceTokenizers))]
    public void DecodeOfEncodeIsTheTextWhereLossless(string name)
    {
        var c = tokenizers.Get(name);
        Func<string, string?> expected = name switch
        {
            "qwen3" => x => x.Normalize(NormalizationForm.FormC),
            "llama3_1" => CleanUp,
            "gemma3" => x => x.Replace('▁', ' '),
            "llama2" => x => x.Contains("<s>") || x.Contains("</s>") || x.Contains("<unk>") ? null : x.Replace('▁', ' '),
            "llama2-metaspace" => x => x.Replace('▁', ' ') is var y && y.StartsWith(' ') ? y[1..] : y,
            "bytelevel-prefix" => x => x.Length == 0 || x.StartsWith(' ') ? x : " " + x,
            _ => x => x,
        };
        AllEqual("round trips", c.Texts.Select((t, i) => (Text: t, Ours: c.Tokenizer.Decode(c.Ids[i], false), Expected: expected(t)))
            .Where(x => x.Expected is not null).Select(x => (x.Text, x.Ours, x.Expected!)), string.Equals);
    }

    /// <summary>Llama 3.1's clean_up_tokenization_spaces, as transformers writes it.</summary>
    static string CleanUp(string text) => text.Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",")
        .Replace(" ' ", "'").Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");

    [Theory]
    [MemberData(nameof(ReferenceTokenizers.Names), MemberType = typeof(ReferenceTokenizers))]
    public void StreamedTextIsTheDecode(string name)
    {
        var c = tokenizers.Get(name);
        var sequences = c.SpecialTexts.Select(t => c.Tokenizer.Encode(t, true)).Concat(c.Reference.RandomIds);
        AllEqual("streamed texts", sequences.Select(ids =>
        {
            var stream = new StreamingDetokenizer(c.Tokenizer);
            return (Show(ids), string.Concat(ids.Select(stream.Push)) + stream.Flush(), c.Tokenizer.Decode(ids, skipSpecialTokens: true));
        }), string.Equals);
    }
}
