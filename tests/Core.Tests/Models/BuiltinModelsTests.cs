using AdapterService.Core.Builtins;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;

namespace AdapterService.Core.Tests.Models;

public sealed class BuiltinModelsTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("builtin-models-tests-").FullName;

    public BuiltinModelsTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    byte[] Weights(BuiltinModels.Builtin builtin, string name)
    {
        string folder = Path.Combine(dir, name);
        BuiltinModels.EnsureCreated(builtin, folder);
        return File.ReadAllBytes(Path.Combine(folder, ModelFolder.WeightsFile));
    }

    [Fact]
    public void TheSameSeedGivesTheSameBytes()
    {
        byte[] first = Weights(BuiltinModels.TinyDemo, "a"), second = Weights(BuiltinModels.TinyDemo, "b");
        Assert.Equal(first, second);
        Assert.NotEqual(first, Weights(BuiltinModels.TinyDemo with { Seed = BuiltinModels.TinyDemo.Seed + 1 }, "c"));
    }

    [Fact]
    public void TheFolderLoadsAsTheConfiguredModel()
    {
        string folder = Path.Combine(dir, "m");
        BuiltinModels.EnsureCreated(BuiltinModels.TinyDemo, folder);
        BuiltinModels.EnsureCreated(BuiltinModels.TinyDemo, folder);   // already there: a no-op

        Assert.True(File.Exists(Path.Combine(folder, "tokenizer_config.json")));
        Assert.Equal([Path.GetFileName(folder)], Directory.GetDirectories(dir).Select(Path.GetFileName));   // no temp folders left
        using var model = ModelFolder.Load<LlamaForCausalLM>(folder);
        Assert.Equal(BuiltinModels.TinyDemo.Config.HiddenSize, model.Config.HiddenSize);
        Assert.Equal(BuiltinModels.TinyDemo.Config.NumHiddenLayers, model.model.layers.Count);
    }
}
