using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Adapters;

/// <summary>Saving and loading the PEFT folder format.</summary>
public sealed class LoraAdapterTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("lora-adapter-tests-").FullName;

    public LoraAdapterTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    static readonly LoraConfig Lora = new() { Rank = 4, Alpha = 12, TargetModules = ["q_proj", "v_proj", "down_proj"], BaseModel = "tiny" };

    [Fact]
    public void SaveThenLoadGivesIdenticalWeightsAndScaling()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var adapter = LoraAdapter.Create(model, Lora);
        Randomize(adapter, seed: 41);
        adapter.Save(dir);

        using var served = ServedAdapter.Load(dir, model);
        var (config, weights) = ((LoraConfig)served.Config, served.Lora);

        Assert.Equal(Lora.Rank, config.Rank);
        Assert.Equal(Lora.Alpha, config.Alpha);
        Assert.Equal(Lora.TargetModules, config.TargetModules);
        Assert.Equal("tiny", config.BaseModel);
        Assert.Equal(adapter.LoraLayers.Keys.Order(), weights.Keys.Order());
        Assert.Equal(3 * Config.NumHiddenLayers, weights.Count);
        foreach (var (path, layer) in adapter.LoraLayers)
        {
            Assert.Equal(Bytes(layer.lora_A.weight!), Bytes(weights[path].A));
            Assert.Equal(Bytes(layer.lora_B.weight!), Bytes(weights[path].B));
            Assert.Equal(3.0, weights[path].Scaling);
        }
    }

    [Fact]
    public void FilesUsePeftNames()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var adapter = LoraAdapter.Create(model, Lora with { UseRsLora = true, Dropout = 0.05 });
        adapter.Save(dir);

        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")));
        var root = json.RootElement;
        Assert.Equal("LORA", root.GetProperty("peft_type").GetString());
        Assert.Equal("CAUSAL_LM", root.GetProperty("task_type").GetString());
        Assert.Equal(4, root.GetProperty("r").GetInt32());
        Assert.Equal(12, root.GetProperty("lora_alpha").GetDouble());
        Assert.Equal(0.05, root.GetProperty("lora_dropout").GetDouble());
        Assert.True(root.GetProperty("use_rslora").GetBoolean());
        Assert.Equal(["q_proj", "v_proj", "down_proj"], root.GetProperty("target_modules").EnumerateArray().Select(e => e.GetString()));

        var (tensors, metadata) = SafeTensors.ReadHeader(Path.Combine(dir, "adapter_model.safetensors"));
        Assert.Equal("pt", metadata["format"]);
        var names = tensors.Select(t => t.Name).ToHashSet();
        Assert.Equal(12, names.Count);
        Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", names);
        Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", names);
        Assert.Contains("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight", names);
        var a = tensors.Single(t => t.Name == "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
        Assert.Equal([4L, Config.IntermediateSize], a.Shape);
    }

    [Fact]
    public void TargetModulesMayBeARegexString()
    {
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"),
            """{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ".*\\.(q|v)_proj", "use_rslora": true}""");
        var config = (LoraConfig)AdapterConfig.Load(dir);
        Assert.Equal([@".*\.(q|v)_proj"], config.TargetModules);
        Assert.Equal(4 / Math.Sqrt(2), config.Scaling);
    }

    [Fact]
    public void LoadingIntoAModelWhoseShapesDoNotFitThrows()
    {
        using var scope = NewDisposeScope();
        using (var model = Create())
        using (var adapter = LoraAdapter.Create(model, Lora))
            adapter.Save(dir);

        using var wider = Create(config: Config with { HiddenSize = 48 });
        var e = Assert.Throws<InvalidDataException>(() => ServedAdapter.Load(dir, wider));
        Assert.Contains("do not fit", e.Message);

        using var shallower = Create(config: Config with { NumHiddenLayers = 1 });
        e = Assert.Throws<InvalidDataException>(() => ServedAdapter.Load(dir, shallower));
        Assert.Contains("model.layers.1.", e.Message);
    }

    [Fact]
    public void LoadingRejectsMismatchedPairs()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        new LoraConfig().Save(dir);
        const string key = "base_model.model.model.layers.0.self_attn.q_proj";
        string file = Path.Combine(dir, "adapter_model.safetensors");

        SafeTensors.Save(file, new Dictionary<string, Tensor> { [$"{key}.lora_A.weight"] = zeros(4, 32), [$"{key}.lora_B.weight"] = zeros(32, 3) });
        Assert.Throws<InvalidDataException>(() => ServedAdapter.Load(dir, model));   // ranks of A and B differ

        SafeTensors.Save(file, new Dictionary<string, Tensor> { [$"{key}.lora_A.weight"] = zeros(4, 32) });
        Assert.Throws<InvalidDataException>(() => ServedAdapter.Load(dir, model));   // B missing
    }
}
