using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using Microsoft.ML.Tokenizers;

namespace AdapterService.Core.Text;

/// <summary>
/// The tokenizer of a Hugging Face model folder: byte-level BPE (GPT-2, Llama 3, Qwen2 and most current models) read from
/// <c>tokenizer.json</c>, or from <c>vocab.json</c> + <c>merges.txt</c>, run by Microsoft.ML.Tokenizers. Begin and end
/// of sequence ids come from config.json.
/// </summary>
public sealed class HfTokenizer : ITextTokenizer
{
    public const string TokenizerFile = "tokenizer.json", VocabFile = "vocab.json", MergesFile = "merges.txt";

    /// <summary>GPT-2's pre-tokenizer pattern: what ByteLevel's <c>use_regex</c> splits on.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    readonly BpeTokenizer bpe;
    readonly Dictionary<int, string> tokens;   // id → byte-level token text, special tokens excluded

    /// <summary>Added tokens (such as <c>&lt;|endoftext|&gt;</c>, <c>&lt;|eot_id|&gt;</c>): matched whole in text, never split.</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }
    public int? BosId { get; }
    /// <summary>config.json's end ids, and the end of an assistant's turn when the tokenizer has a chat format.</summary>
    public IReadOnlyList<int> EosIds { get; }
    /// <summary>The chat format whose special tokens it has, or null (then it serves completions only).</summary>
    public ChatFormat? Chat { get; }

    HfTokenizer(BpeTokenizer bpe, Dictionary<int, string> tokens, IReadOnlyDictionary<string, int> specialTokens, int? bosId, IReadOnlyList<int> eosIds)
    {
        (this.bpe, this.tokens, SpecialTokens, BosId) = (bpe, tokens, specialTokens, bosId);
        Chat = ChatTemplate.Detect(this);
        EosIds = Chat is { } format && specialTokens.TryGetValue(ChatTemplate.EndToken(format), out int end) ? [.. eosIds.Append(end).Distinct()] : eosIds;
    }

    /// <summary>
    /// Whether sequences start with the begin id: when it is a token of its own (Llama 3's &lt;|begin_of_text|&gt;), not when
    /// it doubles as the end id (GPT-2's &lt;|endoftext|&gt;, which GPT-2's tokenizer never prepends).
    /// </summary>
    bool AddsBos => BosId is { } bos && !EosIds.Contains(bos);

    public List<int> EncodeCompletionPrompt(string prompt) => [.. Encode(prompt, addBos: AddsBos)];

    public List<int> EncodeChatPrompt(IEnumerable<(string Role, string Content)> messages)
    {
        var format = Chat ?? throw new NotSupportedException("this model's tokenizer has no chat format (ChatML or Llama 3); use completions");
        return [.. Encode(ChatTemplate.Render(messages.Select(m => new ChatTurn(m.Role, m.Content)), format), addBos: format == ChatFormat.ChatML && AddsBos)];
    }

    /// <summary>Chat examples in the model's chat format, the loss on the assistant turns marked for training and their end of turn; completions as prompt + completion + end.</summary>
    public (List<int> Ids, List<bool> Train) EncodeExample(TrainingExample example)
    {
        var ids = new List<int>();
        var train = new List<bool>();
        void Add(string text, bool learn) { foreach (var id in bpe.EncodeToIds(text)) { ids.Add(id); train.Add(learn); } }
        switch (example)
        {
            case ChatExample chat:
                var format = Chat ?? throw new NotSupportedException("this model's tokenizer has no chat format (ChatML or Llama 3); train it on prompt/completion examples");
                if (format == ChatFormat.ChatML && AddsBos) { ids.Add(BosId!.Value); train.Add(false); }
                Add(ChatTemplate.Start(format), false);
                foreach (var m in chat.Messages)
                {
                    Add(ChatTemplate.Header(format, m.Role), false);
                    Add(ChatTemplate.Content(format, m.Content) + ChatTemplate.EndOfTurn(format), m.Train);
                }
                break;
            case CompletionExample c:
                if (AddsBos) { ids.Add(BosId!.Value); train.Add(false); }
                Add(c.Prompt, false);
                Add(c.Completion, true);
                if (EosIds is [var eos, ..]) { ids.Add(eos); train.Add(true); }
                break;
        }
        return (ids, train);
    }

    public byte[] TokenBytes(int id) =>
        tokens.TryGetValue(id, out var text) ? text.Select(c => ByteLevel.Decode.TryGetValue(c, out byte b) ? b : (byte)'?').ToArray() : [];

