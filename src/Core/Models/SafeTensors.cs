using System.Buffers;
using System.Buffers.Binary;
using System.Text.Json;
using System.Text.Unicode;
using TorchSharp;

namespace AdapterService.Core.Models;

/// <summary>A safetensors file failed validation; the message names the file, the tensor (where there is one) and the problem.</summary>
/// <remarks>An <see cref="IOException"/> because <see cref="InvalidDataException"/>, the closer fit, is sealed.</remarks>
public sealed class SafeTensorsException(string message) : IOException(message);

/// <summary>One header entry. Begin and End are byte offsets into the data buffer that follows the header.</summary>
public sealed record SafeTensorInfo(string Name, string DType, long[] Shape, long Begin, long End);

/// <summary>
/// Reader and writer for the safetensors format: u64 little-endian header length N, N bytes of UTF-8 JSON header,
/// then the data buffer of row-major little-endian tensors.
/// </summary>
public static class SafeTensors
{
    const ulong MaxHeaderBytes = 100_000_000;
    const string MetadataKey = "__metadata__";
    const int CopyBufferBytes = 1 << 20;

    // Every fixed-size dtype the format defines, so headers of any valid file parse; Load handles only Loadable ones.
    static readonly Dictionary<string, int> DTypeSizes = new(StringComparer.Ordinal)
    {
        ["BOOL"] = 1, ["U8"] = 1, ["I8"] = 1, ["F8_E4M3"] = 1, ["F8_E5M2"] = 1,
        ["U16"] = 2, ["I16"] = 2, ["F16"] = 2, ["BF16"] = 2,
        ["U32"] = 4, ["I32"] = 4, ["F32"] = 4, ["U64"] = 8, ["I64"] = 8, ["F64"] = 8,
    };

    static readonly Dictionary<string, torch.ScalarType> Loadable = new(StringComparer.Ordinal)
    {
        ["F32"] = torch.ScalarType.Float32, ["F16"] = torch.ScalarType.Float16, ["BF16"] = torch.ScalarType.BFloat16,
    };

    /// <summary>Whether <see cref="SafeTensorsFile.Read"/> reads tensors of this header dtype; <see cref="LoadableDTypes"/> names them.</summary>
    public static bool CanLoad(string dtype) => Loadable.ContainsKey(dtype);

    public static string LoadableDTypes => string.Join(", ", Loadable.Keys);

    /// <summary>
    /// Writes float32/float16/bfloat16 tensors (any device, any layout) sorted by name, plus optional metadata.
    /// The file appears under <paramref name="path"/> only once complete.
    /// </summary>
    public static void Save(string path, IReadOnlyDictionary<string, torch.Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        if (tensors.ContainsKey(MetadataKey)) throw new ArgumentException($"'{MetadataKey}' is reserved and cannot name a tensor", nameof(tensors));
        using var scope = torch.NewDisposeScope();   // frees the CPU/contiguous copies made here, never the caller's tensors
        var ordered = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => (Name: kv.Key, DType: DTypeName(kv.Key, kv.Value), Tensor: kv.Value.cpu().contiguous()))
            .ToList();

