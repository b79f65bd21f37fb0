using AdapterService.Core.Storage;
using AdapterService.Tests.Shared;
using Mono.Cecil;

namespace AdapterService.Core.Tests;

/// <summary>
/// Pins which of Core's namespaces may use which, read from the compiled assembly (signatures, fields, attributes and
/// every instruction's operand), so a fully qualified name or a lambda cannot slip past it. A namespace may use only
/// those of lower layers; the namespaces of one layer may not use each other. That also rules out cycles.
/// </summary>
public class LayeringTests
{
    /// <summary>Bottom to top; a sub-namespace (Adapters.Lora, Storage.Migrations) belongs to its first segment.</summary>
    static readonly string[][] Layers =
    [
        ["Torch", "Storage", "Telemetry"],   // Telemetry: the service's meter, activity source and instruments
        ["Models"],            // modules, configs and weight files of the families
        ["Data"],              // training-file formats and datasets (images as tensors sized for a model)
        ["Text"],              // tokenizers and chat formats
        ["Adapters"],          // adapter methods over the models
        ["Inference", "Exports"],   // Exports: other formats than Hugging Face's (GGUF)
        ["Grading"],           // graders (OpenAI's), a judge model served by the engine
        ["Training", "Evals"], // trainers (reinforcement's rollouts run on the engine and are graded); eval runs, scored on the engine
        ["Pretraining"],
        ["Builtins"],          // the built-in bases: made, pre-trained and registered
        ["Jobs"],
    ];

    [Fact]
    public void Core_namespaces_use_only_lower_layers()
    {
        var layerOf = Layers.SelectMany((names, layer) => names.Select(n => (n, layer))).ToDictionary(p => p.n, p => p.layer);
        using var assembly = AssemblyDefinition.ReadAssembly(typeof(ServiceDbContext).Assembly.Location);
        var uses = new SortedSet<string>();
        foreach (var type in assembly.MainModule.GetTypes())
        {
            string? from = Segment(TypeReferences.Outermost(type).Namespace);
            if (from is null) continue;
            Assert.True(layerOf.ContainsKey(from), $"namespace AdapterService.Core.{from} is in no layer of {nameof(LayeringTests)}");
            foreach (var used in TypeReferences.Of(type))
                if (Segment(TypeReferences.Outermost(used).Namespace) is { } to && to != from) uses.Add($"{from} -> {to}");
        }
        var wrong = uses.Where(u => u.Split(" -> ") is [var from, var to] && (!layerOf.TryGetValue(to, out var l) || l >= layerOf[from])).ToList();
        Assert.True(wrong.Count == 0, "Core namespaces used against the layering: " + string.Join("; ", wrong));
        Assert.Contains("Training -> Adapters", uses);   // the reader sees what is there
    }

    static string? Segment(string ns) =>
        ns.StartsWith("AdapterService.Core.", StringComparison.Ordinal) ? ns["AdapterService.Core.".Length..].Split('.')[0] : null;
}
