using System.CommandLine;
using System.Text.Json.Nodes;
using OpenAI.Files;

namespace AdapterService.Cli;

/// <summary><c>files upload</c>, <c>files list</c>: OpenAI's files API through the SDK.</summary>
public static class FilesCommands
{
    public static Command Create(Runner run)
    {
        var path = new Argument<string>("path") { Description = "The file to upload (JSONL)" };
        var purpose = new Option<string>("--purpose") { Description = "The file's purpose", DefaultValueFactory = _ => "fine-tune" };
        var upload = new Command("upload", "Upload a training or validation file; prints its id") { path, purpose };
        upload.SetAction(run(async (c, cancel) =>
        {
            var file = await UploadAsync(c.Client, c.Get(path), c.Get(purpose), cancel);
            if (c.Output.Json) c.Output.WriteJson(file);
            else c.Output.Line(Output.Text(file["id"]),
                $"Uploaded [bold]{Spectre.Console.Markup.Escape(Output.Text(file["filename"]))}[/] ({Output.Text(file["bytes"])} bytes): [green]{Output.Text(file["id"])}[/]");
            return 0;
        }));

        var list = new Command("list", "List uploaded files, newest first");
        list.SetAction(run(async (c, cancel) =>
        {
            var result = await c.Client.OpenAI.GetOpenAIFileClient().GetFilesAsync(cancel);
            var files = JsonNode.Parse(result.GetRawResponse().Content.ToString())!;
            if (c.Output.Json) { c.Output.WriteJson(files); return 0; }
            c.Output.Table(["id", "filename", "bytes", "purpose", "created"], files["data"]!.AsArray().Select(f =>
                new[] { Output.Text(f!["id"]), Output.Text(f["filename"]), Output.Text(f["bytes"]), Output.Text(f["purpose"]), Output.Time(f["created_at"]) }));
            return 0;
        }));

        return new Command("files", "Upload and list files") { upload, list };
    }

    /// <summary>Uploads a local file with the SDK; answers the API's file object.</summary>
    public static async Task<JsonNode> UploadAsync(ServiceClient client, string path, string purpose, CancellationToken cancel)
    {
        if (Directory.Exists(path)) throw new CliException($"{path} is a folder, not a file");
        if (!File.Exists(path)) throw new CliException($"no such file: {path}");
        await using var stream = File.OpenRead(path);
        var result = await client.OpenAI.GetOpenAIFileClient().UploadFileAsync(stream, Path.GetFileName(path), new FileUploadPurpose(purpose), cancel);
        return JsonNode.Parse(result.GetRawResponse().Content.ToString())!;
    }
}
