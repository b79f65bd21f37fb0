using Google.Protobuf;

namespace AdapterService.Tests.Shared;

/// <summary>
/// Writes SentencePiece <c>tokenizer.model</c> files byte by byte from sentencepiece_model.proto (ModelProto: pieces = 1,
/// trainer_spec = 2, normalizer_spec = 3), independent of the service's reading code.
/// </summary>
public static class SentencePieceModelWriter
{
    public const int Normal = 1, Unknown = 2, Control = 3, Byte = 6;
    public const int Unigram = 1, Bpe = 2;

    /// <summary>
    /// A tiny Llama-like BPE model: &lt;unk&gt; 0, &lt;s&gt; 1, &lt;/s&gt; 2, the byte pieces &lt;0x00&gt;-&lt;0xFF&gt; at 3-258, then the
    /// characters of "▁helo" and the merges "ll", "▁h", "▁he", "▁hell", "▁hello" (higher score merges first).
    /// </summary>
    public static List<(string Piece, float Score, int Type)> TinyPieces()
    {
        var pieces = new List<(string, float, int)> { ("<unk>", 0, Unknown), ("<s>", 0, Control), ("</s>", 0, Control) };
        for (int b = 0; b < 256; b++) pieces.Add(($"<0x{b:X2}>", 0, Byte));
        foreach (var merge in new[] { "ll", "▁h", "▁he", "▁hell", "▁hello" }) pieces.Add((merge, -pieces.Count, Normal));
        foreach (var c in "▁helo") pieces.Add((c.ToString(), -pieces.Count, Normal));
        return pieces;
    }

    /// <summary>Id of <paramref name="piece"/> in <see cref="TinyPieces"/>.</summary>
    public static int TinyId(string piece) => TinyPieces().FindIndex(p => p.Piece == piece);

    public static byte[] Write(IEnumerable<(string Piece, float Score, int Type)> pieces, int modelType = Bpe, bool byteFallback = true, bool addDummyPrefix = true)
    {
        var stream = new MemoryStream();
        var output = new CodedOutputStream(stream);
        foreach (var (piece, score, type) in pieces)
            Message(output, 1, m =>
            {
                m.WriteTag(1, WireFormat.WireType.LengthDelimited); m.WriteString(piece);
                m.WriteTag(2, WireFormat.WireType.Fixed32); m.WriteFloat(score);
                m.WriteTag(3, WireFormat.WireType.Varint); m.WriteEnum(type);
            });
        Message(output, 2, m =>
        {
            m.WriteTag(3, WireFormat.WireType.Varint); m.WriteEnum(modelType);
            m.WriteTag(35, WireFormat.WireType.Varint); m.WriteBool(byteFallback);
            m.WriteTag(40, WireFormat.WireType.Varint); m.WriteInt32(0);    // unk_id
            m.WriteTag(41, WireFormat.WireType.Varint); m.WriteInt32(1);    // bos_id
            m.WriteTag(42, WireFormat.WireType.Varint); m.WriteInt32(2);    // eos_id
            m.WriteTag(43, WireFormat.WireType.Varint); m.WriteInt32(-1);   // pad_id: none
        });
        Message(output, 3, m =>
        {
            m.WriteTag(1, WireFormat.WireType.LengthDelimited); m.WriteString("identity");
            m.WriteTag(3, WireFormat.WireType.Varint); m.WriteBool(addDummyPrefix);
            m.WriteTag(4, WireFormat.WireType.Varint); m.WriteBool(false);   // remove_extra_whitespaces
            m.WriteTag(5, WireFormat.WireType.Varint); m.WriteBool(true);    // escape_whitespaces
        });
        output.Flush();
        return stream.ToArray();
    }

    static void Message(CodedOutputStream output, int field, Action<CodedOutputStream> write)
    {
        var inner = new MemoryStream();
        var m = new CodedOutputStream(inner);
        write(m);
        m.Flush();
        output.WriteTag(field, WireFormat.WireType.LengthDelimited);
        output.WriteBytes(ByteString.CopyFrom(inner.ToArray()));
    }
}
