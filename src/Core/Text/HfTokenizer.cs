using System.Text.Json;
using AdapterService.Core.Data;
using AdapterService.Core.Models;

namespace AdapterService.Core.Text;

/// <summary>
/// The tokenizer of a Hugging Face model folder, run as the Hugging Face tokenizers pipeline its <c>tokenizer.json</c>
/// describes (or GPT-2's <c>vocab.json</c> + <c>merges.txt</c>): added tokens found first, then per section of text
/// between them the normalizer, pre-tokenizer and BPE model; the post-processor's special tokens around that; the
/// decoder chain back. Ids equal Hugging Face's (tests compare them with its JavaScript tokenizers). Begin and end of
/// sequence ids come from config.json (+ generation_config.json), the tokens' strings from tokenizer_config.json.
/// </summary>
public sealed class HfTokenizer : ITextTokenizer
{
    public const string TokenizerFile = "tokenizer.json", VocabFile = "vocab.json", MergesFile = "merges.txt";
    public const string ConfigFile = "tokenizer_config.json", GenerationConfigFile = "generation_config.json";

    /// <summary>GPT-2's pre-tokenizer pattern: what ByteLevel's <c>use_regex</c> splits on.</summary>
    public const string Gpt2Pattern = PreTokenizers.Gpt2Pattern;

    /// <summary>A vocabulary beyond this many ids is refused rather than allocated.</summary>
    const int MaxVocabulary = 4 << 20;

    readonly Func<string, string>? normalizer;
    readonly PreTokenizers.PreTokenizer? preTokenizer;
    readonly Bpe model;
    readonly AddedTokens added;
    readonly PostProcessors.Template template;
    readonly Decoders.Decoder? decoder;
    readonly string?[] tokens;                 // id → token string, added tokens over the model's
    readonly HashSet<string> special;          // left out by skipSpecialTokens
    readonly string? unknownToken;

    /// <summary>Added tokens (such as <c>&lt;|endoftext|&gt;</c>, <c>&lt;|eot_id|&gt;</c>): matched whole in text, never split.</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }
    public int? BosId { get; }
    /// <summary>config.json's end ids (and generation_config.json's).</summary>
    public IReadOnlyList<int> EosIds { get; }
    public string? BosToken { get; }
    public string? EosToken { get; }
    public int VocabularySize => tokens.Length;
    /// <summary>What kind of BPE it is, for people: "byte-level BPE" (GPT-2, Llama 3, Qwen), "BPE with byte fallback" (SentencePiece-converted: Llama 2, Mistral, Gemma) or "BPE".</summary>
    public string Kind { get; }
    /// <summary>tokenizer_config.json's clean_up_tokenization_spaces (true when absent, as in the reference): decoding drops the space before punctuation.</summary>
    public bool CleansUpSpaces { get; }

    HfTokenizer(JsonElement root, JsonElement config, string path, int? bosId, IReadOnlyList<int> eosIds)
    {
        var modelJson = Json.Property(root, "model", JsonValueKind.Object, path);
        // Files from before model.type have BPE's merges.
        string type = Json.OptionalString(modelJson, "type") ?? (modelJson.TryGetProperty("merges", out _) ? "BPE" : "(none)");
        if (type != "BPE")
            throw new InvalidDataException($"{path}: model.type '{type}' is not supported (only BPE is)");

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in Json.Property(modelJson, "vocab", JsonValueKind.Object, $"{path}: model").EnumerateObject())
            vocab[entry.Name] = Json.Int(entry.Value) is { } id and >= 0 and < MaxVocabulary ? id
                : throw new InvalidDataException($"{path}: model.vocab['{entry.Name}'] is not a token id below {MaxVocabulary}");
        var addedList = root.TryGetProperty("added_tokens", out var a) && a.ValueKind == JsonValueKind.Array
            ? a.EnumerateArray().Select(e => AddedTokens.Parse(e, path)).ToList() : [];
        if (addedList.Any(t => t.Id >= MaxVocabulary)) throw new InvalidDataException($"{path}: an added token's id is not below {MaxVocabulary}");

