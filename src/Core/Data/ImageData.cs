using AdapterService.Core.Data;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Data;

/// <summary>Labelled-image training files as a ViT classifier reads them.</summary>
public static class ImageData
{
    /// <summary>
    /// The label set an adapter trained on <paramref name="file"/> classifies into: null when every label is one of the
    /// base's (the base's classifier is adapted), else the file's labels in ordinal order (the adapter gets its own classifier).
    /// </summary>
    public static IReadOnlyList<string>? NewLabels(TrainingFile file, VitConfig baseConfig)
    {
        var labels = file.Examples.OfType<ImageExample>().Select(e => e.Label).Distinct().Order(StringComparer.Ordinal).ToList();
        return labels.All(baseConfig.Labels.Contains) ? null : labels;
    }

    /// <summary>The file's images and class indices into <paramref name="labels"/>; a wrong format, size or label names its line.</summary>
    public static LabelledImages Read(TrainingFile file, VitConfig config, IReadOnlyList<string> labels)
    {
        if (file.Format != TrainingFileFormat.Image)
            throw new TrainingFileException(0, FileFacts.WrongFormatForImages(config.ModelType, file.FormatName));
        var index = labels.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i);
        var pixels = new byte[file.Examples.Count * config.ImageSize * config.ImageSize];
        var classes = new byte[file.Examples.Count];
        int n = 0;
        foreach (ImageExample e in file.Examples)
        {
            CheckSize(e.Image, config, e.Line);
            if (!index.TryGetValue(e.Label, out int label))
                throw new TrainingFileException(e.Line, FileFacts.UnknownLabel(e.Label, labels));
            if (label > byte.MaxValue) throw new TrainingFileException(e.Line, FileFacts.TooManyLabels);
            e.Image.Pixels.CopyTo(pixels, n * e.Image.Pixels.Length);
            classes[n++] = (byte)label;
        }
        return new LabelledImages(pixels, classes, config.ImageSize, config.ImageSize);
    }

    public static void CheckSize(GrayImage image, VitConfig config, int line)
    {
        if (image.Width != config.ImageSize || image.Height != config.ImageSize)
            throw new TrainingFileException(line, FileFacts.WrongImageSize(image.Width, image.Height, config.ImageSize));
    }

    /// <summary>
    /// Pixel values [n, channels, size, size] for the images at <paramref name="indices"/>: bytes scaled to [-1, 1] (Hugging
    /// Face's ViTImageProcessor default, mean = std = 0.5), the gray channel repeated for models that take RGB.
    /// </summary>
    public static Tensor Pixels(LabelledImages images, IReadOnlyList<int> indices, VitConfig config)
    {
        var bytes = new byte[indices.Count * images.ImageBytes];
        for (int k = 0; k < indices.Count; k++) images.Image(indices[k]).CopyTo(bytes.AsSpan(k * images.ImageBytes));
        return Pixels(bytes, indices.Count, config);
    }

    public static Tensor Pixels(IReadOnlyList<GrayImage> images, VitConfig config)
    {
        foreach (var image in images) CheckSize(image, config, 0);
        return Pixels(images.SelectMany(m => m.Pixels).ToArray(), images.Count, config);
    }

    static Tensor Pixels(byte[] bytes, int count, VitConfig config)
    {
        var gray = tensor(bytes, [count, 1, config.ImageSize, config.ImageSize]).to_type(ScalarType.Float32) / 127.5 - 1;   // [n, 1, s, s]
        return config.NumChannels == 1 ? gray : gray.expand(-1, config.NumChannels, -1, -1).contiguous();                  // [n, c, s, s]
    }
}
