using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using AdapterService.Core.Data;

namespace AdapterService.Core.Tests.Data;

public class PngTests
{
    /// <summary>A PNG written independently of the decoder: each row filtered with the given filter type (0-4), CRCs left zero.</summary>
    static byte[] Encode(int width, int height, int colorType, byte[] pixels, int[] filters, bool interlaced = false)
    {
        int bpp = colorType switch { 0 => 1, 4 => 2, 2 => 3, 6 => 4, _ => 1 };
        int stride = width * bpp;
        var raw = new MemoryStream();
        for (int y = 0; y < height; y++)
        {
            int f = filters[y % filters.Length];
            raw.WriteByte((byte)f);
            for (int i = 0; i < stride; i++)
            {
                int x = pixels[y * stride + i];
                int a = i >= bpp ? pixels[y * stride + i - bpp] : 0, b = y > 0 ? pixels[(y - 1) * stride + i] : 0;
                int c = i >= bpp && y > 0 ? pixels[(y - 1) * stride + i - bpp] : 0;
                int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
                int predicted = f switch { 0 => 0, 1 => a, 2 => b, 3 => (a + b) / 2, _ => pa <= pb && pa <= pc ? a : pb <= pc ? b : c };
                raw.WriteByte((byte)(x - predicted));
            }
        }
        var deflated = new MemoryStream();
        using (var z = new ZLibStream(deflated, CompressionLevel.Fastest, leaveOpen: true)) z.Write(raw.ToArray());
        var png = new MemoryStream();
        png.Write([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), height);
        (header[8], header[9], header[12]) = (8, (byte)colorType, (byte)(interlaced ? 1 : 0));
        void Chunk(string type, byte[] data)
        {
            var length = new byte[4];
            BinaryPrimitives.WriteInt32BigEndian(length, data.Length);
            png.Write(length);
            png.Write(Encoding.ASCII.GetBytes(type));
            png.Write(data);
            png.Write(new byte[4]);
        }
        Chunk("IHDR", header);
        Chunk("tEXt", Encoding.ASCII.GetBytes("Comment\0ignored"));
        var idat = deflated.ToArray();
        Chunk("IDAT", idat[..(idat.Length / 2)]);   // image data split over two chunks
        Chunk("IDAT", idat[(idat.Length / 2)..]);
        Chunk("IEND", []);
        return png.ToArray();
    }

    static byte[] Noise(int n, int seed) { var b = new byte[n]; new Random(seed).NextBytes(b); return b; }

    [Fact]
    public void DecodesGrayscaleWithEveryFilter()
    {
        var pixels = Noise(7 * 5, 1);
        var image = Png.Decode(Encode(7, 5, 0, pixels, [0, 1, 2, 3, 4]));
        Assert.Equal((7, 5), (image.Width, image.Height));
        Assert.Equal(pixels, image.Pixels);
    }

    [Theory]
    [InlineData(2, 3)]
    [InlineData(6, 4)]
    [InlineData(4, 2)]
    public void DecodesColourAndAlphaToLuma(int colorType, int bpp)
    {
        var pixels = Noise(6 * 4 * bpp, colorType);
        var image = Png.Decode(Encode(6, 4, colorType, pixels, [4, 3, 2, 1]));
        var expected = Enumerable.Range(0, 24).Select(i => bpp >= 3
            ? (byte)Math.Round(0.299 * pixels[i * bpp] + 0.587 * pixels[i * bpp + 1] + 0.114 * pixels[i * bpp + 2])
            : pixels[i * bpp]).ToArray();
        Assert.Equal(expected, image.Pixels);
    }

    [Fact]
    public void EncoderRoundTrips()
    {
        var pixels = Noise(28 * 28, 3);
        Assert.Equal(pixels, Png.Decode(Png.EncodeGray(28, 28, pixels)).Pixels);
    }

