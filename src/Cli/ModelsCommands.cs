using System.CommandLine;
using System.Text.Json.Nodes;
using Spectre.Console;

namespace AdapterService.Cli;

/// <summary><c>models list</c> (the SDK) and <c>models export</c> (our export endpoint, streamed to a file).</summary>
public static class ModelsCommands
{
    public static Command Create(Runner run)
    {
        var list = new Command("list", "List base and fine-tuned models");
        list.SetAction(run(async (c, cancel) =>
        {
            var result = await c.Client.OpenAI.GetOpenAIModelClient().GetModelsAsync(cancel);
            var models = JsonNode.Parse(result.GetRawResponse().Content.ToString())!;
            if (c.Output.Json) { c.Output.WriteJson(models); return 0; }
            c.Output.Table(["id", "owned_by", "created"], models["data"]!.AsArray().Select(m =>
                new[] { Output.Text(m!["id"]), Output.Text(m["owned_by"]), Output.Time(m["created"]) }));
            return 0;
        }));

        var model = new Argument<string>("model") { Description = "A base or fine-tuned model" };
        var output = new Option<string?>("--output", "-o") { Description = "The file to write (default: the name the service gives)" };
        var format = new Option<string?>("--format") { Description = "gguf for one llama.cpp GGUF file (default: a zipped Hugging Face folder)" };
        var type = new Option<string?>("--type") { Description = "The GGUF tensor type: f32, f16, bf16, q8_0" };
        var export = new Command("export", "Download a model (a fine-tuned one merged into its base) as a Hugging Face zip or a GGUF file") { model, output, format, type };
        export.SetAction(run(async (c, cancel) =>
        {
            await Download(c, $"v1/models/{Uri.EscapeDataString(c.Get(model))}/export{Query(c.Get(format), c.Get(type))}", c.Get(output), cancel);
            return 0;
        }));
        return new Command("models", "List and export models") { list, export };
    }

    public static string Query(string? format, string? type)
    {
        var parts = new List<string>();
        if (format is not null) parts.Add($"format={Uri.EscapeDataString(format)}");
        if (type is not null) parts.Add($"type={Uri.EscapeDataString(type)}");
        return parts.Count == 0 ? "" : "?" + string.Join('&', parts);
    }

    /// <summary>
    /// Streams a download to <paramref name="target"/> (or the file name the service gives, in the current folder)
    /// through a temporary file, so a failed download leaves nothing half-written; prints the path and size.
    /// </summary>
    public static async Task Download(Context c, string path, string? target, CancellationToken cancel)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, path);
        using var response = await c.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
        string name = response.Content.Headers.ContentDisposition?.FileNameStar ?? response.Content.Headers.ContentDisposition?.FileName?.Trim('"') ?? "export";
        string file = Path.GetFullPath(target ?? string.Concat(Path.GetFileName(name).Select(ch => Path.GetInvalidFileNameChars().Contains(ch) || ch == ':' ? '_' : ch)));
        if (Directory.Exists(file)) file = Path.Combine(file, Path.GetFileName(name));
        string partial = file + ".part";
        long total = response.Content.Headers.ContentLength ?? 0, written = 0;
        try
        {
            await using (var source = await response.Content.ReadAsStreamAsync(cancel))
            await using (var sink = File.Create(partial))
            {
                async Task CopyAsync(Action<long>? progress)
                {
                    var buffer = new byte[1 << 16];
                    int read;
                    while ((read = await source.ReadAsync(buffer, cancel)) > 0)
                    {
                        await sink.WriteAsync(buffer.AsMemory(0, read), cancel);
                        written += read;
                        progress?.Invoke(written);
                    }
                }
                if (c.Output.Rich)
                    await c.Output.Terminal.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new DownloadedColumn(), new TransferSpeedColumn())
                        .StartAsync(async ctx =>
                        {
                            var task = ctx.AddTask(Markup.Escape(Path.GetFileName(file)), maxValue: total > 0 ? total : 1);
                            task.IsIndeterminate = total <= 0;
                            await CopyAsync(n => task.Value = total > 0 ? n : 0);
                            task.Value = task.MaxValue;
                        });
                else await CopyAsync(null);
            }
            File.Move(partial, file, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            File.Delete(partial);
            throw new CliException($"cannot write {file}: {e.Message}");
        }
        catch
        {
            File.Delete(partial);
            throw;
        }
        if (c.Output.Json) c.Output.WriteJson(new JsonObject { ["path"] = file, ["bytes"] = written });
        else c.Output.Line($"{file}\t{written}", $"Wrote [green]{Markup.Escape(file)}[/] ({written:N0} bytes)");
    }
}
