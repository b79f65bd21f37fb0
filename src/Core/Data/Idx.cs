using System.Buffers.Binary;
using System.IO.Compression;

namespace AdapterService.Core.Data;

/// <summary>An array read from an IDX file (the MNIST format): its dimensions and its unsigned bytes, row-major.</summary>
public sealed record IdxArray(int[] Shape, byte[] Data)
{
    public int Count => Shape[0];
    /// <summary>Bytes per item (28·28 for an image file, 1 for a label file).</summary>
    public int ItemSize => Shape.Skip(1).Aggregate(1, (a, b) => a * b);
}

/// <summary>Reads IDX files of unsigned bytes (type 0x08), plain or gzip'd as Debian ships them.</summary>
public static class Idx
{
    public static IdxArray Read(string path)
    {
        using var file = File.OpenRead(path);
        try { return Read(file); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{path}: {e.Message}", e); }
    }

    public static IdxArray Read(Stream stream)
    {
        var buffered = new BufferedStream(stream);
        Span<byte> magic = stackalloc byte[2];
        int peeked = buffered.Read(magic);
        buffered.Seek(-peeked, SeekOrigin.Current);
        using var source = peeked == 2 && magic[0] == 0x1f && magic[1] == 0x8b
            ? new GZipStream(buffered, CompressionMode.Decompress, leaveOpen: true) : (Stream)buffered;

        Span<byte> header = stackalloc byte[4];
        ReadExactly(source, header, "the 4-byte header");
        if (header[0] != 0 || header[1] != 0) throw new InvalidDataException("not an IDX file (its first two bytes are not zero)");
        if (header[2] != 0x08) throw new InvalidDataException($"IDX element type 0x{header[2]:x2} is not supported; only unsigned bytes (0x08) are");
        int dims = header[3];
        if (dims is < 1 or > 4) throw new InvalidDataException($"IDX files with {dims} dimensions are not supported (1-4)");
        var shape = new int[dims];
        Span<byte> size = stackalloc byte[4];
        long total = 1;
        for (int i = 0; i < dims; i++)
        {
            ReadExactly(source, size, $"dimension {i}");
            shape[i] = BinaryPrimitives.ReadInt32BigEndian(size);
            if (shape[i] < 0) throw new InvalidDataException($"dimension {i} is negative ({shape[i]})");
            total *= shape[i];
        }
        if (total > Array.MaxLength) throw new InvalidDataException($"the array holds {total} bytes, more than fit in memory");
        var data = new byte[total];
        ReadExactly(source, data, $"the {total} data bytes its dimensions [{string.Join(", ", shape)}] promise");
        if (source.ReadByte() != -1) throw new InvalidDataException("the file is longer than its dimensions say");
        return new IdxArray(shape, data);
    }

    static void ReadExactly(Stream stream, Span<byte> buffer, string what)
    {
        try { stream.ReadExactly(buffer); }
        catch (EndOfStreamException) { throw new InvalidDataException($"the file ends before {what}"); }
    }
}
