using System.Text;
using System.Text.Json;
using AdapterService.Core.Models;
using Google.Protobuf;
using Microsoft.ML.Tokenizers;

namespace AdapterService.Core.Text;

/// <summary>
/// The SentencePiece tokenizer of a model folder's <c>tokenizer.model</c> (Llama 1/2, Mistral, Gemma and other folders
/// converted from SentencePiece), run by Microsoft.ML.Tokenizers. Begin/end ids come from config.json, else from the model
/// itself; the model has no chat format, so it serves completions and trains on prompt/completion examples.
/// </summary>
public sealed class SentencePieceTextTokenizer : ITextTokenizer
{
    public const string ModelFile = "tokenizer.model";
    const char Space = '\u2581';   // '▁', what SentencePiece writes spaces as inside pieces

    readonly SentencePieceTokenizer sp;
    readonly string[] pieces;       // per id: the piece as the model writes it
    readonly int[] types;           // per id: its SentencePiece type (normal, unknown, control, byte…)

    /// <summary>"BPE" or "Unigram": the algorithm the model was trained with.</summary>
    public string Algorithm { get; }
    public int? BosId { get; }
    public IReadOnlyList<int> EosIds { get; }
    /// <summary>Whether prompts and examples start with the begin id (tokenizer_config.json's <c>add_bos_token</c>, true by default as in Llama's).</summary>
    public bool AddsBos { get; }