        var json = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(json))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject(MetadataKey);
                foreach (var (key, value) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) w.WriteString(key, value);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, dtype, t) in ordered)
            {
                w.WriteStartObject(name);
                w.WriteString("dtype", dtype);
                w.WriteStartArray("shape");
                foreach (long d in t.shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset = checked(offset + t.NumberOfElements * t.ElementSize));
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        // Padding keeps the data buffer 8-byte aligned for readers that map the file.
        int headerLength = (json.WrittenCount + 7) / 8 * 8;

        string tmp = $"{path}.tmp-{Guid.NewGuid():N}";
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                Span<byte> prefix = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)headerLength);
                fs.Write(prefix);
                fs.Write(json.WrittenSpan);
                for (int i = json.WrittenCount; i < headerLength; i++) fs.WriteByte((byte)' ');
                foreach (var (_, _, t) in ordered) t.WriteBytesToStream(fs, BufferFor(t.NumberOfElements * t.ElementSize));
                fs.Flush(flushToDisk: true);   // so a crash after the rename cannot leave a renamed but empty file
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }

    /// <summary>Parses and validates only the header. Tensors come in data-buffer order.</summary>
    public static (IReadOnlyList<SafeTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata) ReadHeader(string path)
    {
        using var fs = File.OpenRead(path);
        var (tensors, metadata, _) = ParseHeader(fs, path);
        return (tensors, metadata);
    }

    /// <summary>Loads every tensor as a CPU tensor of its stored dtype (F32, F16 or BF16); the caller owns the results.</summary>
    public static Dictionary<string, torch.Tensor> Load(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        if (file.Tensors.FirstOrDefault(i => !Loadable.ContainsKey(i.DType)) is { } unsupported)
            throw Fail(path, unsupported.Name, $"dtype {unsupported.DType} cannot be loaded (only F32, F16 and BF16 can)");

        using var scope = torch.NewDisposeScope();   // frees the tensors loaded so far if a later one fails
        var result = new Dictionary<string, torch.Tensor>(StringComparer.Ordinal);
        foreach (var info in file.Tensors)   // in data order, so the reads run forward through the file
            result.Add(info.Name, file.Read(info));
        foreach (var t in result.Values) t.DetachFromDisposeScope();
        return result;
    }

    /// <summary>Reads one tensor's bytes from <paramref name="fs"/> into a new CPU tensor of its stored dtype.</summary>
    internal static torch.Tensor Read(FileStream fs, long dataStart, SafeTensorInfo info, string path)
    {
        if (!Loadable.TryGetValue(info.DType, out var dtype))
            throw Fail(path, info.Name, $"dtype {info.DType} cannot be loaded (only F32, F16 and BF16 can)");
        var t = torch.empty(info.Shape, dtype);
        try
        {
            fs.Position = dataStart + info.Begin;
            t.ReadBytesFromStream(fs, BufferFor(info.End - info.Begin));
            return t;
        }
        catch (EndOfStreamException)
        {
            t.Dispose();
            throw Fail(path, info.Name, "file ended inside the tensor's data (truncated while reading?)");
        }
    }

    static string DTypeName(string name, torch.Tensor t) => t.dtype switch
    {
        torch.ScalarType.Float32 => "F32",
        torch.ScalarType.Float16 => "F16",
        torch.ScalarType.BFloat16 => "BF16",
        var other => throw new ArgumentException($"tensor '{name}' has dtype {other}; only float32, float16 and bfloat16 can be saved"),
    };

    static int BufferFor(long bytes) => (int)Math.Clamp(bytes, 1, CopyBufferBytes);

    internal static (List<SafeTensorInfo> Tensors, Dictionary<string, string> Metadata, long DataStart) ParseHeader(FileStream fs, string path)
    {
        long fileLength = fs.Length;
        if (fileLength < 8) throw Fail(path, null, $"file is {fileLength} bytes, shorter than the 8-byte header length");
        Span<byte> prefix = stackalloc byte[8];
        fs.ReadExactly(prefix);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (n > MaxHeaderBytes) throw Fail(path, null, $"header length {n} exceeds the {MaxHeaderBytes}-byte limit");
        if ((long)n > fileLength - 8) throw Fail(path, null, $"header length {n} runs past the end of the {fileLength}-byte file");
        var header = new byte[n];
        fs.ReadExactly(header);
        if (!Utf8.IsValid(header)) throw Fail(path, null, "header is not valid UTF-8");

        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException e) { throw Fail(path, null, $"header is not valid JSON: {e.Message}"); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw Fail(path, null, $"header is a JSON {root.ValueKind}, not an object");
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var infos = new List<SafeTensorInfo>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            try
            {
                foreach (var prop in root.EnumerateObject())
                {
                    if (!seen.Add(prop.Name)) throw Fail(path, prop.Name, "appears twice in the header");
                    if (prop.Name == MetadataKey) ReadMetadata(prop.Value, metadata, path);
                    else infos.Add(ReadEntry(prop.Name, prop.Value, path));
                }
            }
            // JSON allows escapes of lone UTF-16 surrogates ("\ud800"), which no .NET string can be read from.
            catch (InvalidOperationException) { throw Fail(path, null, "header has a name or string with an unpaired surrogate escape"); }
            CheckRanges(infos, fileLength - 8 - (long)n, path);
            return (infos, metadata, 8 + (long)n);
        }
    }

    static void ReadMetadata(JsonElement e, Dictionary<string, string> metadata, string path)
    {
        if (e.ValueKind != JsonValueKind.Object) throw Fail(path, MetadataKey, "is not a JSON object");
        foreach (var p in e.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.String) throw Fail(path, MetadataKey, $"value of '{p.Name}' is not a string");
            metadata[p.Name] = p.Value.GetString()!;
        }
    }

    static SafeTensorInfo ReadEntry(string name, JsonElement e, string path)
    {
        if (e.ValueKind != JsonValueKind.Object) throw Fail(path, name, "entry is not a JSON object");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw Fail(path, name, "dtype is missing or not a string");
        string dtype = dt.GetString()!;
        if (!DTypeSizes.TryGetValue(dtype, out int size)) throw Fail(path, name, $"unknown dtype '{dtype}'");
        long[] shape = ReadNaturals(e, "shape", name, path);
        long[] offsets = ReadNaturals(e, "data_offsets", name, path);
        if (offsets.Length != 2) throw Fail(path, name, $"data_offsets has {offsets.Length} elements, not [begin, end]");
        var (begin, end) = (offsets[0], offsets[1]);
        if (begin > end) throw Fail(path, name, $"data_offsets begin {begin} is after end {end}");

        long bytes = size;
        try
        {
            foreach (long d in shape) bytes = checked(bytes * d);
        }
        catch (OverflowException) { throw Fail(path, name, $"shape [{string.Join(", ", shape)}] of {dtype} overflows a 64-bit byte count"); }
        if (bytes != end - begin)
            throw Fail(path, name, $"shape [{string.Join(", ", shape)}] of {dtype} needs {bytes} bytes but data_offsets span {end - begin}");
        return new SafeTensorInfo(name, dtype, shape, begin, end);
    }

    static long[] ReadNaturals(JsonElement e, string key, string name, string path)
    {
        if (!e.TryGetProperty(key, out var arr) || arr.ValueKind != JsonValueKind.Array)
            throw Fail(path, name, $"{key} is missing or not an array");
        var values = new long[arr.GetArrayLength()];
        int i = 0;
        foreach (var v in arr.EnumerateArray())
        {
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x))
                throw Fail(path, name, $"{key}[{i}] is not a 64-bit integer");
            if (x < 0) throw Fail(path, name, $"{key}[{i}] is negative ({x})");
            values[i++] = x;
        }
        return values;
    }

    /// <summary>Sorts into data order and rejects ranges past the buffer or overlapping one another.</summary>
    static void CheckRanges(List<SafeTensorInfo> infos, long dataLength, string path)
    {
        infos.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin)
            : a.End != b.End ? a.End.CompareTo(b.End) : string.CompareOrdinal(a.Name, b.Name));
        SafeTensorInfo? furthest = null;   // the earlier range reaching furthest; any overlap involves it
        foreach (var info in infos)
        {
            if (info.End > dataLength)
                throw Fail(path, info.Name, $"data_offsets end {info.End} is beyond the {dataLength}-byte data buffer");
            if (furthest is not null && info.Begin < furthest.End)
                throw Fail(path, info.Name, $"bytes [{info.Begin}, {info.End}) overlap tensor '{furthest.Name}' [{furthest.Begin}, {furthest.End})");
            if (furthest is null || info.End > furthest.End) furthest = info;
        }
    }

    /// <summary>The error, naming the file by its name alone: messages reach API callers, who must not learn server paths.</summary>
    internal static SafeTensorsException Fail(string path, string? tensor, string problem) =>
        new(tensor is null ? $"{System.IO.Path.GetFileName(path)}: {problem}" : $"{System.IO.Path.GetFileName(path)}: tensor '{tensor}': {problem}");
}

