using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp;
using static AdapterService.Core.Tests.Models.HfReference;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>ViT loaded from a folder in Hugging Face's layout, against the ViT equations written out here in float64.</summary>
public sealed class VitTests : IDisposable
{
    const int Hidden = 16, Layers = 2, Heads = 2, Intermediate = 32, Image = 8, Patch = 4, Channels = 3, Labels = 3;
    const double Eps = 1e-12, Tolerance = 1e-4;
    const int Grid = Image / Patch;

    readonly DirectoryInfo root = Directory.CreateTempSubdirectory("vit-tests-");
    readonly string folder;
    readonly Dictionary<string, Tensor> hf;

    /// <summary>config.json as transformers writes it for ViTForImageClassification.</summary>
    const string ConfigJson = """
        {
          "architectures": ["ViTForImageClassification"],
          "attention_probs_dropout_prob": 0.0,
          "encoder_stride": 4,
          "hidden_act": "gelu",
          "hidden_dropout_prob": 0.0,
          "hidden_size": 16,
          "id2label": {"0": "cat", "1": "dog", "2": "bird"},
          "image_size": 8,
          "initializer_range": 0.02,
          "intermediate_size": 32,
          "label2id": {"bird": 2, "cat": 0, "dog": 1},
          "layer_norm_eps": 1e-12,
          "model_type": "vit",
          "num_attention_heads": 2,
          "num_channels": 3,
          "num_hidden_layers": 2,
          "patch_size": 4,
          "qkv_bias": true,
          "torch_dtype": "float32",
          "transformers_version": "4.46.0"
        }
        """;

    static IEnumerable<(string, long[])> HfShapes()
    {
        yield return ("vit.embeddings.cls_token", [1, 1, Hidden]);
        yield return ("vit.embeddings.position_embeddings", [1, Grid * Grid + 1, Hidden]);
        yield return ("vit.embeddings.patch_embeddings.projection.weight", [Hidden, Channels, Patch, Patch]);
        yield return ("vit.embeddings.patch_embeddings.projection.bias", [Hidden]);
        for (int i = 0; i < Layers; i++)
        {
            string l = $"vit.encoder.layer.{i}.";
            foreach (var linear in new[] { "attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense" })
            {
                yield return (l + linear + ".weight", [Hidden, Hidden]);
                yield return (l + linear + ".bias", [Hidden]);
            }
            yield return (l + "intermediate.dense.weight", [Intermediate, Hidden]);
            yield return (l + "intermediate.dense.bias", [Intermediate]);
            yield return (l + "output.dense.weight", [Hidden, Intermediate]);
            yield return (l + "output.dense.bias", [Hidden]);
            foreach (var norm in new[] { "layernorm_before", "layernorm_after" })
            {
                yield return (l + norm + ".weight", [Hidden]);
                yield return (l + norm + ".bias", [Hidden]);
            }
        }
        yield return ("vit.layernorm.weight", [Hidden]);
        yield return ("vit.layernorm.bias", [Hidden]);
        yield return ("classifier.weight", [Labels, Hidden]);
        yield return ("classifier.bias", [Labels]);
    }

    public VitTests()
    {
        TorchRuntime.EnsureReady();
        folder = Path.Combine(root.FullName, "vit");
        hf = Random(HfShapes(), seed: 9);
        WriteFolder(folder, ConfigJson, hf);
    }

    public void Dispose()
    {
        foreach (var t in hf.Values) t.Dispose();
        root.Delete(recursive: true);
    }

    /// <summary>ViT's forward pass for one image [C, H, W]: each patch flattened and projected, CLS first, pre-norm blocks, head on CLS.</summary>
    static Tensor Reference(IReadOnlyDictionary<string, Tensor> w, Tensor image)
    {
        Tensor W(string key) => F64(w[key]);
        var projection = W("vit.embeddings.patch_embeddings.projection.weight").reshape(Hidden, -1);   // [hidden, C·p·p]
        var tokens = new List<Tensor> { W("vit.embeddings.cls_token").reshape(Hidden) };
        for (int row = 0; row < Grid; row++)
            for (int col = 0; col < Grid; col++)
            {
                var pixels = F64(image).narrow(1, row * Patch, Patch).narrow(2, col * Patch, Patch).reshape(-1);   // [C·p·p], (c, y, x) order
                tokens.Add(projection.matmul(pixels) + W("vit.embeddings.patch_embeddings.projection.bias"));
            }
        var h = stack(tokens) + W("vit.embeddings.position_embeddings")[0];                           // [1 + patches, hidden]
        Tensor Linear(string name, Tensor x) => x.matmul(W(name + ".weight").t()) + W(name + ".bias");
        for (int i = 0; i < Layers; i++)
        {
            string l = $"vit.encoder.layer.{i}.";
            var a = LayerNorm(h, W(l + "layernorm_before.weight"), W(l + "layernorm_before.bias"), Eps);
            var attended = Attention(Linear(l + "attention.attention.query", a), Linear(l + "attention.attention.key", a),
                Linear(l + "attention.attention.value", a), Heads, causal: false);
            h = h + Linear(l + "attention.output.dense", attended);
            var m = LayerNorm(h, W(l + "layernorm_after.weight"), W(l + "layernorm_after.bias"), Eps);
            h = h + Linear(l + "output.dense", GeluErf(Linear(l + "intermediate.dense", m)));
        }
        h = LayerNorm(h, W("vit.layernorm.weight"), W("vit.layernorm.bias"), Eps);
        return Linear("classifier", h[0]);                                                            // [labels]
    }