    [Fact]
    public void RefusesWhatItDoesNotDecode()
    {
        Assert.Contains("interlaced", Assert.Throws<InvalidDataException>(() => Png.Decode(Encode(2, 2, 0, new byte[4], [0], interlaced: true))).Message);
        Assert.Contains("palette", Assert.Throws<InvalidDataException>(() => Png.Decode(Encode(2, 2, 3, new byte[4], [0]))).Message);
        Assert.Contains("signature", Assert.Throws<InvalidDataException>(() => Png.Decode("GIF89a.."u8)).Message);
        var truncated = Encode(4, 4, 0, Noise(16, 4), [0]);
        Assert.Throws<InvalidDataException>(() => Png.Decode(truncated.AsSpan(0, truncated.Length - 30)));
        var badFilter = Encode(2, 2, 0, new byte[4], [7]);
        Assert.Contains("filter type 7", Assert.Throws<InvalidDataException>(() => Png.Decode(badFilter)).Message);
    }

    [Fact]
    public void ImageTrainingFilesParseAndNameTheLineOfABadImage()
    {
        var png = Convert.ToBase64String(Png.EncodeGray(28, 28, Noise(784, 5)));
        var raw = Convert.ToBase64String(Noise(784, 6));
        var file = TrainingFile.Parse(new MemoryStream(Encoding.UTF8.GetBytes(
            $"{{\"image\": \"{png}\", \"label\": \"Sandal\"}}\n\n{{\"pixels\": \"{raw}\", \"label\": \"Bag\"}}\n")));
        Assert.Equal(TrainingFileFormat.Image, file.Format);
        Assert.Equal("image", file.FormatName);
        var second = Assert.IsType<ImageExample>(file.Examples[1]);
        Assert.Equal((3, "Bag", 28), (second.Line, second.Label, second.Image.Width));
        Assert.Equal(Convert.FromBase64String(raw), second.Image.Pixels);

        foreach (var (line, message) in new[]
                 {
                     ("{\"image\": \"not base64!\", \"label\": \"x\"}", "Line 2: image is not valid base64"),
                     ($"{{\"image\": \"{raw}\", \"label\": \"x\"}}", "Line 2: image is not a supported PNG"),
                     ($"{{\"image\": \"{png}\"}}", "Line 2: label is missing"),
                     ($"{{\"pixels\": \"{Convert.ToBase64String(new byte[10])}\", \"label\": \"x\"}}", "Line 2: pixels holds 10 bytes"),
                     ("{\"prompt\": \"a\", \"completion\": \"b\"}", "Line 2: mixes formats"),
                 })
        {
            var e = Assert.Throws<TrainingFileException>(() => TrainingFile.Parse(new MemoryStream(Encoding.UTF8.GetBytes(
                $"{{\"image\": \"{png}\", \"label\": \"Sandal\"}}\n{line}\n"))));
            Assert.StartsWith(message, e.Message);
        }
    }

    /// <summary>A decompression bomb: <paramref name="width"/>×<paramref name="height"/> zero pixels, written row by row so the test never holds them.</summary>
    public static byte[] Bomb(int width, int height, int colorType = 0)
    {
        int bpp = colorType switch { 4 => 2, 2 => 3, 6 => 4, _ => 1 };
        var deflated = new MemoryStream();
        var row = new byte[width * bpp + 1];
        using (var z = new ZLibStream(deflated, CompressionLevel.Optimal, leaveOpen: true))
            for (int y = 0; y < height; y++) z.Write(row);
        var png = new MemoryStream();
        png.Write([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), height);
        (header[8], header[9]) = (8, (byte)colorType);
        foreach (var (type, data) in new[] { ("IHDR", header), ("IDAT", deflated.ToArray()), ("IEND", Array.Empty<byte>()) })
        {
            var length = new byte[4];
            BinaryPrimitives.WriteInt32BigEndian(length, data.Length);
            png.Write(length);
            png.Write(Encoding.ASCII.GetBytes(type));
            png.Write(data);
            png.Write(new byte[4]);
        }
        return png.ToArray();
    }

