using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;

namespace AdapterService.Core.Tests.Data;

/// <summary>The stored facts of an image file must find the same first problem, on the same line, as reading the whole file.</summary>
public class FileFactsTests
{
    static readonly VitConfig Vit = new()
    {
        HiddenSize = 8, NumHiddenLayers = 1, NumAttentionHeads = 2, IntermediateSize = 16, ImageSize = 4, PatchSize = 2, NumChannels = 1,
        Id2Label = new() { ["0"] = "a", ["1"] = "b" },
    };

    static TrainingFile File(params (string Label, int Width, int Height)[] lines) => new(TrainingFileFormat.Image,
        lines.Select((l, i) => (TrainingExample)new ImageExample(i + 1, new GrayImage(l.Width, l.Height, new byte[l.Width * l.Height]), l.Label)).ToList());

    public static TheoryData<TrainingFile> Files => new()
    {
        File(("a", 4, 4), ("b", 4, 4)),
        File(("a", 4, 4), ("c", 4, 4), ("b", 3, 4)),
        File(("a", 4, 4), ("b", 3, 3), ("c", 4, 4)),
        File(("c", 3, 3)),                               // one line, both wrong: the size is named
        File(("a", 5, 4), ("a", 4, 4), ("a", 4, 5)),
        new TrainingFile(TrainingFileFormat.Chat, [new CompletionExample(1, "p", "c")]),
    };

    [Theory, MemberData(nameof(Files))]
    public void FactsFindWhatReadingFinds(TrainingFile file)
    {
        // Through the row, as job creation reads them.
        var row = new StoredFile { Id = "file-x", Filename = "x.jsonl", Purpose = "fine-tune", BlobPath = "x" };
        FileFacts.Of(file).WriteTo(row);
        var facts = FileFacts.From(row)!;
        Assert.Equal(file.Examples.Count, facts.ExampleCount);
        foreach (var labels in new[] { Vit.Labels, ["a", "b", "c"] })
        {
            string? expected = null;
            try { ImageData.Read(file, Vit, labels); }
            catch (TrainingFileException e) { expected = e.Message; }
            Assert.Equal(expected, facts.ImageProblem(Vit, labels)?.Message);
        }
        if (file.Format == TrainingFileFormat.Image) Assert.Equal(ImageData.NewLabels(file, Vit), facts.NewLabels(Vit));
    }

    [Fact]
    public void ARowFromBeforeFactsWereStoredIsMeasuredAgain()
    {
        var row = new StoredFile { Id = "file-x", Filename = "x.jsonl", Purpose = "fine-tune", BlobPath = "x", Format = "image", ExampleCount = 3 };
        Assert.Null(FileFacts.From(row));
        Assert.Null(FileFacts.From(new StoredFile { Id = "file-y", Filename = "y", Purpose = "fine-tune", BlobPath = "y" }));
        Assert.Equal(TrainingFileFormat.Chat, FileFacts.From(new StoredFile { Id = "f", Filename = "f", Purpose = "fine-tune", BlobPath = "f", Format = "chat" })!.Format);
    }
}
