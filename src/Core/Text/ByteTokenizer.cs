using System.Text;
using System.Text.Json;

namespace AdapterService.Core.Text;

/// <summary>
/// Byte-level tokenizer of the built-in demo models: ids 0-255 are the UTF-8 bytes, then a few special tokens. Their
/// chat template (<see cref="FallbackChatFormats.BuiltIn"/>) writes <c>&lt;|role|&gt;content&lt;|end|&gt;</c> per
/// message after a leading <c>&lt;|begin|&gt;</c>.
/// </summary>
public sealed class ByteTokenizer : ITextTokenizer
{
    public const int End = 256, System = 257, User = 258, Assistant = 259, Begin = 260;
    public const int VocabSize = 264;   // 261 used, rounded up to a multiple of 8
    public const string FileName = "tokenizer_config.json";

    public int EosId => End;
    public int BosId => Begin;
    public IReadOnlyList<int> EosIds => [End];

    /// <summary>The special tokens as chat templates write them.</summary>
    static readonly (string Text, int Id)[] Specials =
        [("<|end|>", End), ("<|system|>", System), ("<|user|>", User), ("<|assistant|>", Assistant), ("<|begin|>", Begin)];

    /// <summary>The UTF-8 bytes of <paramref name="text"/>, special tokens' strings in it as bytes too (what chat turns' contents are).</summary>
    public List<int> Encode(string text) => Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToList();

    /// <summary>Hugging Face-style encode: special tokens' strings in the text become their ids (so a rendered chat template gives the role and end ids); with <paramref name="addSpecialTokens"/>, <c>&lt;|begin|&gt;</c> first.</summary>
    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens)
    {
        var ids = addSpecialTokens ? new List<int> { Begin } : [];
        int start = 0;
        for (int i = text.IndexOf("<|", StringComparison.Ordinal); i >= 0; i = text.IndexOf("<|", i, StringComparison.Ordinal))
        {
            int match = Array.FindIndex(Specials, s => string.CompareOrdinal(text, i, s.Text, 0, s.Text.Length) == 0);
            if (match < 0) { i += 2; continue; }
            ids.AddRange(Encode(text[start..i]));
            ids.Add(Specials[match].Id);
            start = i += Specials[match].Text.Length;
        }
        ids.AddRange(Encode(text[start..]));
        return ids;
    }

    /// <summary>The UTF-8 text of the byte ids (invalid sequences as U+FFFD), special tokens as their strings unless skipped.</summary>
    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens)
    {
        var text = new StringBuilder();
        var bytes = new List<byte>();
        void Flush() { text.Append(Encoding.UTF8.GetString([.. bytes])); bytes.Clear(); }
        foreach (int id in ids)
            if (IsByte(id)) bytes.Add((byte)id);
            else if (!skipSpecialTokens && IdToToken(id) is { } special) { Flush(); text.Append(special); }
        Flush();
        return text.ToString();
    }

    /// <summary>Printable ASCII bytes as themselves, other bytes as <c>&lt;0xNN&gt;</c>, special tokens as their strings.</summary>
    public string? IdToToken(int id) => id switch
    {
        >= 33 and < 127 => ((char)id).ToString(),
        >= 0 and < 256 => $"<0x{id:X2}>",
        _ => Array.Find(Specials, s => s.Id == id).Text,
    };

    public int VocabularySize => Begin + 1;
    public string? BosToken => "<|begin|>";
    public string? EosToken => "<|end|>";

    /// <summary>True for ids that stand for text bytes (special tokens print nothing).</summary>
    public static bool IsByte(int id) => id is >= 0 and < 256;

    /// <summary>Whether <paramref name="folder"/> holds this tokenizer's file (as <see cref="Save"/> writes it).</summary>
    public static bool IsSavedIn(string folder)
    {
        var path = Path.Combine(folder, FileName);
        if (!File.Exists(path)) return false;
        try
        {
            using var json = JsonDocument.Parse(File.ReadAllText(path));
            return json.RootElement.ValueKind == JsonValueKind.Object && json.RootElement.TryGetProperty("tokenizer_class", out var c)
                   && c.ValueKind == JsonValueKind.String && c.GetString() == TokenizerClass;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    const string TokenizerClass = "ByteLevelTokenizer";

    public static void Save(string folder) => File.WriteAllText(Path.Combine(folder, FileName), JsonSerializer.Serialize(new
    {
        tokenizer_class = TokenizerClass,
        vocab_size = VocabSize,
        bos_token = "<|begin|>",
        eos_token = "<|end|>",
        chat_template = FallbackChatFormats.BuiltIn,
        added_tokens = new Dictionary<string, int>
        {
            ["<|end|>"] = End, ["<|system|>"] = System, ["<|user|>"] = User, ["<|assistant|>"] = Assistant, ["<|begin|>"] = Begin,
        },
    }, new JsonSerializerOptions { WriteIndented = true }));
}
