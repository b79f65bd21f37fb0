using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Inference;

/// <summary>The image classifier serves every registered method as it trained: its probabilities are the adapted model's.</summary>
public sealed class ImageClassifierMethodsTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("classifier-methods-").FullName;

    public ImageClassifierMethodsTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    public static TheoryData<string> Methods => new(AdapterMethods.Names);

    [Theory, MemberData(nameof(Methods))]
    public void ClassifyingWithAnAdapterEqualsTheAdaptedModel(string name)
    {
        using var scope = NewDisposeScope();
        var method = AdapterMethods.Find(name)!;
        var vit = new VitConfig { HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 32, ImageSize = 8, PatchSize = 4, NumChannels = 1 };
        string baseFolder = Path.Combine(dir, "base"), adapterFolder = Path.Combine(dir, name);
        using var model = (ViTForImageClassification)RandomModel.Create(vit, seed: 2);
        ModelFolder.Save(model, baseFolder);
        var image = new GrayImage(8, 8, Enumerable.Range(0, 64).Select(i => (byte)(i * 37 % 256)).ToArray());
        var config = method.FromOptions(new AdapterOptions(Rank: 2, NumExperts: 2, TopK: 2), ["query", "value", "dense"]) with { TaskType = "SEQ_CLS" };
        Tensor expected;
        using (var adapter = TrainableAdapter.Create(model, config, seed: 1))
        {
            TinyLlama.Randomize(adapter, seed: 3);
            adapter.Attach(model);
            expected = model.forward(ImageData.Pixels([image], vit)).softmax(-1)[0];
            TrainableAdapter.Detach(model);
            adapter.Save(adapterFolder);
        }
        using var classifier = new ImageClassifier();
        using var served = ServedAdapter.Load(adapterFolder, model);
        var result = classifier.Classify(baseFolder, [new ClassifyRow(image, served)])[0];
        TinyLlama.AssertClose(expected, tensor(result.Probabilities.Select(p => (float)p.Probability).ToArray()), 1e-5);
    }
}