    /// <summary>
    /// 64 MiB of RGBA in about 65 KB: its size is known from the header without allocating, checking it holds two rows,
    /// and decoding it allocates its grayscale result (16 MiB) and little more, never the RGBA rows of the whole image.
    /// </summary>
    [Fact]
    public void ABombsSizeIsReadFromItsHeaderAndItsRowsAreInflatedOneAtATime()
    {
        var bomb = Bomb(4096, 4096, colorType: 6);
        Assert.InRange(bomb.Length, 1, 100_000);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var header = Png.ReadHeader(bomb);
        Assert.InRange(GC.GetAllocatedBytesForCurrentThread() - before, 0, 1024);
        Assert.Equal(new PngHeader(4096, 4096, 4), header);

        before = GC.GetAllocatedBytesForCurrentThread();
        Assert.Equal(header, Png.Validate(bomb));
        Assert.InRange(GC.GetAllocatedBytesForCurrentThread() - before, 0, 1L << 20);

        before = GC.GetAllocatedBytesForCurrentThread();
        var image = Png.Decode(bomb);
        Assert.InRange(GC.GetAllocatedBytesForCurrentThread() - before, 4096L * 4096, 4096L * 4096 + (1L << 20));
        Assert.Equal(4096 * 4096, image.Pixels.Length);
        Assert.All(image.Pixels.Take(1000), p => Assert.Equal(0, p));

        Assert.Contains("4097×1", Assert.Throws<InvalidDataException>(() => Png.ReadHeader(Bomb(4097, 1))).Message);
    }

    /// <summary>
    /// An upload's check keeps no pixels and holds the file's images to a budget of decoded bytes, read from each header
    /// before inflating; a worker that knows its model's size decodes only images of that size.
    /// </summary>
    [Fact]
    public void ImageFilesAreCheckedWithinADecodeBudgetAndKeepOnlyThePixelsTheModelTakes()
    {
        string Line(byte[] png) => $"{{\"image\": \"{Convert.ToBase64String(png)}\", \"label\": \"x\"}}";
        var bomb = Line(Bomb(1024, 1024));                                  // 1 MiB decoded
        var small = Line(Png.EncodeGray(28, 28, Noise(784, 3)));
        var text = Encoding.UTF8.GetBytes(string.Join("\n", small, bomb, bomb, bomb, bomb));
        var checkOnly = new TrainingFileOptions(KeepPixels: false, MaxDecodedBytes: 3L << 20);
        var e = Assert.Throws<TrainingFileException>(() => TrainingFile.Parse(new MemoryStream(text), checkOnly));
        Assert.Equal(4, e.Line);   // 784 + 1 MiB + 1 MiB + the third MiB is over 3 MiB
        Assert.Contains("Files:MaxDecodedImageBytes", e.Message);

        long before = GC.GetAllocatedBytesForCurrentThread();
        var facts = TrainingFile.Parse(new MemoryStream(text), checkOnly with { MaxDecodedBytes = 5L << 20 });
        Assert.InRange(GC.GetAllocatedBytesForCurrentThread() - before, 0, 2L << 20);   // 4 MiB of pixels checked, none kept
        Assert.All(facts.Examples.Cast<ImageExample>(), x => Assert.Empty(x.Image.Pixels));
        Assert.Equal([28, 1024, 1024, 1024, 1024], facts.Examples.Cast<ImageExample>().Select(x => x.Image.Width));

        var worker = TrainingFile.Parse(new MemoryStream(text), new TrainingFileOptions(ImageSide: 28));
        Assert.Equal(784, ((ImageExample)worker.Examples[0]).Image.Pixels.Length);
        Assert.All(worker.Examples.Skip(1).Cast<ImageExample>(), x => Assert.Equal((1024, 0), (x.Image.Width, x.Image.Pixels.Length)));

        var broken = Bomb(64, 64);
        broken[41] = 0;   // the zlib header of the image data (after the signature, IHDR, and IDAT's length and type): the upload's check inflates
        Assert.Throws<TrainingFileException>(() => TrainingFile.Parse(new MemoryStream(Encoding.UTF8.GetBytes(Line(broken))), checkOnly));
    }
}