    static Tensor Images(int batch, long seed) => randn([batch, Channels, Image, Image], generator: new Generator((ulong)seed));

    [Fact]
    public void AFolderInHuggingFaceLayoutClassifiesAsTheVitEquationsSay()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<ViTForImageClassification>(folder);
        using var _ = no_grad();
        var images = Images(3, seed: 1);
        var logits = model.forward(images);                                                           // [3, labels]
        for (int b = 0; b < 3; b++) AssertClose(Reference(hf, images[b]), logits[b], Tolerance);
        Assert.Equal(["cat", "dog", "bird"], model.Config.Labels);
        Assert.Equal([.. HfShapes().Select(s => s.Item1).Order()], model.CheckpointTensors().Select(t => t.Key).Order());
    }

    [Fact]
    public void ImagesOfAnotherSizeAreRefused()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<ViTForImageClassification>(folder);
        var e = Assert.Throws<ArgumentException>(() => model.forward(zeros(1, Channels, Image + 4, Image)));
        Assert.Contains($"takes [batch, {Channels}, {Image}, {Image}]", e.Message);
    }

    [Fact]
    public void LoraOnQueryAndValueAttachesAndChangesTheLogits()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<ViTForImageClassification>(folder);
        using var _ = no_grad();
        var images = Images(2, seed: 2);
        var before = model.forward(images);
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 2, Alpha = 4, TargetModules = ["query", "value"] }, seed: 3);
        Assert.Equal(
            Enumerable.Range(0, Layers).SelectMany(i => new[] { $"vit.encoder.layer.{i}.attention.attention.query", $"vit.encoder.layer.{i}.attention.attention.value" }).Order(),
            adapter.Layers.Keys.Order());
        adapter.Attach(model);
        Randomize(adapter, 4);
        Assert.True((model.forward(images) - before).abs().max().item<float>() > 1e-3);
        Assert.Equal(model.Config.LinearPaths().Order(), model.LinearLayers().Select(l => l.Path).Order());
        Assert.Equal(model.Config.NormShapes().Order(), model.NormLayers().Select(n => (n.Path, n.Layer.Size)).Order());
    }

    [Fact]
    public void VitBase16HasItsKnownSizeAndLoraR8OnQueryValueCounts294912()
    {
        using var scope = NewDisposeScope();
        using var model = RandomModel.Create(VitConfig.Base16(), seed: 1);
        // google/vit-base-patch16-224 (ViTForImageClassification, 1000 classes) has 86,567,656 parameters.
        Assert.Equal(86_567_656, model.parameters().Sum(p => p.numel()));
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 8, Alpha = 16, TargetModules = ["query", "value"] });
        Assert.Equal(294_912, adapter.ParameterCount);
        Assert.Equal(2 * 12 + 1, model.NormLayers().Count());   // two per block and the final one
    }

    [Fact]
    public void ASavedVitFolderIsTheHuggingFaceOne()
    {
        using var scope = NewDisposeScope();
        string saved = Path.Combine(root.FullName, "saved");
        using (var model = ModelFolder.Load(folder)) ModelFolder.Save(model, saved);
        var tensors = SafeTensors.Load(Path.Combine(saved, ModelFolder.WeightsFile));
        Assert.Equal(hf.Keys.Order(), tensors.Keys.Order());
        foreach (var (key, t) in hf) Assert.Equal(Bytes(t), Bytes(tensors[key]));
        var config = (VitConfig)ModelConfig.Load(Path.Combine(saved, ModelFolder.ConfigFile));
        Assert.Equal(["cat", "dog", "bird"], config.Labels);
        Assert.Equal((Hidden, Image, Patch, Eps), (config.HiddenSize, config.ImageSize, config.PatchSize, config.LayerNormEps));
    }

    [Theory]
    [InlineData("\"patch_size\": 4,", "\"patch_size\": 3,", "patch_size (3) does not divide image_size (8)")]
    [InlineData("\"id2label\": {\"0\": \"cat\", \"1\": \"dog\", \"2\": \"bird\"},", "\"id2label\": {\"0\": \"cat\", \"1\": \"dog\", \"5\": \"bird\"},", "id2label key '5'")]
    [InlineData("\"hidden_size\": 16,", "", "hidden_size")]
    [InlineData("\"2\": \"bird\"", "\"2\": \"cat\"", "id2label names 'cat' for 2 classes")]
    [InlineData("\"ViTForImageClassification\"", "\"ViTModel\"", "architectures [ViTModel] are not supported")]
    [InlineData("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu\", \"num_labels\": 4", "num_labels (4) differs from the 3 entries of id2label")]
    [InlineData("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu\", \"layerscale_value\": 1.0", "config.json: layerscale_value 1.0 changes the math and is not implemented for model_type 'vit'")]
    [InlineData("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu\", \"use_relative_position_bias\": true", "use_relative_position_bias true changes the math")]
    public void BadConfigsAreRefusedNamingTheKey(string find, string replace, string message)
    {
        File.WriteAllText(Path.Combine(folder, ModelFolder.ConfigFile), ConfigJson.Replace(find, replace));
        var e = Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder));
        Assert.Contains(message, e.Message);
    }
}
