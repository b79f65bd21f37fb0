using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// DoRA on one linear layer (DoRA: Weight-Decomposed Low-Rank Adaptation, https://arxiv.org/abs/2402.09353; PEFT
/// semantics with <c>use_dora</c>):
/// W' = m ⊙ (W + s·B A) / ‖W + s·B A‖, the norm taken per output feature over the inputs and treated as a constant in
/// the backward pass (the paper's §4.3), m initialised to ‖W‖ so the adapted model starts equal to the base.
/// Written as PEFT computes it: y' = y + (g − 1) ⊙ W dx + g ⊙ s·B A dx with g = m / ‖W + s·B A‖ and dx = dropout(x).
/// </summary>
public sealed class DoraLayer : nn.Module<Tensor, Tensor>, ILinearAdapter, IDropoutLayer, ILoraLayer
{
    public readonly Linear lora_A, lora_B;
    public readonly Parameter lora_magnitude_vector;
    readonly FrozenLayer frozen;
    readonly double dropout, scaling;

    public Generator? DropoutGenerator { get; set; }

    public DoraLayer(AdaptableLinear layer, LoraConfig config, Generator? init = null) : base(nameof(DoraLayer))
    {
        frozen = new FrozenLayer(layer);
        using var lora = new LoraLayer(layer.InFeatures, layer.OutFeatures, config, init);   // LoRA's own initialisation
        lora_A = nn.Linear(layer.InFeatures, config.Rank, hasBias: false);
        lora_B = nn.Linear(config.Rank, layer.OutFeatures, hasBias: false);
        using (no_grad())
        {
            lora_A.weight!.copy_(lora.lora_A.weight!);
            lora_B.weight!.zero_();
        }
        lora_magnitude_vector = new Parameter(layer.weight.detach().to_type(ScalarType.Float32).norm(1));   // m = ‖W‖ per output [out], fp32 for a bf16 base too
        (dropout, scaling) = (config.Dropout, config.Scaling);
        RegisterComponents();
        eval();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("DoRA adapts a layer's output: call Forward(x, y)");

    public Tensor Forward(Tensor x, Tensor y)
    {
        var layer = frozen.Layer;
        var g = Dora.OutputScale(layer.weight, lora_A.weight!, lora_B.weight!, scaling, lora_magnitude_vector);   // [out]
        var dx = SeededDropout.Apply(x, dropout, training, DropoutGenerator);                   // [.., in]
        var baseOut = ReferenceEquals(dx, x) ? (layer.bias is null ? y : y - layer.bias) : layer.Frozen(dx, withBias: false);
        return y + (g - 1) * baseOut + g * lora_B.forward(lora_A.forward(dx)) * scaling;        // [.., out]
    }

    public LoraWeights Weights() => new(lora_A.weight!, lora_B.weight!, scaling, lora_magnitude_vector);

    public IEnumerable<(string Name, Parameter Value)> SavedParameters() =>
        [("lora_A.weight", lora_A.weight!), ("lora_B.weight", lora_B.weight!), ("lora_magnitude_vector", lora_magnitude_vector)];
}

public static class Dora
{
    /// <summary>g = m / ‖W + s·B A‖ per output feature [out], the norm detached (DoRA §4.3).</summary>
    public static Tensor OutputScale(Tensor weight, Tensor a, Tensor b, double scaling, Tensor magnitude)
    {
        using var scope = NewDisposeScope();
        var norm = (weight + Lora.DeltaWeight(a, b, scaling)).detach().norm(1);                 // [out]
        return (magnitude / norm).MoveToOuterDisposeScope();
    }
}
