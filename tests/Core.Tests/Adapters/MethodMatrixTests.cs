using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Tests.Models;
using AdapterService.Core.Torch;
using TorchSharp;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Adapters;

/// <summary>The checks every adapter method must pass, run over all of them.</summary>
public sealed class MethodMatrixTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("method-matrix-").FullName;

    public MethodMatrixTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    static readonly string[] Targets = ["q_proj", "v_proj", "down_proj"];

    internal static readonly string[] MethodNames = ["lora", "dora", "lily", "lily-monoscale", "rlrr", "rlrr-r2", "mixlora"];

    public static TheoryData<string> Methods => new(MethodNames);

    static AdapterConfig ConfigOf(string method) => method switch
    {
        "lora" => new LoraConfig { Rank = 3, Alpha = 6, TargetModules = Targets },
        "dora" => new LoraConfig { Rank = 3, Alpha = 6, TargetModules = Targets, UseDora = true },
        "lily" => new LilyConfig { Rank = 4, NumExperts = 3, Scaling = 0.5, TargetModules = Targets },
        "lily-monoscale" => new LilyConfig { Rank = 4, NumExperts = 3, Monoscale = true, TargetModules = Targets },
        "rlrr" => new RlrrConfig { TargetModules = Targets },
        "rlrr-r2" => new RlrrConfig { Rank = 2, TargetModules = Targets },
        "mixlora" => new MixLoraConfig { Rank = 2, Alpha = 4, NumExperts = 3, TopK = 2, TargetModules = ["q_proj"] },
        _ => throw new ArgumentException(method),
    };

    /// <summary>The count from each method's formula (docs/METHODS.md) for the tiny model's q (32→32), v (32→16), down (64→32) per layer.</summary>
    static long ExpectedParameters(AdapterConfig config)
    {
        (long In, long Out)[] layer = [(32, 32), (32, 16), (64, 32)];
        long layers = Config.NumHiddenLayers;
        return config switch
        {
            LoraConfig { UseDora: false } l => layers * layer.Sum(s => l.Rank * (s.In + s.Out)),
            LoraConfig l => layers * layer.Sum(s => l.Rank * (s.In + s.Out) + s.Out),
            LilyConfig l => layers * layer.Sum(s => l.Rank * s.In)
                            + layer.Sum(s => l.NumExperts * l.Rank * s.Out + (l.Monoscale ? 0 : l.NumExperts * l.Rank)),
            // plus the norms' scale and shift: two per layer and the final one, of the hidden size
            RlrrConfig r => layers * layer.Sum(s => r.Rank * (s.In + s.Out) + s.Out) + (2 * layers + 1) * 2 * 32,
            // per block: router N·hidden, N experts × LoRA on gate (32→64), up (32→64), down (64→32); plus LoRA on q
            MixLoraConfig m => layers * (m.NumExperts * 32 + m.NumExperts * m.Rank * (96 + 96 + 96) + m.Rank * (32 + 32)),
            _ => throw new ArgumentException(config.Method),
        };
    }

    [Theory, MemberData(nameof(Methods))]
    public void ParameterCountEqualsTheFormula(string method)
    {
        using var model = Create();
        using var adapter = TrainableAdapter.Create(model, ConfigOf(method), seed: 1);
        Assert.Equal(ExpectedParameters(ConfigOf(method)), adapter.ParameterCount);
    }

    [Theory, MemberData(nameof(Methods))]
    public void AtInitTheModelEqualsTheBase(string method)
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        var ids = Ids(2, 7, seed: 3);
        var before = model.forward(ids);
        using var adapter = TrainableAdapter.Create(model, ConfigOf(method), seed: 1);
        adapter.Attach(model);
        AssertClose(before, model.forward(ids), 1e-6);
    }

    [Theory, MemberData(nameof(Methods))]
    public void AStepChangesEveryAdapterParameterAndNoBaseParameter(string method)
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var adapter = TrainableAdapter.Create(model, ConfigOf(method), seed: 1);
        Randomize(adapter, seed: 5);   // from a random point every parameter has a gradient (at init some are zero by design)
        adapter.Attach(model);
        var baseBefore = model.parameters().Select(p => p.clone()).ToList();
        var adapterBefore = adapter.Parameters().Select(p => p.clone()).ToList();
        foreach (var p in adapter.Parameters()) p.requires_grad = true;
        using var optimizer = optim.SGD(adapter.Parameters(), 0.1);
        var logits = model.forward(Ids(2, 6, seed: 4));
        nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]), Ids(2, 6, seed: 9).view(-1)).backward();
        optimizer.step();
        Assert.All(model.parameters().Zip(baseBefore), p => Assert.Equal(Bytes(p.Second), Bytes(p.First)));
        Assert.All(adapter.Parameters().Zip(adapterBefore), p => Assert.NotEqual(Bytes(p.Second), Bytes(p.First)));
    }

    [Theory, MemberData(nameof(Methods))]
    public void SaveThenLoadGivesTheSameModel(string method)
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        var ids = Ids(2, 7, seed: 3);
        Tensor expected;
        using (var adapter = TrainableAdapter.Create(model, ConfigOf(method), seed: 1))
        {
            Randomize(adapter, seed: 5);
            adapter.Attach(model);
            expected = model.forward(ids);
            adapter.Save(dir);
        }
        var config = AdapterConfig.Load(dir);
        var expectedConfig = ConfigOf(method) is LilyConfig lily ? lily with { NumA = Config.NumHiddenLayers } : ConfigOf(method);
        Assert.Equal(expectedConfig.ToJson(), config.ToJson());
        using var loaded = TrainableAdapter.Create(model, config, seed: 2);
        loaded.LoadWeights(dir);
        loaded.Attach(model);
        Assert.Equal(Bytes(expected), Bytes(model.forward(ids)));
    }

    /// <summary>The tiny Llama, and the families on its decoder scaled down from their real configs (tests/Core.Tests/Models/DecoderFamiliesTests.cs).</summary>
    public static TheoryData<string> Models => new("tiny", "llama", "qwen2", "qwen3", "mistral", "phi3", "smollm3", "gemma2", "gemma3_text", "qwen3_moe");

    /// <summary>The methods a model takes: all, but MixLoRA on a mixture-of-experts base (refused: <see cref="MixLoraIsRefusedOnAMixtureOfExpertsBase"/>).</summary>
    static string[] MethodsOf(LlamaForCausalLM model) => model is Qwen3MoeForCausalLM ? [.. MethodNames.Where(m => m != "mixlora")] : MethodNames;

    static LlamaForCausalLM ModelOf(string name) => name == "tiny" ? Create() : DecoderFamiliesTests.CreateFamily(name);

    /// <summary>
    /// A method's config for a model: on Phi-3 the targets are its fused modules (PEFT's names there), qkv_proj and
    /// gate_up_proj with down_proj, each adapted over its whole output; MixLoRA's experts sit on gate_up_proj and down_proj.
    /// </summary>
    static AdapterConfig ConfigFor(string method, LlamaForCausalLM model) => model is not Phi3ForCausalLM ? ConfigOf(method)
        : ConfigOf(method) is MixLoraConfig mix ? mix with { TargetModules = ["qkv_proj"] }
        : ConfigOf(method) with { TargetModules = ["qkv_proj", "gate_up_proj", "down_proj"] };

    /// <summary>
    /// Served the way the engine serves (each row its own adapter, several methods in one batch, rows without any),
    /// every row equals that row run alone with its adapter attached as trained.
    /// </summary>
    [Theory, MemberData(nameof(Models))]
    public void AMixedBatchOfAllMethodsEqualsEachRowRunAlone(string name)
    {
        using var scope = NewDisposeScope();
        using var model = ModelOf(name);
        var methods = MethodsOf(model);
        var served = new List<ServedAdapter?>();
        var alone = new List<Tensor>();
        var ids = Ids(methods.Length + 1, 6, seed: 8);
        for (int i = 0; i < methods.Length; i++)
        {
            using var adapter = TrainableAdapter.Create(model, ConfigFor(methods[i], model), seed: i);
            Randomize(adapter, seed: 10 + i);
            adapter.Attach(model);
            alone.Add(model.forward(ids.narrow(0, i, 1)));
            TrainableAdapter.Detach(model);
            string folder = Path.Combine(dir, methods[i]);
            adapter.Save(folder);
            served.Add(ServedAdapter.Load(folder, model));
        }
        alone.Add(model.forward(ids.narrow(0, methods.Length, 1)));   // a row without adapter
        served.Add(null);
        var slots = Enumerable.Range(0, served.Count).Select(i => (long)i).ToList();
        var rowAdapters = model.LinearLayers().Select(l => (l.Layer, Row: new RowAdapter(l.Path, l.Layer, served, slots, null))).ToList();
        var blocks = model.FeedForwardBlocks().Select(b => (Mlp: b.Block, Block: RowFeedForward.For(b.Path, served)))
            .Where(b => b.Block is not null).Select(b => (b.Mlp, Block: b.Block!)).ToList();   // none without a MixLoRA row (qwen3_moe)
        var norms = model.NormLayers().Select(n => (Norm: n.Layer, Row: RowNorm.For(n.Path, n.Layer.Size, served)!)).ToList();
        try
        {
            foreach (var (layer, row) in rowAdapters) layer.Adapter = row;
            foreach (var (mlp, block) in blocks) mlp.Adapter = block;
            foreach (var (norm, row) in norms) norm.Adapter = row;
            AssertClose(cat(alone), model.forward(ids), 2e-5);
        }
        finally
        {
            TrainableAdapter.Detach(model);
            foreach (var (_, row) in rowAdapters) row.Dispose();
            foreach (var (_, block) in blocks) block.Dispose();
            foreach (var (_, row) in norms) row.Dispose();
            foreach (var s in served) s?.Dispose();
        }
    }

    /// <summary>
    /// On a bf16 base (<see cref="BasePrecision"/>) every method trains in float32: a few steps lower the loss, the base
    /// stays as it was, and a method that merges leaves the base bf16 computing what base + adapter did (to bf16 rounding).
    /// </summary>
    [Theory, MemberData(nameof(Methods))]
    public void EveryMethodTrainsOnABf16BaseAndMergesKeepingBf16(string method)
    {
        using var scope = NewDisposeScope();
        using var model = BasePrecision.BFloat16.Apply(Create());
        var baseBefore = model.parameters().Select(p => Bytes(p)).ToList();
        using var adapter = TrainableAdapter.Create(model, ConfigOf(method), seed: 1);
        adapter.Attach(model);
        adapter.Train(true);
        foreach (var p in adapter.Parameters()) p.requires_grad = true;
        using var optimizer = optim.Adam(adapter.Parameters(), 0.01);
        var (ids, targets) = (Ids(2, 6, seed: 4), Ids(2, 6, seed: 9).view(-1));
        var losses = new List<double>();
        for (int step = 0; step < 6; step++)
        {
            using var stepScope = NewDisposeScope();
            optimizer.zero_grad();
            var logits = model.forward(ids);
            var loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]), targets);
            if (adapter.AuxiliaryLoss() is { } auxiliary) loss += auxiliary;
            loss.backward();
            optimizer.step();
            losses.Add(loss.item<float>());
        }
        Assert.True(losses[^1] < losses[0] - 0.05, $"{method}: {string.Join(" → ", losses.Select(l => l.ToString("F3")))}");
        Assert.All(adapter.Parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        Assert.Equal(baseBefore, model.parameters().Select(p => Bytes(p)).ToList());
        adapter.Train(false);
        Tensor attached;
        using (no_grad()) attached = model.forward(ids);
        try { adapter.Merge(model); }
        catch (NotSupportedException) { return; }   // Lily and MixLoRA: their update depends on the input
        Assert.All(model.LinearLayers(), l => Assert.Equal(ScalarType.BFloat16, l.Layer.weight.dtype));
        using (no_grad()) AssertClose(attached, model.forward(ids), 0.1);
    }

    /// <summary>On every family each method's first step from its initialisation lowers the loss of the batch it saw, which stays finite.</summary>
    [Theory, MemberData(nameof(Models))]
    public void EveryMethodsFirstStepLowersTheLoss(string name)
    {
        using var model = ModelOf(name);
        foreach (string method in MethodsOf(model))
        {
            using var scope = NewDisposeScope();
            using var adapter = TrainableAdapter.Create(model, ConfigFor(method, model), seed: 1);
            adapter.Attach(model);
            adapter.Train(true);
            foreach (var p in adapter.Parameters()) p.requires_grad = true;
            using var optimizer = optim.SGD(adapter.Parameters(), 0.05);
            var (ids, targets) = (Ids(2, 6, seed: 4), Ids(2, 6, seed: 9).view(-1));
            Tensor Loss()
            {
                var logits = model.forward(ids);
                var loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]), targets);
                return adapter.AuxiliaryLoss() is { } auxiliary ? loss + auxiliary : loss;
            }
            var before = Loss();
            before.backward();
            optimizer.step();
            double after = Loss().item<float>();
            Assert.True(double.IsFinite(after) && after < before.item<float>(), $"{method} on {name}: loss {before.item<float>()} → {after}");
            adapter.Train(false);
            TrainableAdapter.Detach(model);
        }
    }

    /// <summary>
    /// Autograd's gradient of the loss equals central finite differences (float32, so the tolerance is loose; a wrong or
    /// missing term is off by far more). DoRA's A and B are left out: DoRA treats its norm as a constant in the backward
    /// pass on purpose (§4.3), so their gradients are not the loss's exact ones.
    /// </summary>
    [Theory, MemberData(nameof(Methods))]
    public void GradientsMatchFiniteDifferences(string method)
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var adapter = TrainableAdapter.Create(model, ConfigOf(method), seed: 1);
        Randomize(adapter, seed: 7);   // a random point, away from the zero gradients of the initialisation
        adapter.Attach(model);
        var parameters = adapter.NamedParameters().Where(p => !(method == "dora" && p.Key.Contains(".lora_"))
            || p.Key.EndsWith("magnitude_vector", StringComparison.Ordinal)).Select(p => p.Value).DistinctBy(p => p.Handle).ToList();
        var ids = Ids(1, 5, seed: 2);
        var targets = Ids(1, 5, seed: 6).view(-1);
        Tensor Loss() { var l = model.forward(ids); return nn.functional.cross_entropy(l.view(-1, l.shape[^1]), targets); }
        foreach (var p in parameters) p.requires_grad = true;
        Loss().backward();
        using var noGrad = no_grad();
        foreach (var p in parameters)
        {
            var flat = p.view(-1);
            var grad = (p.grad ?? zeros_like(p)).view(-1);   // none where the parameter took no part (a MixLoRA expert no token chose)
            foreach (long i in new[] { 0L, flat.shape[0] / 2, flat.shape[0] - 1 })
            {
                double original = flat[i].item<float>(), eps = 1e-2;
                flat[i] = original + eps;
                double up = Loss().item<float>();
                flat[i] = original - eps;
                double down = Loss().item<float>();
                flat[i] = original;
                double numeric = (up - down) / (2 * eps), analytic = grad[i].item<float>();
                Assert.True(Math.Abs(numeric - analytic) <= 2e-3 + 2e-2 * Math.Abs(numeric),
                    $"{method}: d loss / d p[{i}] is {analytic} by autograd, {numeric} by finite differences");
            }
        }
    }

    /// <summary>
    /// RLRR's norm scale s on Gemma's RMSNorm multiplies its effective scale 1 + w (the norm's output), so merging writes
    /// w ← (1 + s)(1 + w) − 1: merged logits equal the adapter's, and unmerging restores the base weights.
    /// </summary>
    [Theory]
    [InlineData("gemma2")]
    [InlineData("gemma3_text")]
    public void RlrrMergesIntoGemmasOneplusWeightNorms(string family)
    {
        using var scope = NewDisposeScope();
        using var model = DecoderFamiliesTests.CreateFamily(family);
        var ids = Ids(2, 7, seed: 3);
        var baseWeights = model.parameters().Select(p => p.clone()).ToList();
        var plain = model.forward(ids);
        using var adapter = RlrrAdapter.Create(model, new RlrrConfig { TargetModules = Targets }, init: null);
        Randomize(adapter, seed: 5);
        adapter.Attach(model);
        var adapted = model.forward(ids);
        Assert.True((adapted - plain).abs().max().item<float>() > 1e-2);
        adapter.Merge(model);
        Assert.DoesNotContain(model.NormLayers(), n => n.Layer.Adapter is not null and not BiasShift);
        AssertClose(adapted, model.forward(ids), 1e-4);
        TrainableAdapter.Detach(model);
        adapter.Unmerge(model);
        Assert.All(model.parameters().Zip(baseWeights), p => AssertClose(p.Second, p.First, 1e-5));
    }

    /// <summary>MixLoRA on GPT-2 (c_fc, c_proj) and ViT (intermediate and output dense) as well as Llama: at init the base, after a step not.</summary>
    /// <summary>On Phi-3 each expert is LoRA on the fused gate_up_proj (over its whole output, the gate and up halves sharing A) and on down_proj.</summary>
    [Theory]
    [InlineData("gpt2")]
    [InlineData("vit")]
    [InlineData("phi3")]
    public void MixLoraAdaptsEveryFamilysFeedForward(string family)
    {
        using var scope = NewDisposeScope();
        ModelConfig config = family switch
        {
            "gpt2" => new Gpt2Config { VocabSize = 264, NEmbd = 32, NHead = 4, NLayer = 2, NPositions = 16 },
            "phi3" => new Phi3Config { VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4 },
            _ => new VitConfig { HiddenSize = 32, NumHiddenLayers = 2, NumAttentionHeads = 4, IntermediateSize = 64, ImageSize = 8, PatchSize = 4, NumChannels = 1 },
        };
        using var model = RandomModel.Create(config, seed: 4);
        var input = family == "vit" ? randn(2, 1, 8, 8) : Ids(2, 5, seed: 1);
        var before = model.forward(input);
        using var adapter = TrainableAdapter.Create(model, new MixLoraConfig { Rank = 2, NumExperts = 3, TargetModules = [] }, seed: 1);
        Assert.Equal(model.FeedForwardBlocks().Count(), adapter.Layers.Count);
        if (family == "phi3")   // per block: router 3 · 32, 3 experts × rank 2 × (gate_up 32 → 128, down 64 → 32)
            Assert.Equal(2 * (3 * 32 + 3 * 2 * ((32 + 128) + (64 + 32))), adapter.ParameterCount);
        adapter.Attach(model);
        AssertClose(before, model.forward(input), 1e-5);
        Randomize(adapter, 3);
        Assert.True((model.forward(input) - before).abs().max().item<float>() > 1e-3);
    }

    /// <summary>
    /// On Qwen3 MoE, target_modules reach every expert (PEFT's suffix match): LoRA on down_proj adapts the 4 experts of the
    /// sparse layer and the dense layer's down_proj, and at init (B = 0) gives the base's logits to the bit although every
    /// expert then runs on every token; MixLoRA, which makes dense blocks mixtures, is refused saying why.
    /// </summary>
    [Fact]
    public void MixLoraIsRefusedOnAMixtureOfExpertsBase()
    {
        using var scope = NewDisposeScope();
        using var model = DecoderFamiliesTests.CreateFamily("qwen3_moe");
        var ids = Ids(1, 1, seed: 5);                                        // one token: 2 of the 4 experts chosen, the others skipped
        var skipped = model.forward(ids);
        using (var lora = TrainableAdapter.Create(model, new LoraConfig { Rank = 2, TargetModules = ["down_proj"] }))
        {
            Assert.Equal(["model.layers.0.mlp.experts.0.down_proj", "model.layers.0.mlp.experts.1.down_proj", "model.layers.0.mlp.experts.2.down_proj",
                "model.layers.0.mlp.experts.3.down_proj", "model.layers.1.mlp.down_proj"], lora.Layers.Keys.Order());
            lora.Attach(model);                                              // B = 0: the base, now with every expert run on every token
            Assert.Equal(Bytes(skipped), Bytes(model.forward(ids)));         // the unchosen experts' weight-0 terms change no bit
            TrainableAdapter.Detach(model);
        }
        var error = Assert.Throws<ArgumentException>(() => TrainableAdapter.Create(model, ConfigOf("mixlora"))).Message;
        Assert.Contains("model_type 'qwen3_moe' is a mixture of experts already", error);
    }

    /// <summary>The papers' ViT-B/16 figures (derived in docs/METHODS.md), on ViT-B/16 built from its config with random weights.</summary>
    [Fact]
    public void ParameterCountsOnVitB16MatchThePapers()
    {
        using var model = RandomModel.Create(VitConfig.Base16(), seed: 1);
        long Count(AdapterConfig config) { using var a = TrainableAdapter.Create(model, config); return a.ParameterCount; }

        Assert.Equal(294_912, Count(new LoraConfig { Rank = 8, TargetModules = ["query", "value"] }));            // LoRA r = 8 on q, v
        long lily = Count(new LilyConfig { Rank = 32, NumExperts = 4, TargetModules = ["query", "value"] });
        Assert.Equal(786_688, lily);                                                                                 // Lily qv: the paper's 0.78M
        long rlrr = Count(new RlrrConfig { TargetModules = ["query", "key", "value", "dense"] });                    // every linear layer but the head, every LayerNorm
        Assert.Equal(287_232, rlrr);
        // With the classification head averaged over VTAB-1K's 19 tasks (940 classes: 768 · 49.5 + 49.5 on average) it rounds to the paper's 0.33M.
        Assert.Equal(0.33, Math.Round((rlrr + (768 + 1) * 940 / 19.0) / 1e6, 2));
    }
}
