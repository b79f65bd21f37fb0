using System.Buffers.Binary;
using System.Text.Json;
using System.Text;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

public sealed class SafeTensorsTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("safetensors-tests-").FullName;

    public SafeTensorsTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    string PathFor(string name) => Path.Combine(dir, name);

    [Fact]
    public void RoundTripKeepsDTypeShapeAndExactBits()
    {
        using var scope = NewDisposeScope();
        var expected = new Dictionary<string, Tensor>
        {
            ["scalar_like"] = tensor(new[] { 3.25f }),
            ["f32_3d"] = randn(2, 3, 4),
            ["f32_transposed"] = randn(3, 5).t(),   // non-contiguous input must be written in row-major order
            ["f16"] = randn(4, 2).to(ScalarType.Float16),
            ["bf16"] = randn(3, 2, 2).to(ScalarType.BFloat16),
            ["empty"] = zeros(0, 3),
        };
        string path = PathFor("round.safetensors");
        SafeTensors.Save(path, expected);

        var loaded = SafeTensors.Load(path);
        scope.Attach(loaded.Values);
        Assert.Equal(expected.Keys.Order(), loaded.Keys.Order());
        foreach (var (name, want) in expected)
        {
            var got = loaded[name];
            Assert.Equal(want.dtype, got.dtype);
            Assert.Equal(want.shape, got.shape);
            Assert.Equal(want.contiguous().bytes.ToArray(), got.bytes.ToArray());
        }
    }

    [Fact]
    public void MetadataAndHeaderInfoRoundTrip()
    {
        using var scope = NewDisposeScope();
        string path = PathFor("meta.safetensors");
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["rank"] = "8", ["note"] = "ünïcode \"quoted\"" };
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["b"] = ones(2, 3), ["a"] = ones(4).to(ScalarType.BFloat16) }, metadata);

        var (tensors, readMetadata) = SafeTensors.ReadHeader(path);
        Assert.Equal(metadata.OrderBy(kv => kv.Key), readMetadata.OrderBy(kv => kv.Key));
        Assert.Equal(["a BF16 [4] 0..8", "b F32 [2,3] 8..32"],
            tensors.Select(t => $"{t.Name} {t.DType} [{string.Join(",", t.Shape)}] {t.Begin}..{t.End}"));
    }

    [Fact]
    public void SaveWritesAlignedHeaderAndLittleEndianDataThatAnIndependentReaderParses()
    {
        using var scope = NewDisposeScope();
        string path = PathFor("layout.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["w"] = tensor(new[] { 1.5f, -2f, 1e-3f }) });

        byte[] file = File.ReadAllBytes(path);
        int n = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(file));
        Assert.Equal(0, n % 8);
        using var header = JsonDocument.Parse(file.AsMemory(8, n));
        var w = header.RootElement.GetProperty("w");
        Assert.Equal("F32", w.GetProperty("dtype").GetString());
        Assert.Equal([3L], w.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()));
        Assert.Equal([0L, 12L], w.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()));
        var data = new byte[12];
        BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(0), 1.5f);
        BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(4), -2f);
        BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(8), 1e-3f);
        Assert.Equal(data, file[(8 + n)..]);
    }

    [Fact]
    public void SaveReplacesAnExistingFileAndLeavesNoTempFiles()
    {
        using var scope = NewDisposeScope();
        string path = PathFor("replace.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["old"] = ones(2) });
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["new"] = full(3, 7f) });

        Assert.Equal([path], Directory.GetFiles(dir));
        var loaded = SafeTensors.Load(path);
        scope.Attach(loaded.Values);
        Assert.Equal(["new"], loaded.Keys);
        Assert.Equal([7f, 7f, 7f], loaded["new"].data<float>().ToArray());
    }

    [Fact]
    public void AnOpenFileReadsAnyOneTensorOnItsOwn()
    {
        using var scope = NewDisposeScope();
        var expected = new Dictionary<string, Tensor> { ["a"] = randn(3, 4), ["b"] = randn(5).to(ScalarType.BFloat16), ["c"] = randn(2, 2).to(ScalarType.Float16) };
        string path = PathFor("open.safetensors");
        SafeTensors.Save(path, expected, new Dictionary<string, string> { ["format"] = "pt" });

        using var file = SafeTensorsFile.Open(path);
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal(["a", "b", "c"], file.Tensors.Select(t => t.Name));   // data order
        foreach (var info in file.Tensors.Reverse())                        // backwards: each read seeks to its own bytes
        {
            var got = file.Read(info);
            Assert.Equal(expected[info.Name].dtype, got.dtype);
            Assert.Equal(expected[info.Name].bytes.ToArray(), got.bytes.ToArray());
        }
    }

    [Fact]
    public void OpeningATruncatedFileFailsAtTheHeaderBeforeAnyDataIsRead()
    {
        using var scope = NewDisposeScope();
        string path = PathFor("short.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["w"] = ones(16) });
        using (var f = File.OpenWrite(path)) f.SetLength(f.Length - 4);
        var e = Assert.Throws<SafeTensorsException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("tensor 'w': data_offsets end 64 is beyond the 60-byte data buffer", e.Message);
    }

    [Fact]
    public void LoadedTensorsOutliveTheCallersDisposeScope()
    {
        string path = PathFor("owned.safetensors");
        using (NewDisposeScope()) SafeTensors.Save(path, new Dictionary<string, Tensor> { ["x"] = ones(2) });
        Dictionary<string, Tensor> loaded;
        using (NewDisposeScope()) loaded = SafeTensors.Load(path);

        using var scope = NewDisposeScope();
        Assert.Equal([1f, 1f], loaded["x"].data<float>().ToArray());   // would throw had the scope around Load disposed it
        loaded["x"].Dispose();
    }

    [Fact]
    public void LoadsAHandCraftedFile()
    {
        using var scope = NewDisposeScope();
        // Unpadded header, metadata first, entries out of data order: all legal.
        const string json = """{"__metadata__":{"k":"v"},"h":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]},"m":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"f":{"dtype":"F16","shape":[1],"data_offsets":[20,22]}}""";
        var data = new byte[22];
        float[] m = [1f, -0.5f, 3f, 1024f];
        for (int i = 0; i < 4; i++) BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(4 * i), m[i]);
        BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(16), 0x3FC0);   // bf16 1.5
        BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(18), 0xC100);   // bf16 -8
        BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(20), 0x3555);   // f16 0.333251953125
        string path = PathFor("crafted.safetensors");
        File.WriteAllBytes(path, Craft(json, data));

        var loaded = SafeTensors.Load(path);
        scope.Attach(loaded.Values);
        Assert.Equal(new long[] { 2, 2 }, loaded["m"].shape);
        Assert.Equal(m, loaded["m"].data<float>().ToArray());
        Assert.Equal(ScalarType.BFloat16, loaded["h"].dtype);
        Assert.Equal([1.5f, -8f], loaded["h"].to(ScalarType.Float32).data<float>().ToArray());
        Assert.Equal(ScalarType.Float16, loaded["f"].dtype);
        Assert.Equal(0.333251953125f, loaded["f"].to(ScalarType.Float32).item<float>());
    }

    static byte[] Craft(string json, byte[] data, ulong? headerLength = null) => Craft(Encoding.UTF8.GetBytes(json), data, headerLength);

    static byte[] Craft(byte[] header, byte[] data, ulong? headerLength = null)
    {
        var file = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, headerLength ?? (ulong)header.Length);
        header.CopyTo(file, 8);
        data.CopyTo(file, 8 + header.Length);
        return file;
    }

    static string Entry(string name, string dtype, string shape, string offsets) =>
        $"{{\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":{offsets}}}}}";

    public static TheoryData<string, byte[], string[]> Malformed => new()
    {
        { "truncated", [1, 0, 0, 0, 0], ["shorter than the 8-byte"] },
        { "huge header length", Craft("{}", [], headerLength: 1UL << 40), ["exceeds"] },
        { "header past file end", Craft("{}", [], headerLength: 64), ["runs past the end"] },
        { "bad json", Craft("{\"w\": {", []), ["not valid JSON"] },
        { "json not an object", Craft("[1, 2]", []), ["not an object"] },
        { "invalid utf-8", Craft([.. "{\""u8, 0xFF, .. "\":1}"u8], []), ["UTF-8"] },
        { "missing dtype", Craft("""{"w":{"shape":[1],"data_offsets":[0,4]}}""", new byte[4]), ["'w'", "dtype"] },
        { "shape not an array", Craft("""{"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}""", new byte[4]), ["'w'", "shape"] },
        { "fractional offset", Craft(Entry("w", "F32", "[1]", "[0,4.5]"), new byte[4]), ["'w'", "data_offsets[1]"] },
        { "offsets beyond buffer", Craft(Entry("w", "F32", "[2]", "[0,8]"), new byte[4]), ["'w'", "beyond"] },
        { "begin after end", Craft(Entry("w", "F32", "[0]", "[8,4]"), new byte[8]), ["'w'", "after end"] },
        { "size mismatch", Craft(Entry("w", "F32", "[3]", "[0,8]"), new byte[12]), ["'w'", "needs 12 bytes"] },
        { "size overflow", Craft(Entry("w", "F32", "[4611686018427387904,4]", "[0,4]"), new byte[4]), ["'w'", "overflows"] },
        { "unknown dtype", Craft(Entry("w", "F99", "[1]", "[0,4]"), new byte[4]), ["'w'", "unknown dtype 'F99'"] },
        { "negative dim", Craft(Entry("w", "F32", "[-1]", "[0,4]"), new byte[4]), ["'w'", "negative"] },
        { "unloadable dtype", Craft(Entry("w", "I32", "[1]", "[0,4]"), new byte[4]), ["'w'", "I32"] },
        { "metadata value not string", Craft("""{"__metadata__":{"k":1}}""", []), ["__metadata__", "'k'"] },
        {
            "overlap",
            Craft("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", new byte[12]),
            ["'b'", "overlap", "'a'"]
        },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void MalformedFilesThrowNamingTensorAndProblem(string label, byte[] file, string[] expectedInMessage)
    {
        string path = PathFor(label.Replace(' ', '-') + ".safetensors");
        File.WriteAllBytes(path, file);
        using var scope = NewDisposeScope();
        var e = Assert.Throws<SafeTensorsException>(() => SafeTensors.Load(path));
        string name = Path.GetFileName(path);
        Assert.StartsWith(name + ": ", e.Message);          // the file by its name, never its folder
        string problem = e.Message[(name.Length + 2)..];   // past the name, whose words come from the label
        foreach (string part in expectedInMessage) Assert.Contains(part, problem);
    }
}