    /// <summary>Token ids of <paramref name="text"/>, special tokens written in it included; with <paramref name="addBos"/>, the begin-of-sequence id first.</summary>
    public IReadOnlyList<int> Encode(string text, bool addBos = false)
    {
        var ids = bpe.EncodeToIds(text);
        return addBos && BosId is { } bos ? [bos, .. ids] : ids;
    }

    /// <summary>The text of <paramref name="ids"/>; special tokens are left out when <paramref name="skipSpecial"/>.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecial = false)
    {
        var special = skipSpecial ? SpecialTokens.Values.ToHashSet() : [];
        return bpe.Decode(ids.Where(id => !special.Contains(id))) ?? "";
    }

    /// <summary>Reads the tokenizer of a model folder (tokenizer.json first, else vocab.json + merges.txt) with bos/eos from config.json.</summary>
    public static HfTokenizer Load(string folder)
    {
        var (bos, eos) = ReadSpecialIds(Path.Combine(folder, ModelFolder.ConfigFile));
        string json = Path.Combine(folder, TokenizerFile), vocab = Path.Combine(folder, VocabFile), merges = Path.Combine(folder, MergesFile);
        if (File.Exists(json)) return FromTokenizerJson(json, bos, eos);
        if (File.Exists(vocab) && File.Exists(merges)) return FromVocabAndMerges(vocab, merges, bos, eos);
        throw new InvalidDataException($"{folder} has neither {TokenizerFile} nor {VocabFile} + {MergesFile}");
    }

    static HfTokenizer FromTokenizerJson(string path, int? bos, IReadOnlyList<int> eos)
    {
        using var doc = Parse(path);
        var root = doc.RootElement;
        var model = Property(root, "model", JsonValueKind.Object, path);
        string type = TypeOf(model);
        if (type != "BPE") throw new InvalidDataException($"{path}: model.type '{type}' is not supported (only byte-level BPE is)");

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in Property(model, "vocab", JsonValueKind.Object, path).EnumerateObject())
            vocab[entry.Name] = Int(entry.Value) ?? throw new InvalidDataException($"{path}: model.vocab['{entry.Name}'] is not a token id");
        var merges = new List<string>();
        foreach (var merge in Property(model, "merges", JsonValueKind.Array, path).EnumerateArray())
            merges.Add(merge.ValueKind switch
            {
                JsonValueKind.String => merge.GetString()!,
                // Newer tokenizers write each merge as a pair, which allows spaces inside tokens.
                JsonValueKind.Array when merge.GetArrayLength() == 2 => $"{merge[0].GetString()} {merge[1].GetString()}",
                _ => throw new InvalidDataException($"{path}: model.merges[{merges.Count}] is neither \"a b\" nor [\"a\", \"b\"]"),
            });

        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
            foreach (var token in added.EnumerateArray())
            {
                if (!token.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String
                    || !token.TryGetProperty("id", out var id) || Int(id) is not { } tokenId)
                    throw new InvalidDataException($"{path}: an added_tokens entry lacks its content or id");
                special[content.GetString()!] = tokenId;
            }

