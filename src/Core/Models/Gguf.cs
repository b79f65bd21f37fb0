using System.Text;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>The tensor encodings this service writes (ggml's <c>ggml_type</c> numbers, as in gguf-py's <c>GGMLQuantizationType</c>).</summary>
public enum GgufType : uint { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 }

/// <summary>
/// One tensor to write: its GGUF name, its shape in PyTorch order (rows last-dimension-contiguous), its encoding, and a
/// function that produces its float32 values when the writer reaches it, so only one tensor is in memory at a time.
/// </summary>
public sealed record GgufTensor(string Name, long[] Shape, GgufType Type, Func<Tensor> Values)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);

    public long Bytes => Type switch
    {
        GgufType.F32 => Elements * 4,
        GgufType.F16 or GgufType.BF16 => Elements * 2,
        GgufType.Q8_0 => Elements / Gguf.Q8Block * (2 + Gguf.Q8Block),
        _ => throw new NotSupportedException($"GGUF type {Type}"),
    };
}

/// <summary>
/// A GGUF v3 writer (ggml's docs/gguf.md): the header, the metadata key-values, the tensor infos, padding to
/// <c>general.alignment</c>, then each tensor's data at an aligned offset. Little-endian throughout.
/// </summary>
public static class Gguf
{
    public const int Alignment = 32, Q8Block = 32;
    const uint Magic = 0x46554747;   // "GGUF" read as a little-endian uint32

    // gguf_metadata_value_type
    const uint UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9;

    /// <summary>
    /// Writes a GGUF file. Metadata values may be string, uint, int, float, bool, string[], int[] or float[]
    /// (the types llama.cpp reads for the keys this service writes).
    /// </summary>
    public static void Write(Stream output, IReadOnlyList<(string Key, object Value)> metadata, IReadOnlyList<GgufTensor> tensors)
    {
        using var w = new BinaryWriter(output, Encoding.UTF8, leaveOpen: true);
        w.Write(Magic);
        w.Write(3u);
        w.Write((ulong)tensors.Count);
        w.Write((ulong)metadata.Count);
        foreach (var (key, value) in metadata)
        {
            WriteString(w, key);
            WriteValue(w, value);
        }
        long offset = 0;
        foreach (var t in tensors)
        {
            WriteString(w, t.Name);
            // Dimensions go fastest-varying first (ggml's ne[0] is a row's length): PyTorch's shape reversed.
            w.Write((uint)t.Shape.Length);
            foreach (long d in t.Shape.Reverse()) w.Write((ulong)d);
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offset = Align(offset + t.Bytes);
        }
        Pad(w);
        long dataStart = output.Position;
        foreach (var t in tensors)
        {
            using (NewDisposeScope())
            {
                var values = t.Values().to_type(ScalarType.Float32).contiguous();
                if (!values.shape.SequenceEqual(t.Shape))
                    throw new InvalidOperationException($"{t.Name} has shape [{string.Join(",", values.shape)}], not [{string.Join(",", t.Shape)}]");
                w.Write(Encode(values, t.Type));
            }
            Pad(w, dataStart);
        }
    }

    static byte[] Encode(Tensor values, GgufType type) => type switch
    {
        GgufType.F32 => values.to_type(ScalarType.Float32).bytes.ToArray(),   // a bf16 base's matrices are widened, exactly
        GgufType.F16 => values.to_type(ScalarType.Float16).bytes.ToArray(),
        GgufType.BF16 => values.to_type(ScalarType.BFloat16).bytes.ToArray(),
        GgufType.Q8_0 => QuantizeQ8(values.to_type(ScalarType.Float32).data<float>().ToArray()),
        _ => throw new NotSupportedException($"GGUF type {type}"),
    };

    /// <summary>
    /// Q8_0 as gguf-py's <c>quants.Q8_0</c> does it: per block of 32 values, d = max|x| / 127 stored as fp16, then the
    /// 32 values x / d rounded half away from zero to int8 (with the fp32 d, before it is rounded to fp16).
    /// </summary>
    public static byte[] QuantizeQ8(ReadOnlySpan<float> values)
    {
        if (values.Length % Q8Block != 0) throw new ArgumentException($"{values.Length} values do not fill blocks of {Q8Block}");
        var bytes = new byte[values.Length / Q8Block * (2 + Q8Block)];
        for (int b = 0, o = 0; b < values.Length; b += Q8Block, o += 2 + Q8Block)
        {
            var block = values.Slice(b, Q8Block);
            float max = 0;
            foreach (float x in block) max = Math.Max(max, Math.Abs(x));
            float d = max / 127, id = d == 0 ? 0 : 1 / d;
            BitConverter.TryWriteBytes(bytes.AsSpan(o, 2), (Half)d);
            for (int i = 0; i < Q8Block; i++)
                bytes[o + 2 + i] = (byte)(sbyte)MathF.Round(block[i] * id, MidpointRounding.AwayFromZero);
        }
        return bytes;
    }

    static long Align(long offset) => (offset + Alignment - 1) / Alignment * Alignment;

    static void Pad(BinaryWriter w, long from = 0)
    {
        long position = w.BaseStream.Position - from;
        for (long i = position; i < Align(position); i++) w.Write((byte)0);
    }

    static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static void WriteValue(BinaryWriter w, object value)
    {
        switch (value)
        {
            case string s: w.Write(String); WriteString(w, s); break;
            case uint u: w.Write(UInt32); w.Write(u); break;
            case int i: w.Write(Int32); w.Write(i); break;
            case float f: w.Write(Float32); w.Write(f); break;
            case bool b: w.Write(Bool); w.Write(b); break;
            case string[] strings:
                w.Write(Array); w.Write(String); w.Write((ulong)strings.Length);
                foreach (string s in strings) WriteString(w, s);
                break;
            case int[] ints:
                w.Write(Array); w.Write(Int32); w.Write((ulong)ints.Length);
                foreach (int i in ints) w.Write(i);
                break;
            case float[] floats:
                w.Write(Array); w.Write(Float32); w.Write((ulong)floats.Length);
                foreach (float f in floats) w.Write(f);
                break;
            default: throw new ArgumentException($"GGUF metadata cannot hold a {value.GetType().Name}");
        }
    }
}