    SentencePieceTextTokenizer(SentencePieceTokenizer sp, ModelInfo model, int? bosId, IReadOnlyList<int> eosIds, bool addsBos)
    {
        (this.sp, BosId, EosIds, AddsBos) = (sp, bosId, eosIds, addsBos && bosId is not null);
        Algorithm = model.Type == Bpe ? "BPE" : "Unigram";
        pieces = [.. model.Pieces.Select(p => p.Piece)];
        types = [.. model.Pieces.Select(p => p.Type)];
    }

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens) => addSpecialTokens && AddsBos ? [BosId!.Value, .. Encode(text)] : Encode(text);

    /// <summary>
    /// The text of the pieces (▁ as a space, byte pieces as UTF-8 with U+FFFD for invalid sequences); control and unknown
    /// pieces as written unless <paramref name="skipSpecialTokens"/>; the word-start space the model puts first dropped.
    /// </summary>
    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens)
    {
        var text = new StringBuilder();
        var bytes = new List<byte>();
        bool first = true;
        void Flush() { if (bytes.Count > 0) { text.Append(Encoding.UTF8.GetString([.. bytes])); bytes.Clear(); } }
        foreach (int id in ids)
        {
            if (id < 0 || id >= pieces.Length) continue;
            string piece = pieces[id];
            switch (types[id])
            {
                case Byte when piece.Length == 6 && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out byte b):
                    bytes.Add(b);
                    first = false;
                    continue;
                case Control or Unknown when skipSpecialTokens:
                case Unused:
                    continue;
                case Normal when first && sp.AddDummyPrefix && piece.StartsWith(Space):
                    piece = piece[1..];
                    break;
            }
            Flush();
            text.Append(piece.Replace(Space, ' '));
            first = false;
        }
        Flush();
        return text.ToString();
    }

    public string? IdToToken(int id) => id >= 0 && id < pieces.Length ? pieces[id] : null;

    public int VocabularySize => pieces.Length;
    public string? BosToken => BosId is { } id ? IdToToken(id) : null;
    public string? EosToken => EosIds is [var id, ..] ? IdToToken(id) : null;

    /// <summary>Token ids of <paramref name="text"/> as the start of a sequence (with the model's word-start prefix, no begin id).</summary>
    public IReadOnlyList<int> Encode(string text) => sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false);

    /// <summary>Reads <c>tokenizer.model</c> with begin/end ids from config.json (else the model's) and <c>add_bos_token</c> from tokenizer_config.json.</summary>
    public static SentencePieceTextTokenizer Load(string folder)
    {
        string path = Path.Combine(folder, ModelFile);
        var bytes = File.ReadAllBytes(path);
        ModelInfo model;
        try { model = ReadModel(bytes); }
        catch (InvalidProtocolBufferException e) { throw new InvalidDataException($"{path}: not a SentencePiece model: {e.Message}", e); }
        if (model.Pieces.Count == 0) throw new InvalidDataException($"{path}: not a SentencePiece model (no pieces)");
        if (model.Type is not (Bpe or Unigram))
            throw new InvalidDataException($"{path}: model type {model.Type} is not supported (only BPE = 2 and Unigram = 1 are)");
        SentencePieceTokenizer sp;
        try { sp = SentencePieceTokenizer.Create(new MemoryStream(bytes), addBeginningOfSentence: false, addEndOfSentence: false); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }

        var (bos, eos) = HfTokenizer.ReadSpecialIds(Path.Combine(folder, ModelFolder.ConfigFile));
        string generation = Path.Combine(folder, HfTokenizer.GenerationConfigFile);
        if (File.Exists(generation)) eos = [.. eos.Union(HfTokenizer.ReadSpecialIds(generation).Eos)];
        bos ??= sp.BeginningOfSentenceId >= 0 ? sp.BeginningOfSentenceId : null;
        if (eos.Count == 0 && sp.EndOfSentenceId >= 0) eos = [sp.EndOfSentenceId];
        return new SentencePieceTextTokenizer(sp, model, bos, eos, ReadAddBos(Path.Combine(folder, ByteTokenizer.FileName)));
    }

    static bool ReadAddBos(string path)
    {
        if (!File.Exists(path)) return true;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            return !(doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("add_bos_token", out var add)
                     && add.ValueKind == JsonValueKind.False);
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e); }
    }

    // sentencepiece_model.proto: ModelProto { repeated SentencePiece pieces = 1; TrainerSpec trainer_spec = 2; ... },
    // SentencePiece { string piece = 1; float score = 2; Type type = 3 [default NORMAL] }, TrainerSpec { ModelType model_type = 3 [default UNIGRAM]; ... }.
    // Microsoft.ML.Tokenizers keeps its parsed copy internal, so the few fields the service needs beyond it (each piece's
    // string and type, the algorithm) are read here.
    const int Unigram = 1, Bpe = 2;
    const int Normal = 1, Unknown = 2, Control = 3, Unused = 5, Byte = 6;

    sealed record ModelInfo(List<(string Piece, int Type)> Pieces, int Type);

    static ModelInfo ReadModel(byte[] bytes)
    {
        var pieces = new List<(string, int)>();
        int type = Unigram;
        var input = new CodedInputStream(bytes);
        for (uint tag; (tag = input.ReadTag()) != 0;)
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 1 when WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited:
                    pieces.Add(ReadPiece(new CodedInputStream(input.ReadBytes().ToByteArray())));
                    break;
                case 2 when WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited:
                    var spec = new CodedInputStream(input.ReadBytes().ToByteArray());
                    for (uint t; (t = spec.ReadTag()) != 0;)
                        if (t == WireFormat.MakeTag(3, WireFormat.WireType.Varint)) type = spec.ReadEnum();
                        else spec.SkipLastField();
                    break;
                default:
                    input.SkipLastField();
                    break;
            }
        return new ModelInfo(pieces, type);
    }

    static (string Piece, int Type) ReadPiece(CodedInputStream input)
    {
        (string piece, int type) = ("", Normal);
        for (uint tag; (tag = input.ReadTag()) != 0;)
            if (tag == WireFormat.MakeTag(1, WireFormat.WireType.LengthDelimited)) piece = input.ReadString();
            else if (tag == WireFormat.MakeTag(3, WireFormat.WireType.Varint)) type = input.ReadEnum();
            else input.SkipLastField();
        return (piece, type);
    }
}
