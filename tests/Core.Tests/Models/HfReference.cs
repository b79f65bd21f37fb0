using AdapterService.Core.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>
/// Hugging Face folders written by hand (config.json text and tensor names exactly as transformers writes them), and
/// the transformer equations in plain float64 tensor code, for checking the models against.
/// </summary>
static class HfReference
{
    public static void WriteFolder(string folder, string configJson, IReadOnlyDictionary<string, Tensor> tensors)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, ModelFolder.ConfigFile), configJson);
        SafeTensors.Save(Path.Combine(folder, ModelFolder.WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Seeded values for a checkpoint's tensors, all O(1) so every one of them shows in the outputs.</summary>
    public static Dictionary<string, Tensor> Random(IEnumerable<(string Key, long[] Shape)> shapes, long seed)
    {
        using var g = new Generator((ulong)seed);
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (key, shape) in shapes)
        {
            bool embedding = new[] { "wte.", "wpe.", "embed_tokens.", "cls_token", "position_embeddings" }.Any(key.Contains);
            bool normScale = shape.Length == 1 && (key.Contains("ln_") || key.Contains("norm")) && key.EndsWith(".weight");
            tensors[key] = normScale ? rand(shape, generator: g) + 0.5                               // U(0.5, 1.5)
                : shape.Length == 1 ? randn(shape, generator: g) * 0.1
                : embedding ? randn(shape, generator: g) * 0.5
                : randn(shape, generator: g) / Math.Sqrt(shape.Aggregate(1L, (a, b) => a * b) / shape.Max());   // ~1/sqrt(fan-in)
        }
        return tensors;
    }

    public static Tensor F64(Tensor t) => t.detach().to_type(ScalarType.Float64);

    public static Tensor LayerNorm(Tensor x, Tensor weight, Tensor bias, double eps)
    {
        var mean = x.mean([-1], keepdim: true);
        var variance = (x - mean).pow(2).mean([-1], keepdim: true);
        return (x - mean) / (variance + eps).sqrt() * weight + bias;
    }

    public static Tensor GeluTanh(Tensor x) => 0.5 * x * (1 + (Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x.pow(3))).tanh());

    public static Tensor GeluErf(Tensor x) => 0.5 * x * (1 + (x / Math.Sqrt(2)).erf());

    /// <summary>Multi-head attention of one sequence: q, k, v [tokens, heads·hd]; position i sees j ≤ i when causal, else all.</summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, int heads, bool causal)
    {
        long t = q.shape[0], hd = q.shape[1] / heads;
        var mask = zeros(t, t, ScalarType.Float64);
        if (causal)
            for (int i = 0; i < t; i++)
                for (int j = i + 1; j < t; j++) mask[i, j] = double.NegativeInfinity;
        var outputs = new List<Tensor>();
        for (int h = 0; h < heads; h++)
        {
            Tensor qh = q.narrow(1, h * hd, hd), kh = k.narrow(1, h * hd, hd), vh = v.narrow(1, h * hd, hd);
            var scores = qh.matmul(kh.t()) / Math.Sqrt(hd) + mask;                     // [t, t]
            outputs.Add(scores.softmax(-1).matmul(vh));                                // [t, hd]
        }
        return cat(outputs, 1);                                                        // [t, heads·hd]
    }
}
