using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// MixLoRA (MixLoRA: Enhancing Large Language Models Fine-Tuning with LoRA based Mixture of Experts,
/// https://arxiv.org/abs/2404.15159): LoRA experts in every feed-forward network, plain LoRA on target_modules.
/// </summary>
public sealed class MixLoraMethod : AdapterMethod<MixLoraConfig>
{
    /// <summary>The attention projections of the families we load (Llama, Phi-3, GPT-2, ViT): MixLoRA's plain-LoRA layers by default.</summary>
    static readonly string[] Attention = ["q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "query", "key", "value"];

    public override string Name => "mixlora";
    public override string PeftType => MixLoraConfig.Type;
    /// <summary>No: its router picks experts per token.</summary>
    public override bool CanMerge => false;
    /// <summary>No: its load-balance loss spans the batch.</summary>
    public override bool TokenWise => false;
    /// <summary>Its experts adapt the feed-forward networks whatever target_modules names.</summary>
    public override bool RequiresTargetModules => false;

    /// <summary>The experts adapt the feed-forward networks; target_modules defaults to the attention layers, which get plain LoRA.</summary>
    public override IReadOnlyList<string> DefaultTargets(IReadOnlyList<string> allLinear) => allLinear.Intersect(Attention).ToArray();

    public override AdapterConfig FromOptions(AdapterOptions o, IReadOnlyList<string> targetModules) => new MixLoraConfig
    {
        TargetModules = targetModules, Rank = o.Rank ?? 8, Alpha = o.Alpha ?? 2 * (o.Rank ?? 8), Dropout = o.Dropout ?? 0,
        NumExperts = o.NumExperts ?? 8, TopK = o.TopK ?? 2, AuxLossCoefficient = o.RouterAuxLossCoef ?? 0.01,
    };

    protected override AdapterOptions Options(MixLoraConfig c) =>
        new(c.Rank, c.Alpha, c.Dropout, c.NumExperts, TopK: c.TopK, RouterAuxLossCoef: c.AuxLossCoefficient);

    protected override TrainableAdapter Create(nn.Module model, MixLoraConfig config, Generator? init) => MixLoraAdapter.Create(model, config, init);

    protected override ServedAdapter Load(MixLoraConfig config, Dictionary<string, Tensor> tensors, BaseShapes shapes)
    {
        var (blocks, lora) = MixLoraAdapter.LoadServed(config, tensors, shapes.Linear);
        return new() { Config = config, Blocks = blocks.ToDictionary(b => b.Key, b => (IRowBlock)b.Value), Lora = lora };
    }
}
