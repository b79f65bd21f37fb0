using System.Buffers.Binary;
using System.IO.Compression;

namespace AdapterService.Core.Data;

/// <summary>A decoded image as 8-bit grayscale, row-major.</summary>
public sealed record GrayImage(int Width, int Height, byte[] Pixels);

/// <summary>
/// Decodes the PNGs a classifier needs without native libraries: bit depth 8, grayscale, grayscale + alpha, RGB or RGBA,
/// not interlaced; colour is converted to luma (ITU-R BT.601) and alpha is dropped. Anything else is refused by name.
/// </summary>
public static class Png
{
    static ReadOnlySpan<byte> Signature => [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0d, 0x0a, 0x1a, 0x0a];
    const int MaxSide = 4096;

    public static GrayImage Decode(ReadOnlySpan<byte> png)
    {
        if (png.Length < 8 || !png[..8].SequenceEqual(Signature)) throw new InvalidDataException("not a PNG (its signature is missing)");
        int width = 0, height = 0, channels = 0;
        var compressed = new MemoryStream();
        bool sawHeader = false, sawEnd = false;
        for (int at = 8; at < png.Length && !sawEnd;)
        {
            if (png.Length - at < 12) throw new InvalidDataException("the PNG is truncated inside a chunk header");
            int length = BinaryPrimitives.ReadInt32BigEndian(png[at..]);
            var type = System.Text.Encoding.ASCII.GetString(png.Slice(at + 4, 4));
            if (length < 0 || length > png.Length - at - 12) throw new InvalidDataException($"the PNG's {type} chunk runs past the end of the file");
            var data = png.Slice(at + 8, length);
            switch (type)
            {
                case "IHDR":
                    if (length != 13) throw new InvalidDataException("the PNG's IHDR chunk is not 13 bytes");
                    width = BinaryPrimitives.ReadInt32BigEndian(data);
                    height = BinaryPrimitives.ReadInt32BigEndian(data[4..]);
                    if (width is < 1 or > MaxSide || height is < 1 or > MaxSide)
                        throw new InvalidDataException($"the PNG is {width}×{height}; sides of 1 to {MaxSide} pixels are supported");
                    if (data[8] != 8) throw new InvalidDataException($"PNG bit depth {data[8]} is not supported; only 8-bit images are");
                    channels = data[9] switch
                    {
                        0 => 1, 4 => 2, 2 => 3, 6 => 4,
                        3 => throw new InvalidDataException("palette PNGs are not supported; use grayscale or RGB"),
                        var c => throw new InvalidDataException($"PNG colour type {c} is not valid"),
                    };
                    if (data[10] != 0 || data[11] != 0) throw new InvalidDataException("the PNG's compression or filter method is not valid");
                    if (data[12] != 0) throw new InvalidDataException("interlaced PNGs are not supported");
                    sawHeader = true;
                    break;
                case "IDAT":
                    if (!sawHeader) throw new InvalidDataException("the PNG has image data before its IHDR chunk");
                    compressed.Write(data);
                    break;
                case "IEND":
                    sawEnd = true;
                    break;
            }
            at += length + 12;   // length, type, data, CRC
        }
        if (!sawHeader) throw new InvalidDataException("the PNG has no IHDR chunk");
        if (compressed.Length == 0) throw new InvalidDataException("the PNG has no image data");

        int stride = width * channels;
        var raw = new byte[(stride + 1) * height];
        compressed.Position = 0;
        using (var inflate = new ZLibStream(compressed, CompressionMode.Decompress))
        {
            try { inflate.ReadExactly(raw); }
            catch (Exception e) when (e is EndOfStreamException or InvalidDataException)
            {
                throw new InvalidDataException($"the PNG's image data is corrupt or shorter than {width}×{height} pixels");
            }
        }
        var pixels = Unfilter(raw, stride, height, channels);
        return new GrayImage(width, height, ToGray(pixels, width * height, channels));
    }

    /// <summary>Undoes the per-row filters (PNG spec §9: None, Sub, Up, Average, Paeth), bytes-per-pixel <paramref name="bpp"/>.</summary>
    static byte[] Unfilter(byte[] raw, int stride, int height, int bpp)
    {
        var result = new byte[stride * height];
        for (int y = 0; y < height; y++)
        {
            int filter = raw[y * (stride + 1)];
            var line = raw.AsSpan(y * (stride + 1) + 1, stride);
            var current = result.AsSpan(y * stride, stride);
            var previous = y > 0 ? result.AsSpan((y - 1) * stride, stride) : new byte[stride];
            for (int i = 0; i < stride; i++)
            {
                int left = i >= bpp ? current[i - bpp] : 0, up = previous[i], upLeft = i >= bpp ? previous[i - bpp] : 0;
                int predicted = filter switch
                {
                    0 => 0,
                    1 => left,
                    2 => up,
                    3 => (left + up) / 2,
                    4 => Paeth(left, up, upLeft),
                    _ => throw new InvalidDataException($"row {y} of the PNG has filter type {filter}, which is not valid"),
                };
                current[i] = (byte)(line[i] + predicted);
            }
        }
        return result;
    }

    static int Paeth(int a, int b, int c)
    {
        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }

    static byte[] ToGray(byte[] pixels, int count, int channels)
    {
        if (channels == 1) return pixels;
        var gray = new byte[count];
        for (int i = 0; i < count; i++)
            gray[i] = channels <= 2
                ? pixels[i * channels]
                : (byte)Math.Round(0.299 * pixels[i * channels] + 0.587 * pixels[i * channels + 1] + 0.114 * pixels[i * channels + 2]);
        return gray;
    }

    /// <summary>An 8-bit grayscale PNG of <paramref name="pixels"/> (rows unfiltered), e.g. to write training files from a data set.</summary>
    public static byte[] EncodeGray(int width, int height, ReadOnlySpan<byte> pixels)
    {
        if (pixels.Length != width * height) throw new ArgumentException($"{pixels.Length} pixels for a {width}×{height} image");
        var output = new MemoryStream();
        output.Write(Signature);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), height);
        header[8] = 8;
        WriteChunk(output, "IHDR", header);
        var scanlines = new MemoryStream();
        using (var deflate = new ZLibStream(scanlines, CompressionLevel.Optimal, leaveOpen: true))
            for (int y = 0; y < height; y++)
            {
                deflate.WriteByte(0);
                deflate.Write(pixels.Slice(y * width, width));
            }
        WriteChunk(output, "IDAT", scanlines.ToArray());
        WriteChunk(output, "IEND", []);
        return output.ToArray();
    }

    static void WriteChunk(Stream output, string type, byte[] data)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(word, data.Length);
        output.Write(word);
        var typeAndData = System.Text.Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        output.Write(typeAndData);
        BinaryPrimitives.WriteUInt32BigEndian(word, Crc32(typeAndData));
        output.Write(word);
    }

    static readonly uint[] CrcTable = Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        return c;
    }).ToArray();

    /// <summary>The CRC-32 PNG chunks end with (ISO 3309, as zlib computes it).</summary>
    static uint Crc32(ReadOnlySpan<byte> bytes)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in bytes) c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        return c ^ 0xFFFFFFFF;
    }
}