/// <summary>
/// An open safetensors file with a validated header, read one tensor at a time: a model loads straight into its
/// parameters, never holding a second full copy of its weights.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    readonly FileStream stream;
    readonly long dataStart;

    public string Path { get; }
    /// <summary>The tensors in data-buffer order (reading in this order runs forward through the file).</summary>
    public IReadOnlyList<SafeTensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    SafeTensorsFile(string path, FileStream stream, List<SafeTensorInfo> tensors, Dictionary<string, string> metadata, long dataStart) =>
        (Path, this.stream, Tensors, Metadata, this.dataStart) = (path, stream, tensors, metadata, dataStart);

    public static SafeTensorsFile Open(string path)
    {
        var stream = File.OpenRead(path);
        try
        {
            var (tensors, metadata, dataStart) = SafeTensors.ParseHeader(stream, path);
            return new SafeTensorsFile(path, stream, tensors, metadata, dataStart);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>A new CPU tensor of the stored dtype (F32, F16 or BF16) holding <paramref name="info"/>'s data; the caller owns it.</summary>
    public torch.Tensor Read(SafeTensorInfo info) => SafeTensors.Read(stream, dataStart, info, Path);

    /// <summary>The stored dtype of <paramref name="info"/> as a torch type, or null for one that cannot be loaded.</summary>
    public static torch.ScalarType? TypeOf(SafeTensorInfo info) =>
        info.DType switch { "F32" => torch.ScalarType.Float32, "F16" => torch.ScalarType.Float16, "BF16" => torch.ScalarType.BFloat16, _ => null };

    /// <summary>
    /// A CPU tensor over the file's own bytes of <paramref name="info"/> (no copy: the file is memory-mapped privately, so
    /// pages are read from disk when first touched, are shared with the page cache, and a write to the tensor stays in this
    /// process), or null where the data cannot be mapped (a dtype that cannot be loaded, an empty tensor, or an offset not
    /// a multiple of the element size, which the format does not promise). The caller owns it; it outlives this object.
    /// </summary>
    public torch.Tensor? Map(SafeTensorInfo info)
    {
        if (TypeOf(info) is not { } dtype || info.End == info.Begin) return null;
        int size = dtype == torch.ScalarType.Float32 ? 4 : 2;
        long offset = dataStart + info.Begin;
        if (offset % size != 0) return null;
        if (!mapped.TryGetValue(dtype, out var whole))
            // The whole file as one flat tensor of this dtype (a virtual mapping: nothing is read yet); views of it keep
            // the mapping alive after this object is disposed.
            mapped[dtype] = whole = torch.from_file(Path, shared: false, size: stream.Length / size, dtype: dtype);
        using var flat = whole.narrow(0, offset / size, (info.End - info.Begin) / size);
        return flat.view(info.Shape);
    }

    readonly Dictionary<torch.ScalarType, torch.Tensor> mapped = [];

    public void Dispose()
    {
        foreach (var t in mapped.Values) t.Dispose();
        stream.Dispose();
    }
}