        tokens = new string?[Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max(), addedList.Count == 0 ? -1 : addedList.Max(t => t.Id)) + 1];
        foreach (var (token, id) in vocab) tokens[id] = token;
        foreach (var token in addedList) { vocab[token.Content] = token.Id; tokens[token.Id] = token.Content; }

        normalizer = Normalizers.Parse(root.TryGetProperty("normalizer", out var n) ? n : default, path);
        preTokenizer = PreTokenizers.Parse(root.TryGetProperty("pre_tokenizer", out var p) ? p : default, path);
        model = new Bpe(modelJson, vocab, path);
        added = new AddedTokens(addedList, normalizer);
        template = PostProcessors.Parse(root.TryGetProperty("post_processor", out var post) ? post : default, vocab, path);
        decoder = Decoders.Parse(root.TryGetProperty("decoder", out var d) ? d : default, addedList.Select(t => t.Content).ToHashSet(StringComparer.Ordinal), path);
        unknownToken = Json.OptionalString(modelJson, "unk_token");
        Kind = Json.Bool(modelJson, "byte_fallback", false) ? "BPE with byte fallback"
            : Json.HasType(root.TryGetProperty("pre_tokenizer", out var pre) ? pre : default, "ByteLevel") ? "byte-level BPE" : "BPE";

        special = addedList.Where(t => t.Special).Select(t => t.Content).ToHashSet(StringComparer.Ordinal);
        if (config.ValueKind == JsonValueKind.Object && config.TryGetProperty("additional_special_tokens", out var more) && more.ValueKind == JsonValueKind.Array)
            foreach (var token in more.EnumerateArray()) if (TokenString(token) is { } s) special.Add(s);
        CleansUpSpaces = config.ValueKind != JsonValueKind.Object || Json.Bool(config, "clean_up_tokenization_spaces", true);
        BosToken = config.ValueKind == JsonValueKind.Object && config.TryGetProperty("bos_token", out var bos) ? TokenString(bos) : null;
        EosToken = config.ValueKind == JsonValueKind.Object && config.TryGetProperty("eos_token", out var eos) ? TokenString(eos) : null;

        SpecialTokens = addedList.GroupBy(t => t.Content).ToDictionary(g => g.Key, g => g.Last().Id, StringComparer.Ordinal);
        BosId = bosId;
        EosIds = eosIds;
    }

    /// <summary>tokenizer_config.json writes a token as its string or as an object with its content.</summary>
    static string? TokenString(JsonElement e) => e.ValueKind == JsonValueKind.String ? e.GetString() : Json.OptionalString(e, "content");

    /// <summary>Token ids of <paramref name="text"/> (special tokens written in it included), nothing added around them.</summary>
    public IReadOnlyList<int> Encode(string text) => Encode(text, addSpecialTokens: false);

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens)
    {
        var ids = new List<int>(text.Length / 3 + 4);
        if (addSpecialTokens) ids.AddRange(template.Before);
        var sections = added.SplitRaw(text);
        for (int s = 0; s < sections.Count; s++)
        {
            var (piece, token) = sections[s];
            if (piece.Length == 0) continue;
            if (token is not null || added.ByContent.TryGetValue(piece, out token)) { ids.Add(token.Id); continue; }
            string normalized = normalizer?.Invoke(piece) ?? piece;
            if (normalized.Length == 0) continue;
            foreach (var (part, partToken) in added.SplitNormalized(normalized))
            {
                if (part.Length == 0) continue;
                if ((partToken ?? added.ByContent.GetValueOrDefault(part)) is { } whole) { ids.Add(whole.Id); continue; }
                foreach (var word in preTokenizer is null ? [part] : preTokenizer([part], s)) model.Encode(word, ids);
            }
        }
        if (addSpecialTokens) ids.AddRange(template.After);
        return ids;
    }

    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens) => Decode(ids, skipSpecialTokens, CleansUpSpaces);

    /// <summary>The decoder chain's text of <paramref name="ids"/>; <paramref name="cleanUpSpaces"/> as tokenizer_config.json's clean_up_tokenization_spaces.</summary>
    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens, bool cleanUpSpaces)
    {
        var pieces = new List<string>(ids.Count);
        foreach (int id in ids)
            if ((IdToToken(id) ?? unknownToken) is { } token && !(skipSpecialTokens && special.Contains(token))) pieces.Add(token);
        string text = decoder is null ? string.Join(' ', pieces) : string.Concat(decoder(pieces));
        if (decoder is not null && model.Suffix.Length > 0)
        {
            text = text.Replace(model.Suffix, " ");
            if (skipSpecialTokens) text = text.Trim();
        }
        return cleanUpSpaces ? Decoders.CleanUp(text) : text;
    }

    public string? IdToToken(int id) => id >= 0 && id < tokens.Length ? tokens[id] : null;

    /// <summary>Reads the tokenizer of a model folder (tokenizer.json first, else vocab.json + merges.txt) with bos/eos from config.json.</summary>
    public static HfTokenizer Load(string folder)
    {
        var (bos, eos) = ReadSpecialIds(Path.Combine(folder, ModelFolder.ConfigFile));
        string generation = Path.Combine(folder, GenerationConfigFile);
        if (File.Exists(generation)) eos = [.. eos.Union(ReadSpecialIds(generation).Eos)];
        string configPath = Path.Combine(folder, ConfigFile);
        using var config = File.Exists(configPath) ? Json.Parse(configPath) : null;
        var configRoot = config?.RootElement ?? default;

        string json = Path.Combine(folder, TokenizerFile), vocab = Path.Combine(folder, VocabFile), merges = Path.Combine(folder, MergesFile);
        if (File.Exists(json))
        {
            using var doc = Json.Parse(json);
            return Create(doc.RootElement, configRoot, json, bos, eos);
        }
        if (File.Exists(vocab) && File.Exists(merges))
        {
            using var doc = Gpt2TokenizerJson(vocab, merges, bos, eos);
            return Create(doc.RootElement, configRoot, vocab, bos, eos);
        }
        throw new InvalidDataException($"{folder} has neither {TokenizerFile} nor {VocabFile} + {MergesFile}");
    }

    /// <summary>The tokenizer a file describes; a part of the wrong JSON kind (a string where an object belongs) is refused as any other unreadable part.</summary>
    static HfTokenizer Create(JsonElement root, JsonElement config, string path, int? bos, IReadOnlyList<int> eos)
    {
        try { return new HfTokenizer(root, config, path, bos, eos); }
        catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException or ArgumentException)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    /// <summary>GPT-2's files as the tokenizer.json they stand for: byte-level BPE, the bos/eos tokens config.json names as special tokens.</summary>
    static JsonDocument Gpt2TokenizerJson(string vocabPath, string mergesPath, int? bos, IReadOnlyList<int> eos)
    {
        Dictionary<string, int> vocab;
        try { vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath)) ?? throw new InvalidDataException($"{vocabPath} is null"); }
        catch (JsonException e) { throw new InvalidDataException($"{vocabPath}: not a JSON object of token → id: {e.Message}", e); }
        var merges = File.ReadLines(mergesPath).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal)).ToList();
        var byId = vocab.GroupBy(kv => kv.Value).ToDictionary(g => g.Key, g => g.First().Key);
        var specials = new[] { bos }.Concat(eos.Select(e => (int?)e)).OfType<int>().Where(byId.ContainsKey).Distinct()
            .Select(id => new { id, content = byId[id], special = true, normalized = false });
        var byteLevel = new { type = "ByteLevel", add_prefix_space = false, use_regex = true };
        return JsonSerializer.SerializeToDocument(new
        {
            added_tokens = specials, normalizer = (object?)null, pre_tokenizer = byteLevel, post_processor = (object?)null, decoder = byteLevel,
            model = new { type = "BPE", vocab, merges },
        });
    }

    /// <summary>bos_token_id and eos_token_id (one id or a list) of config.json; absent when the config has none.</summary>
    internal static (int? Bos, IReadOnlyList<int> Eos) ReadSpecialIds(string configPath)
    {
        if (!File.Exists(configPath)) throw new InvalidDataException($"{configPath} is missing");
        using var doc = Json.Parse(configPath);
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{configPath} is not a JSON object");
        // A multimodal config (Gemma 3's Gemma3ForConditionalGeneration) may name them only in its text_config.
        var text = doc.RootElement.TryGetProperty("text_config", out var t) && t.ValueKind == JsonValueKind.Object ? t : default;
        bool Find(string key, out JsonElement value) =>
            doc.RootElement.TryGetProperty(key, out value) || (text.ValueKind == JsonValueKind.Object && text.TryGetProperty(key, out value));
        int? bos = Find("bos_token_id", out var b) ? Json.Int(b) : null;
        if (!Find("eos_token_id", out var e) || e.ValueKind == JsonValueKind.Null) return (bos, []);
        if (Json.Int(e) is { } eos) return (bos, [eos]);
        if (e.ValueKind == JsonValueKind.Array && e.EnumerateArray().All(x => Json.Int(x) is not null))
            return (bos, e.EnumerateArray().Select(x => x.GetInt32()).ToList());
        throw new InvalidDataException($"{configPath}: eos_token_id is neither a token id nor a list of them");
    }
}
