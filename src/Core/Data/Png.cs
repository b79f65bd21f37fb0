using System.Buffers.Binary;
using System.IO.Compression;

namespace AdapterService.Core.Data;

/// <summary>A decoded image as 8-bit grayscale, row-major.</summary>
public sealed record GrayImage(int Width, int Height, byte[] Pixels);

/// <summary>What a PNG's IHDR chunk declares: read before any pixel is allocated.</summary>
public readonly record struct PngHeader(int Width, int Height, int Channels)
{
    /// <summary>The bytes the image decodes to as 8-bit grayscale.</summary>
    public long GrayBytes => (long)Width * Height;
}

/// <summary>
/// Decodes the PNGs a classifier needs without native libraries: bit depth 8, grayscale, grayscale + alpha, RGB or RGBA,
/// not interlaced; colour is converted to luma (ITU-R BT.601) and alpha is dropped. Anything else is refused by name.
/// A few KB of zlib can declare 4096×4096 pixels, so the size is read from the header first (<see cref="ReadHeader"/>)
/// and the image data is inflated one row at a time: decoding holds two rows besides the gray result, and
/// <see cref="Validate"/> holds only the two rows.
/// </summary>
public static class Png
{
    static ReadOnlySpan<byte> Signature => [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0d, 0x0a, 0x1a, 0x0a];
    public const int MaxSide = 4096;

    /// <summary>The signature and the IHDR chunk, which the PNG spec puts first; throws for anything this decoder refuses.</summary>
    public static PngHeader ReadHeader(ReadOnlySpan<byte> png)
    {
        if (png.Length < 8 || !png[..8].SequenceEqual(Signature)) throw new InvalidDataException("not a PNG (its signature is missing)");
        if (png.Length < 8 + 8 + 13 || !png.Slice(12, 4).SequenceEqual("IHDR"u8)) throw new InvalidDataException("the PNG has no IHDR chunk first");
        if (BinaryPrimitives.ReadInt32BigEndian(png[8..]) != 13) throw new InvalidDataException("the PNG's IHDR chunk is not 13 bytes");
        var data = png.Slice(16, 13);
        int width = BinaryPrimitives.ReadInt32BigEndian(data), height = BinaryPrimitives.ReadInt32BigEndian(data[4..]);
        if (width is < 1 or > MaxSide || height is < 1 or > MaxSide)
            throw new InvalidDataException($"the PNG is {width}×{height}; sides of 1 to {MaxSide} pixels are supported");
        if (data[8] != 8) throw new InvalidDataException($"PNG bit depth {data[8]} is not supported; only 8-bit images are");
        int channels = data[9] switch
        {
            0 => 1, 4 => 2, 2 => 3, 6 => 4,
            3 => throw new InvalidDataException("palette PNGs are not supported; use grayscale or RGB"),
            var c => throw new InvalidDataException($"PNG colour type {c} is not valid"),
        };
        if (data[10] != 0 || data[11] != 0) throw new InvalidDataException("the PNG's compression or filter method is not valid");
        if (data[12] != 0) throw new InvalidDataException("interlaced PNGs are not supported");
        return new PngHeader(width, height, channels);
    }

    public static GrayImage Decode(ReadOnlySpan<byte> png)
    {
        var header = ReadHeader(png);
        var gray = new byte[header.GrayBytes];
        Inflate(png, header, gray);
        return new GrayImage(header.Width, header.Height, gray);
    }

    /// <summary>Checks every chunk and row as <see cref="Decode"/> does, keeping no pixels (an upload's check).</summary>
    public static PngHeader Validate(ReadOnlySpan<byte> png)
    {
        var header = ReadHeader(png);
        Inflate(png, header, default);
        return header;
    }

    /// <summary>Inflates and unfilters the image data row by row, writing luma to <paramref name="gray"/> unless it is empty.</summary>
    static void Inflate(ReadOnlySpan<byte> png, PngHeader header, Span<byte> gray)
    {
        var compressed = new MemoryStream();   // the IDAT chunks joined: at most the input's size
        bool sawEnd = false;
        for (int at = 8; at < png.Length && !sawEnd;)
        {
            if (png.Length - at < 12) throw new InvalidDataException("the PNG is truncated inside a chunk header");
            int length = BinaryPrimitives.ReadInt32BigEndian(png[at..]);
            var type = System.Text.Encoding.ASCII.GetString(png.Slice(at + 4, 4));
            if (length < 0 || length > png.Length - at - 12) throw new InvalidDataException($"the PNG's {type} chunk runs past the end of the file");
            if (type == "IHDR" && at != 8) throw new InvalidDataException("the PNG has a second IHDR chunk");
            if (type == "IDAT") compressed.Write(png.Slice(at + 8, length));
            sawEnd = type == "IEND";
            at += length + 12;   // length, type, data, CRC
        }
        if (compressed.Length == 0) throw new InvalidDataException("the PNG has no image data");

        int width = header.Width, channels = header.Channels, stride = width * channels;
        byte[] previous = new byte[stride], current = new byte[stride];   // the row above starts as zeros (PNG spec §9)
        compressed.Position = 0;
        using var inflate = new ZLibStream(compressed, CompressionMode.Decompress);
        for (int y = 0; y < header.Height; y++)
        {
            int filter;
            try
            {
                filter = inflate.ReadByte();
                if (filter < 0) throw new EndOfStreamException();
                inflate.ReadExactly(current);
            }
            catch (Exception e) when (e is EndOfStreamException or InvalidDataException)
            {
                throw new InvalidDataException($"the PNG's image data is corrupt or shorter than {width}×{header.Height} pixels");
            }
            Unfilter(filter, current, previous, channels, y);
            if (!gray.IsEmpty) ToGray(current, gray.Slice(y * width, width), channels);
            (previous, current) = (current, previous);
        }
    }

    /// <summary>Undoes one row's filter in place (PNG spec §9: None, Sub, Up, Average, Paeth), bytes-per-pixel <paramref name="bpp"/>.</summary>
    static void Unfilter(int filter, Span<byte> row, ReadOnlySpan<byte> previous, int bpp, int y)
    {
        if (filter > 4) throw new InvalidDataException($"row {y} of the PNG has filter type {filter}, which is not valid");
        for (int i = 0; i < row.Length; i++)
        {
            int left = i >= bpp ? row[i - bpp] : 0, up = previous[i], upLeft = i >= bpp ? previous[i - bpp] : 0;
            int predicted = filter switch { 0 => 0, 1 => left, 2 => up, 3 => (left + up) / 2, _ => Paeth(left, up, upLeft) };
            row[i] = (byte)(row[i] + predicted);
        }
    }

    static int Paeth(int a, int b, int c)
    {
        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }

    static void ToGray(ReadOnlySpan<byte> row, Span<byte> gray, int channels)
    {
        for (int i = 0; i < gray.Length; i++)
            gray[i] = channels switch
            {
                1 => row[i],
                2 => row[i * 2],
                _ => (byte)Math.Round(0.299 * row[i * channels] + 0.587 * row[i * channels + 1] + 0.114 * row[i * channels + 2]),
            };
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
