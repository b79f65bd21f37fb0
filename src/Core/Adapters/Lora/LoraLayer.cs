using TorchSharp;
using TorchSharp.Modules;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// LoRA on one linear layer (LoRA: Low-Rank Adaptation of Large Language Models, https://arxiv.org/abs/2106.09685;
/// PEFT semantics): h = W x + (alpha / r) · B A dropout(x),
/// A [r, in] Kaiming-uniform, B [out, r] zeros, so the adapted model starts equal to the base.
/// </summary>
public sealed class LoraLayer : nn.Module<Tensor, Tensor>, ILinearAdapter, IDropoutLayer, ILoraLayer
{
    public readonly Linear lora_A, lora_B;
    readonly double dropout, scaling;

    /// <summary>Draws the dropout masks in training; a generator of the trainer's, so no other thread can shift them.</summary>
    public Generator? DropoutGenerator { get; set; }

    /// <summary>A layer of shape in → out; A drawn from <paramref name="init"/> (the global generator when null), B zero.</summary>
    public LoraLayer(long inFeatures, long outFeatures, LoraConfig config, Generator? init = null) : base(nameof(LoraLayer))
    {
        lora_A = nn.Linear(inFeatures, config.Rank, hasBias: false);
        lora_B = nn.Linear(config.Rank, outFeatures, hasBias: false);
        using (no_grad())
        {
            // Kaiming-uniform with a = sqrt(5), as PEFT: bound = sqrt(6 / ((1 + a²) · fan_in)) = 1 / sqrt(fan_in).
            double bound = 1 / Math.Sqrt(inFeatures);
            lora_A.weight!.uniform_(-bound, bound, init);
            lora_B.weight!.zero_();
        }
        (dropout, scaling) = (config.Dropout, config.Scaling);
        RegisterComponents();
        eval();   // dropout only once a trainer switches training on
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("LoRA adapts a layer's output: call Forward(x, y)");

    public Tensor Forward(Tensor x, Tensor y)
    {
        var dx = SeededDropout.Apply(x, dropout, training, DropoutGenerator);                  // [.., in]
        // Scaling the rank-r intermediate and adding y in place into B's fresh output spares two passes (and a temporary) over [.., out].
        return lora_B.forward(lora_A.forward(dx) * scaling).add_(y);                             // [.., out]
    }

    public LoraWeights Weights() => new(lora_A.weight!, lora_B.weight!, scaling);

    public IEnumerable<(string Name, Parameter Value)> SavedParameters() => [("lora_A.weight", lora_A.weight!), ("lora_B.weight", lora_B.weight!)];
}

/// <summary>A LoRA layer or its DoRA variant, as saving, merging and serving read it.</summary>
public interface ILoraLayer
{
    /// <summary>Its weights as served (live views of the parameters).</summary>
    LoraWeights Weights();

    /// <summary>Its parameters under PEFT's names within the layer (<c>lora_A.weight</c> …).</summary>
    IEnumerable<(string Name, Parameter Value)> SavedParameters();
}

/// <summary>LoRA's math shared by training, merging, DoRA and serving.</summary>
public static class Lora
{
    /// <summary>ΔW = s · B A [out, in].</summary>
    public static Tensor DeltaWeight(Tensor a, Tensor b, double scaling) => b.matmul(a) * scaling;

    /// <summary>
    /// s · B A x for one pair's weights (MixLoRA's experts, in training and serving alike). <see cref="LoraLayer"/> scales
    /// the rank-r intermediate instead, which rounds differently; each keeps its order so outputs stay bit for bit.
    /// </summary>
    public static Tensor Delta(Tensor x, LoraWeights w) => x.matmul(w.A.t()).matmul(w.B.t()) * w.Scaling;
}

/// <summary>
/// A trained LoRA pair for one layer, as served: A [r, in], B [out, r], scaling; for DoRA also the output scale
/// g = m / ‖W + scaling·B A‖ per output feature [out] (constant once trained, so DoRA serves as LoRA times g).
/// </summary>
public sealed record LoraWeights(Tensor A, Tensor B, double Scaling, Tensor? Magnitude = null)
{
    /// <summary>DoRA's g for the base layer it serves, worked out on first use (the serving thread's only).</summary>
    public Tensor? OutputScale { get; set; }

    public long Bytes => (A.numel() + B.numel() + 2 * (Magnitude?.numel() ?? 0)) * 4;
    public void Dispose() { A.Dispose(); B.Dispose(); Magnitude?.Dispose(); OutputScale?.Dispose(); }
}
