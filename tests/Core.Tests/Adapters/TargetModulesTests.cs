using AdapterService.Core.Adapters;
using AdapterService.Core.Models;

namespace AdapterService.Core.Tests.Adapters;

public sealed class TargetModulesTests
{
    static readonly List<string> Paths = LlamaForCausalLM.LinearPaths(TinyLlama.Config).ToList();

    static List<string> Expect(params string[] perLayer) =>
        Enumerable.Range(0, TinyLlama.Config.NumHiddenLayers).SelectMany(i => perLayer.Select(m => $"model.layers.{i}.{m}")).ToList();

    [Fact]
    public void NamesMatchPathsEndingWithThemAtADot()
    {
        Assert.Equal(Expect("self_attn.q_proj", "self_attn.v_proj"), TargetModules.Match(Paths, ["q_proj", "v_proj"]));
        Assert.Equal(Expect("self_attn.o_proj"), TargetModules.Match(Paths, ["self_attn.o_proj"]));
        Assert.Equal(["model.layers.1.mlp.up_proj"], TargetModules.Match(Paths, ["model.layers.1.mlp.up_proj"]));
        Assert.Equal(["lm_head"], TargetModules.Match(Paths, ["lm_head"]));
        Assert.Throws<ArgumentException>(() => TargetModules.Match(Paths, ["proj"]));   // "q_proj" does not end with ".proj"
    }

    [Fact]
    public void ASingleNonPlainStringIsARegexOverTheWholePath()
    {
        Assert.Equal(Expect("self_attn.q_proj", "self_attn.v_proj"), TargetModules.Match(Paths, [@".*\.(q|v)_proj"]));
        Assert.Equal(Paths.Where(p => p.StartsWith("model.layers.1.", StringComparison.Ordinal)),
            TargetModules.Match(Paths, [@"model\.layers\.1\..*"]));
        Assert.Throws<ArgumentException>(() => TargetModules.Match(Paths, ["q_proj|v_proj"]));   // full match, as PEFT's re.fullmatch
    }

    [Fact]
    public void AllLinearIsEveryLinearLayerButTheHead()
    {
        var all = TargetModules.Match(Paths, ["all-linear"]);
        Assert.Equal(Paths.Where(p => p != "lm_head"), all);
        Assert.Equal(7 * TinyLlama.Config.NumHiddenLayers, all.Count);
    }

    [Fact]
    public void UnknownNamesThrowListingTheModelsLayerNames()
    {
        var e = Assert.Throws<ArgumentException>(() => TargetModules.Match(Paths, ["qkv_proj", "dense"]));
        foreach (var part in new[] { "qkv_proj", "dense", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head" })
            Assert.Contains(part, e.Message);
    }
}
