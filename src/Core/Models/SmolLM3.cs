using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// SmolLM3 (transformers' modeling_smollm3.py): Llama's decoder where some layers use no positional encoding at all
/// (NoPE): <c>no_rope_layers[i]</c> is 1 where layer i rotates queries and keys, 0 where it does not; without the list,
/// every <c>no_rope_layer_interval</c>-th layer (the 4th, 8th, … by default) is NoPE. Tied embeddings by default.
/// </summary>
public sealed class SmolLM3ForCausalLM(SmolLM3Config config) : LlamaForCausalLM(config);

public sealed record SmolLM3Config : LlamaConfig
{
    public SmolLM3Config()
    {
        ModelType = "smollm3";
        Architectures = [nameof(SmolLM3ForCausalLM)];
        // SmolLM3Config's defaults where they differ from Llama's.
        (TieWordEmbeddings, RopeTheta, MaxPositionEmbeddings, RmsNormEps) = (true, 2_000_000, 32768, 1e-6);
    }

    [JsonPropertyName("no_rope_layers")] public int[]? NoRopeLayers { get; init; }
    [JsonPropertyName("no_rope_layer_interval")] public int NoRopeLayerInterval { get; init; } = 4;
    /// <summary>On, with a sliding_window, it slides the NoPE layers' attention; refused, as no released config turns it on.</summary>
    [JsonPropertyName("use_sliding_window")] public bool UseSlidingWindow { get; init; }
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; init; }

    public override bool UsesRope(int layer) => NoRopeLayers is { } list ? list[layer] == 1 : (layer + 1) % NoRopeLayerInterval != 0;

    [JsonIgnore] public override Type ModelClass => typeof(SmolLM3ForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new SmolLM3ForCausalLM(this);

    protected override IEnumerable<string> Problems()
    {
        foreach (string problem in base.Problems()) yield return problem;
        if (NoRopeLayers is { } list && (list.Length < NumHiddenLayers || list.Any(v => v is not (0 or 1))))
            yield return $"no_rope_layers must list 0 or 1 for each of the {NumHiddenLayers} layers";
        if (NoRopeLayers is null && NoRopeLayerInterval <= 0) yield return $"no_rope_layer_interval is {NoRopeLayerInterval}; it must be positive";
        if (UseSlidingWindow && SlidingWindow is not null) yield return "use_sliding_window true with a sliding_window is not supported (no released SmolLM3 config turns it on)";
    }
}
