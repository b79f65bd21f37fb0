using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>Models with seeded random weights: the built-in demo bases start from them, and tests build on them.</summary>
public static class RandomModel
{
    /// <summary>A frozen model with random weights drawn from <paramref name="seed"/>: the same seed gives the same weights.</summary>
    public static LlamaForCausalLM Create(LlamaConfig config, long seed) => (LlamaForCausalLM)Create((ModelConfig)config, seed);

    /// <summary>
    /// A frozen model of any family (e.g. <see cref="VitConfig.Base16(int)"/>) with random weights drawn from <paramref name="seed"/>:
    /// norms start as the identity, biases at zero, embeddings N(0, 1) (a tied head's N(0, 1/hidden)), and every other
    /// weight N(0, 1/fan_in).
    /// </summary>
    public static nn.Module<Tensor, Tensor> Create(ModelConfig config, long seed)
    {
        var model = config.CreateModel();
        // By name: TorchSharp may hand out a new wrapper (and handle) for the same parameter on each call.
        // A norm's identity weight is 1, or 0 where it scales by 1 + weight (Gemma).
        var norms = model.NormLayers().ToDictionary(n => n.Path + ".weight", n => 1 - n.Layer.WeightOffset);
        var embeddings = model.named_modules().Where(m => m.module is EmbeddingTable or TorchSharp.Modules.Embedding).Select(m => m.name + ".weight").ToHashSet();
        using var generator = new Generator().manual_seed(seed);
        using (no_grad())
        using (NewDisposeScope())
            foreach (var (name, p) in model.named_parameters())
            {
                if (p.dim() == 1) p.fill_(norms.GetValueOrDefault(name));
                // A head tied to the token embeddings is that one matrix, drawn at a head's scale so the logits stay O(1)
                // (N(0, 1) embeddings read back through a tied head give each token a margin of ~hidden_size over the rest).
                else if (TiedHead(config, name)) p.normal_(0, 1 / Math.Sqrt(p.shape[1]), generator);
                else if (embeddings.Contains(name) || name.EndsWith(".cls_token", StringComparison.Ordinal)
                         || name.EndsWith(".position_embeddings", StringComparison.Ordinal)) p.normal_(0, 1, generator);
                // Unit-variance activations through each linear layer; this keeps logits of a random model O(1).
                else p.normal_(0, 1 / Math.Sqrt(p.numel() / p.shape[0]), generator);
            }
        foreach (var p in model.parameters()) p.requires_grad = false;
        model.eval();
        return model;
    }

    /// <summary>Whether <paramref name="name"/> is token embeddings that the output head shares (Hugging Face's names).</summary>
    static bool TiedHead(ModelConfig config, string name) => config switch
    {
        LlamaConfig { TieWordEmbeddings: true } => name == "model.embed_tokens.weight",
        Gpt2Config { TieWordEmbeddings: true } => name == "transformer.wte.weight",
        _ => false,
    };
}
