namespace AdapterService.Core.Data;

/// <summary>28×28 grayscale images (row-major bytes, 0 = background) with class indices.</summary>
public sealed record LabelledImages(byte[] Pixels, byte[] Labels, int Height, int Width)
{
    public int Count => Labels.Length;
    public int ImageBytes => Height * Width;
    public ReadOnlySpan<byte> Image(int i) => Pixels.AsSpan(i * ImageBytes, ImageBytes);

    /// <summary>The images whose class is in <paramref name="classes"/>, the first <paramref name="limit"/> of them.</summary>
    public LabelledImages Where(IReadOnlyCollection<int> classes, int limit = int.MaxValue)
    {
        var keep = Enumerable.Range(0, Count).Where(i => classes.Contains(Labels[i])).Take(limit).ToArray();
        var pixels = new byte[keep.Length * ImageBytes];
        for (int k = 0; k < keep.Length; k++) Image(keep[k]).CopyTo(pixels.AsSpan(k * ImageBytes));
        return new LabelledImages(pixels, keep.Select(i => Labels[i]).ToArray(), Height, Width);
    }
}

/// <summary>The problem that Fashion-MNIST's files are not where Debian's package puts them.</summary>
public sealed class DatasetMissingException(string message) : Exception(message);

/// <summary>
/// Zalando's Fashion-MNIST as Debian's <c>dataset-fashion-mnist</c> package installs it: 60,000 training and 10,000 test
/// images of ten clothing classes, in gzip'd IDX files.
/// </summary>
public static class FashionMnist
{
    public const string DefaultFolder = "/usr/share/datasets/fashion-mnist";

    public static readonly IReadOnlyList<string> ClassNames =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>Throws <see cref="DatasetMissingException"/>, saying which package to install, unless all four files are in <paramref name="folder"/>.</summary>
    public static void EnsureInstalled(string folder)
    {
        foreach (var split in new[] { "train", "t10k" })
        foreach (var kind in new[] { "images-idx3", "labels-idx1" })
            if (Path.Combine(folder, $"{split}-{kind}-ubyte.gz") is var path && !File.Exists(path))
                throw new DatasetMissingException(
                    $"Fashion-MNIST is not installed: {path} does not exist. Install Debian's package with 'apt-get install dataset-fashion-mnist'.");
    }

    /// <summary>The "train" (60,000) or "t10k" (10,000) split from <paramref name="folder"/>.</summary>
    public static LabelledImages Load(string split, string? folder = null)
    {
        folder ??= DefaultFolder;
        EnsureInstalled(folder);
        string images = Path.Combine(folder, $"{split}-images-idx3-ubyte.gz"), labels = Path.Combine(folder, $"{split}-labels-idx1-ubyte.gz");
        var x = Idx.Read(images);
        var y = Idx.Read(labels);
        if (x.Shape.Length != 3 || y.Shape.Length != 1 || x.Count != y.Count)
            throw new InvalidDataException($"{images} and {labels} do not hold matching images [n, rows, cols] and labels [n]");
        if (y.Data.Any(l => l >= ClassNames.Count)) throw new InvalidDataException($"{labels} has a class index above {ClassNames.Count - 1}");
        return new LabelledImages(x.Data, y.Data, x.Shape[1], x.Shape[2]);
    }
}
