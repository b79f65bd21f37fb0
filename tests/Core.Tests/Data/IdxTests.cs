using System.IO.Compression;
using AdapterService.Core.Data;

namespace AdapterService.Core.Tests.Data;

public class IdxTests
{
    // Two 2×3 images: magic 0x00000803, dimensions 2, 2, 3 (big-endian), then 12 bytes.
    static readonly byte[] Images = [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 250, 251, 252, 253, 254, 255];

    static byte[] Gzip(byte[] bytes)
    {
        var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.Fastest, leaveOpen: true)) gzip.Write(bytes);
        return output.ToArray();
    }

    [Fact]
    public void ReadsPlainAndGzippedFiles()
    {
        foreach (var bytes in new[] { Images, Gzip(Images) })
        {
            var array = Idx.Read(new MemoryStream(bytes));
            Assert.Equal([2, 2, 3], array.Shape);
            Assert.Equal(6, array.ItemSize);
            Assert.Equal(Images[16..], array.Data);
        }
        var labels = Idx.Read(new MemoryStream(Gzip([0, 0, 8, 1, 0, 0, 0, 3, 9, 0, 5])));
        Assert.Equal([3], labels.Shape);
        Assert.Equal([9, 0, 5], labels.Data);
    }

    [Theory]
    [InlineData(new byte[] { 0, 0, 8, 1, 0, 0, 0, 3, 9, 0 }, "ends before")]
    [InlineData(new byte[] { 0, 0, 8, 1, 0, 0, 0, 1, 9, 0 }, "longer than")]
    [InlineData(new byte[] { 0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0 }, "element type 0x0d")]
    [InlineData(new byte[] { 1, 0, 8, 1, 0, 0, 0, 1, 9 }, "not an IDX file")]
    [InlineData(new byte[] { 0, 0, 8, 1, 0xff, 0xff, 0xff, 0xff }, "negative")]
    [InlineData(new byte[] { 0, 0 }, "ends before")]
    public void RefusesMalformedFiles(byte[] bytes, string message)
    {
        var e = Assert.Throws<InvalidDataException>(() => Idx.Read(new MemoryStream(bytes)));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void MissingDatasetSaysWhichPackageToInstall()
    {
        var e = Assert.Throws<DatasetMissingException>(() => FashionMnist.Load("train", Path.Combine(Path.GetTempPath(), Guid.NewGuid().ToString("N"))));
        Assert.Contains("apt-get install dataset-fashion-mnist", e.Message);
    }
}
