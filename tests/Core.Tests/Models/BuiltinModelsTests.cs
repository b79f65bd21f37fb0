using AdapterService.Core.Builtins;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Torch;

namespace AdapterService.Core.Tests.Models;

public sealed class BuiltinModelsTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("builtin-models-tests-").FullName;
    readonly FolderBlobStore blobs;

    public BuiltinModelsTests()
    {
        TorchRuntime.EnsureReady();
        blobs = new FolderBlobStore(dir);
    }

    public void Dispose() => Directory.Delete(dir, recursive: true);

    byte[] Weights(BuiltinModels.Builtin builtin, string name)
    {
        BuiltinModels.EnsureCreated(builtin, blobs, name);
        return File.ReadAllBytes(Path.Combine(blobs.Resolve(name), ModelFolder.WeightsFile));
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
        string folder = blobs.Resolve("m");
        BuiltinModels.EnsureCreated(BuiltinModels.TinyDemo, blobs, "m");
        BuiltinModels.EnsureCreated(BuiltinModels.TinyDemo, blobs, "m");   // already there: a no-op

        Assert.True(File.Exists(Path.Combine(folder, "tokenizer_config.json")));
        Assert.Empty(Directory.GetDirectories(blobs.Resolve("tmp")));   // no temp folders left
        using var model = ModelFolder.Load<LlamaForCausalLM>(folder);
        Assert.Equal(BuiltinModels.TinyDemo.Config.HiddenSize, model.Config.HiddenSize);
        Assert.Equal(BuiltinModels.TinyDemo.Config.NumHiddenLayers, model.model.layers.Count);
    }
}
