using System.CommandLine;

namespace AdapterService.Cli;

/// <summary><c>adapter list</c> and <c>adapter download</c> (also spelt <c>adapters …</c>): our adapters extension (PEFT folders).</summary>
public static class AdaptersCommands
{
    public static Command Create(Runner run)
    {
        var list = new Command("list", "List stored adapters, newest first");
        list.SetAction(run(async (c, cancel) =>
        {
            var adapters = await c.Client.GetAsync("v1/adapters", cancel);
            if (c.Output.Json) { c.Output.WriteJson(adapters); return 0; }
            c.Output.Table(["id", "model", "method", "base_model", "parameters", "bytes", "created"], adapters["data"]!.AsArray().Select(a =>
                new[] { Output.Text(a!["id"]), Output.Text(a["model"]), Output.Text(a["method"]), Output.Text(a["base_model"]),
                        Output.Text(a["parameter_count"]), Output.Text(a["size_bytes"]), Output.Time(a["created_at"]) }));
            return 0;
        }));

        var adapter = new Argument<string>("adapter") { Description = "An adapter's id (adapter-…) or its fine-tuned model name (ft:…)" };
        var output = new Option<string?>("--output", "-o") { Description = "The file to write (default: the name the service gives)" };
        var format = new Option<string?>("--format") { Description = "gguf for llama.cpp's LoRA adapter format (default: a PEFT zip)" };
        var type = new Option<string?>("--type") { Description = "The GGUF tensor type: f32, f16, bf16, q8_0" };
        var download = new Command("download", "Download an adapter as a PEFT zip (adapter_config.json, adapter_model.safetensors) or a GGUF LoRA") { adapter, output, format, type };
        download.SetAction(run(async (c, cancel) =>
        {
            string id = await AdapterIdAsync(c, c.Get(adapter), cancel);
            await ModelsCommands.Download(c, $"v1/adapters/{Uri.EscapeDataString(id)}/export{ModelsCommands.Query(c.Get(format), c.Get(type))}", c.Get(output), cancel);
            return 0;
        }));
        return new Command("adapter", "List and download adapters (also: adapters list|download)") { list, download };
    }

    /// <summary>An adapter id as given; a model name is looked up among the adapters.</summary>
    static async Task<string> AdapterIdAsync(Context c, string value, CancellationToken cancel)
    {
        if (value.StartsWith("adapter-", StringComparison.Ordinal)) return value;
        var adapters = await c.Client.GetAsync("v1/adapters", cancel);
        return adapters["data"]!.AsArray().FirstOrDefault(a => Output.Text(a!["model"]) == value) is { } found
            ? Output.Text(found["id"]) : throw new CliException($"no adapter serves the model {value}");
    }
}
