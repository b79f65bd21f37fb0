using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

public sealed class ModelFolderTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("model-folder-tests-").FullName;

    public ModelFolderTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    [Fact]
    public void SaveThenLoadGivesIdenticalParametersAndAFrozenEvalModel()
    {
        using var scope = NewDisposeScope();
        using var model = Create(seed: 51);
        ModelFolder.Save(model, dir);

        using var loaded = ModelFolder.Load<LlamaForCausalLM>(dir);

        Assert.Equal(Config.HiddenSize, loaded.Config.HiddenSize);
        Assert.Equal(Config.KeyValueHeads, loaded.Config.KeyValueHeads);
        Assert.Equal(Config.RopeTheta, loaded.Config.RopeTheta);
        var expected = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var actual = loaded.named_parameters().ToList();
        Assert.Equal(expected.Keys, actual.Select(p => p.name));
        foreach (var (name, p) in actual)
        {
            Assert.Equal(Bytes(expected[name]), Bytes(p));
            Assert.False(p.requires_grad, name);
        }
        Assert.False(loaded.training);
        using var _ = no_grad();
        var ids = Ids(1, 5, seed: 52);
        Assert.Equal(Bytes(model.forward(ids)), Bytes(loaded.forward(ids)));
    }

    [Fact]
    public void LoadRejectsWeightsThatDoNotFitTheConfig()
    {
        using var scope = NewDisposeScope();
        using (var model = Create()) ModelFolder.Save(model, dir);
        (Config with { IntermediateSize = 80 }).Save(Path.Combine(dir, ModelFolder.ConfigFile));

        var e = Assert.Throws<InvalidDataException>(() => ModelFolder.Load(dir));
        Assert.Matches(@"tensor model\.layers\.\d\.mlp\.(gate|up|down)_proj\.weight has shape", e.Message);
    }
}
