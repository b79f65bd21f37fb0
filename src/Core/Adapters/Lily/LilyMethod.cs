using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>Lily (Low-Rank Interconnected Adaptation across Layers, https://arxiv.org/abs/2407.09946).</summary>
public sealed class LilyMethod : AdapterMethod<LilyConfig>
{
    public override string Name => "lily";
    public override string PeftType => LilyConfig.Type;
    /// <summary>No: its update depends on the input through the router.</summary>
    public override bool CanMerge => false;
    /// <summary>No: its router averages over a sequence (or the batch).</summary>
    public override bool TokenWise => false;
    /// <summary>A module type's experts and router are saved under every layer of that type.</summary>
    public override IReadOnlyList<string> SharedTensorSuffixes => [".lily_B.weight", ".lily_router.weight"];

    public override AdapterConfig FromOptions(AdapterOptions o, IReadOnlyList<string> targetModules) => new LilyConfig
    {
        TargetModules = targetModules, Rank = o.Rank ?? 8, NumExperts = o.NumExperts ?? 4, Scaling = o.Scaling ?? 1.0,
        Dropout = o.Dropout ?? 0, RouterMean = o.RouterMean ?? "sequence", Monoscale = o.Monoscale ?? false,
    };

    protected override AdapterOptions Options(LilyConfig c) =>
        new(c.Rank, Dropout: c.Dropout, NumExperts: c.NumExperts, Scaling: c.Scaling, RouterMean: c.RouterMean, Monoscale: c.Monoscale);

    protected override TrainableAdapter Create(nn.Module model, LilyConfig config, Generator? init) => LilyAdapter.Create(model, config, init);

    protected override ServedAdapter Load(LilyConfig config, Dictionary<string, Tensor> tensors, BaseShapes shapes) =>
        new() { Config = config, Deltas = LilyAdapter.LoadServed(config, tensors, shapes.Linear) };
}
