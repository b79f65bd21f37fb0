using AdapterService.Core.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>A base model stored as a Hugging Face folder: config.json + model.safetensors (+ tokenizer files).</summary>
public static class ModelFolder
{
    public const string ConfigFile = "config.json", WeightsFile = "model.safetensors";

    /// <summary>Loads a frozen model in evaluation mode.</summary>
    public static LlamaForCausalLM Load(string folder)
    {
        var config = LlamaConfig.Load(Path.Combine(folder, ConfigFile));
        var model = new LlamaForCausalLM(config);
        var tensors = SafeTensors.Load(Path.Combine(folder, WeightsFile));
        try
        {
            if (config.TieWordEmbeddings && !tensors.ContainsKey("lm_head.weight"))
                tensors["lm_head.weight"] = tensors.GetValueOrDefault("model.embed_tokens.weight")
                    ?? throw new InvalidDataException("model.embed_tokens.weight is missing");
            using (no_grad())
                foreach (var (name, parameter) in model.named_parameters())
                {
                    if (!tensors.TryGetValue(name, out var t))
                        throw new InvalidDataException($"{WeightsFile} has no tensor {name}");
                    if (!t.shape.SequenceEqual(parameter.shape))
                        throw new InvalidDataException($"{name}: shape [{string.Join(",", t.shape)}] in {WeightsFile}, [{string.Join(",", parameter.shape)}] in config.json");
                    parameter.copy_(t);
                }
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
        Freeze(model);
        return model;
    }

    public static void Save(LlamaForCausalLM model, string folder)
    {
        using var scope = NewDisposeScope();
        Directory.CreateDirectory(folder);
        SafeTensors.Save(Path.Combine(folder, WeightsFile),
            model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter.detach()));
        model.Config.Save(Path.Combine(folder, ConfigFile));
    }

    static void Freeze(LlamaForCausalLM model)
    {
        foreach (var p in model.parameters()) p.requires_grad = false;
        model.eval();
    }
}
