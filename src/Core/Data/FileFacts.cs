using System.Text.Json;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;

namespace AdapterService.Core.Data;

/// <summary>
/// What a validated training file holds, measured when it is uploaded and stored on its row, so that creating a job
/// checks the file against a base model without reading it again. An image file keeps the first line of each label and
/// of each image size: enough to name the same line, with the same message, as <c>ImageData.Read</c> would.
/// </summary>
public sealed record FileFacts(
    TrainingFileFormat Format, int ExampleCount, IReadOnlyDictionary<string, int>? Labels, IReadOnlyDictionary<string, int>? ImageSizes)
{
    public static FileFacts Of(TrainingFile file)
    {
        if (file.Format != TrainingFileFormat.Image) return new(file.Format, file.Examples.Count, null, null);
        Dictionary<string, int> labels = new(StringComparer.Ordinal), sizes = new(StringComparer.Ordinal);
        foreach (ImageExample e in file.Examples)
        {
            labels.TryAdd(e.Label, e.Line);
            sizes.TryAdd($"{e.Image.Width}x{e.Image.Height}", e.Line);
        }
        return new(file.Format, file.Examples.Count, labels, sizes);
    }

    /// <summary>The facts stored on <paramref name="row"/>; null for a row uploaded before they were (measure it then).</summary>
    public static FileFacts? From(StoredFile row)
    {
        if (TrainingFile.FormatOf(row.Format) is not { } f) return null;
        if (f != TrainingFileFormat.Image) return new(f, row.ExampleCount, null, null);
        if (row.Labels is null || row.ImageSizes is null) return null;
        return new(f, row.ExampleCount, JsonSerializer.Deserialize<Dictionary<string, int>>(row.Labels),
            JsonSerializer.Deserialize<Dictionary<string, int>>(row.ImageSizes));
    }

    public void WriteTo(StoredFile row)
    {
        row.Format = FormatName;
        row.ExampleCount = ExampleCount;
        row.Labels = Labels is null ? null : JsonSerializer.Serialize(Labels);
        row.ImageSizes = ImageSizes is null ? null : JsonSerializer.Serialize(ImageSizes);
    }

    public string FormatName => TrainingFile.FormatNameOf(Format);

    /// <summary>As <c>ImageData.NewLabels</c>: null when every label is the base's, else the file's labels in ordinal order.</summary>
    public IReadOnlyList<string>? NewLabels(VitConfig baseConfig)
    {
        var labels = (Labels?.Keys ?? []).Order(StringComparer.Ordinal).ToList();
        return labels.All(baseConfig.Labels.Contains) ? null : labels;
    }

    /// <summary>
    /// The first problem <c>ImageData.Read(file, config, labels)</c> would throw for this file, or null: the format, then
    /// the first line whose image has the wrong size or whose label is not in <paramref name="labels"/>.
    /// </summary>
    public TrainingFileException? ImageProblem(VitConfig config, IReadOnlyList<string> labels)
    {
        if (Format != TrainingFileFormat.Image) return new(0, WrongFormatForImages(config.ModelType, FormatName));
        var index = labels.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i);
        string expected = $"{config.ImageSize}x{config.ImageSize}";
        // Per line, the size is checked before the label: on a tie the size's message wins.
        var size = (ImageSizes ?? new Dictionary<string, int>()).Where(s => s.Key != expected).OrderBy(s => s.Value).FirstOrDefault();
        var label = (Labels ?? new Dictionary<string, int>())
            .Where(l => !index.TryGetValue(l.Key, out int i) || i > byte.MaxValue).OrderBy(l => l.Value).FirstOrDefault();
        if (size.Key is not null && (label.Key is null || size.Value <= label.Value))
        {
            var wh = size.Key.Split('x');
            return new(size.Value, WrongImageSize(int.Parse(wh[0]), int.Parse(wh[1]), config.ImageSize));
        }
        if (label.Key is null) return null;
        return index.ContainsKey(label.Key) ? new(label.Value, TooManyLabels) : new(label.Value, UnknownLabel(label.Key, labels));
    }

    // The messages ImageData and TrainingData throw, shared so that facts and a full read say the same.
    public static string WrongFormatForImages(string modelType, string formatName) =>
        $"{modelType} models train on labelled images ({{\"image\": base64 PNG, \"label\": ...}}), but the file is in the {formatName} format";
    public static string WrongImageSize(int width, int height, int imageSize) =>
        $"the image is {width}×{height}; this model takes {imageSize}×{imageSize} images";
    public static string UnknownLabel(string label, IReadOnlyList<string> labels) =>
        $"label \"{label}\" is not one of the model's labels ({string.Join(", ", labels)})";
    public const string TooManyLabels = "more than 256 labels are not supported";
    public const string ImagesForLanguageModel =
        "The file holds labelled images, which train image classifiers (ViT bases); this model is a language model";
}