        if (root.TryGetProperty("normalizer", out var normalizer) && normalizer.ValueKind != JsonValueKind.Null
            && TypeOf(normalizer) != "NFC")
            throw new InvalidDataException($"{path}: normalizer {normalizer.GetRawText()} is not supported (none or NFC)");
        bool nfc = normalizer.ValueKind == JsonValueKind.Object;
        string pattern = PreTokenizerPattern(Property(root, "pre_tokenizer", JsonValueKind.Object, path), path);
        return Create(vocab, merges, special, pattern, nfc, bos, eos);
    }

    /// <summary>
    /// The regex a byte-level pre-tokenizer splits on: GPT-2's for <c>ByteLevel</c> with <c>use_regex</c>, or the pattern of a
    /// <c>Split</c> before a <c>ByteLevel</c> (Llama 3, Qwen2).
    /// </summary>
    static string PreTokenizerPattern(JsonElement preTokenizer, string path)
    {
        var steps = TypeOf(preTokenizer) == "Sequence"
            ? Property(preTokenizer, "pretokenizers", JsonValueKind.Array, path).EnumerateArray().ToList()
            : [preTokenizer];
        string? pattern = null;
        bool byteLevel = false;
        foreach (var step in steps)
            switch (TypeOf(step))
            {
                case "Split" when step.TryGetProperty("pattern", out var p) && p.TryGetProperty("Regex", out var regex)
                                  && step.TryGetProperty("behavior", out var b) && b.GetString() == "Isolated":
                    pattern = regex.GetString();
                    break;
                case "ByteLevel":
                    byteLevel = true;
                    if (step.TryGetProperty("add_prefix_space", out var prefix) && prefix.ValueKind == JsonValueKind.True)
                        throw new InvalidDataException($"{path}: pre_tokenizer ByteLevel with add_prefix_space is not supported");
                    if (!step.TryGetProperty("use_regex", out var useRegex) || useRegex.ValueKind == JsonValueKind.True) pattern ??= Gpt2Pattern;
                    break;
                default:
                    throw new InvalidDataException($"{path}: pre_tokenizer step {step.GetRawText()} is not supported");
            }
        if (!byteLevel || pattern is null)
            throw new InvalidDataException($"{path}: pre_tokenizer {preTokenizer.GetRawText()} is not a byte-level BPE pre-tokenizer");
        return pattern;
    }

    static HfTokenizer FromVocabAndMerges(string vocabPath, string mergesPath, int? bos, IReadOnlyList<int> eos)
    {
        Dictionary<string, int> vocab;
        try { vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath)) ?? throw new InvalidDataException($"{vocabPath} is null"); }
        catch (JsonException e) { throw new InvalidDataException($"{vocabPath}: not a JSON object of token → id: {e.Message}", e); }
        var merges = File.ReadLines(mergesPath).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal)).ToList();
        // The files have no list of special tokens; GPT-2's <|endoftext|> is the bos/eos token the config names.
        var byId = vocab.GroupBy(kv => kv.Value).ToDictionary(g => g.Key, g => g.First().Key);
        var special = new[] { bos }.Concat(eos.Select(e => (int?)e)).OfType<int>().Where(byId.ContainsKey).Distinct()
            .ToDictionary(id => byId[id], id => id, StringComparer.Ordinal);
        return Create(vocab, merges, special, Gpt2Pattern, nfc: false, bos, eos);
    }

    static HfTokenizer Create(Dictionary<string, int> vocab, List<string> merges, Dictionary<string, int> special, string pattern, bool nfc, int? bos, IReadOnlyList<int> eos)
    {
        var bpe = BpeTokenizer.Create(new BpeOptions(vocab.Where(kv => !special.ContainsKey(kv.Key)))
        {
            Merges = merges,
            ByteLevel = true,
            SpecialTokens = special,
            PreTokenizer = new RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled), special),
            Normalizer = nfc ? new NfcNormalizer() : null,
        });
        var tokens = vocab.Where(kv => !special.ContainsKey(kv.Key)).GroupBy(kv => kv.Value).ToDictionary(g => g.Key, g => g.First().Key);
        return new HfTokenizer(bpe, tokens, special, bos, eos);
    }

    /// <summary>bos_token_id and eos_token_id (one id or a list) of config.json; absent when the config has none.</summary>
    internal static (int? Bos, IReadOnlyList<int> Eos) ReadSpecialIds(string configPath)
    {
        if (!File.Exists(configPath)) throw new InvalidDataException($"{configPath} is missing");
        using var doc = Parse(configPath);
        int? bos = doc.RootElement.TryGetProperty("bos_token_id", out var b) ? Int(b) : null;
        if (!doc.RootElement.TryGetProperty("eos_token_id", out var e) || e.ValueKind == JsonValueKind.Null) return (bos, []);
        if (Int(e) is { } eos) return (bos, [eos]);
        if (e.ValueKind == JsonValueKind.Array && e.EnumerateArray().All(x => Int(x) is not null))
            return (bos, e.EnumerateArray().Select(x => x.GetInt32()).ToList());
        throw new InvalidDataException($"{configPath}: eos_token_id is neither a token id nor a list of them");
    }

    static string TypeOf(JsonElement e) => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "";

    static int? Int(JsonElement e) => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int value) ? value : null;

    static JsonDocument Parse(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e); }
    }

    static JsonElement Property(JsonElement e, string name, JsonValueKind kind, string path) =>
        e.TryGetProperty(name, out var value) && value.ValueKind == kind ? value
            : throw new InvalidDataException($"{path}: {name} is missing or not a JSON {kind.ToString().ToLowerInvariant()}");

    sealed class NfcNormalizer : Normalizer
    {
        public override string Normalize(string original) => original.Normalize(NormalizationForm.FormC);
        public override string Normalize(ReadOnlySpan<char> original) => original.ToString().Normalize(NormalizationForm.FormC);
    }
}
