using System.IO.Compression;
using System.Net.Http.Json;
using System.Text;

namespace AdapterService.Api.Tests;

[Collection(ServiceCollection.Name)]
public sealed class AdaptersApiTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    async Task<string> TrainAsync(string answer)
    {
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Favourite colour?", answer), 10));
        var job = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, seed = 9, hyperparameters = new { n_epochs = 9, batch_size = 2 } });
        return (string)(await Api.WaitForFinishAsync(client, (string)job["id"]!))["fine_tuned_model"]!;
    }

    static async Task<HttpResponseMessage> ImportAsync(HttpClient client, byte[] zip, string model = "tiny-llama-demo", string suffix = "imported")
    {
        using var form = new MultipartFormDataContent
        {
            { new ByteArrayContent(zip), "file", "adapter.zip" }, { new StringContent(model), "model" }, { new StringContent(suffix), "suffix" },
        };
        return await client.PostAsync("/v1/adapters/import", form);
    }

    [Fact]
    public async Task AnImportedTemplateMustParseAndSuitTheBasesTokenizer()
    {
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Favourite colour?", "Mauve"), 10));
        var job = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 } });
        var model = (string)(await Api.WaitForFinishAsync(client, (string)job["id"]!))["fine_tuned_model"]!;
        var list = await Api.JsonAsync(await client.GetAsync("/v1/adapters"));
        var id = (string)list["data"]!.AsArray().Single(a => (string?)a!["model"] == model)!["id"]!;
        var zip = await client.GetByteArrayAsync($"/v1/adapters/{id}/export");
        byte[] With(string name, string content)
        {
            var copy = new MemoryStream();
            copy.Write(zip);
            using (var archive = new ZipArchive(copy, ZipArchiveMode.Update, leaveOpen: true))
            {
                archive.GetEntry(name)!.Delete();
                using var writer = new StreamWriter(archive.CreateEntry(name).Open());
                writer.Write(content);
            }
            return copy.ToArray();
        }
        var broken = await Api.AssertErrorAsync(await ImportAsync(client, With("chat_template.jinja", "{% if %}")), 400, "file");
        Assert.Contains("chat_template.jinja", (string?)broken["message"]);
        var other = await Api.AssertErrorAsync(await ImportAsync(client, With("trained_with.json", """{"tokenizer_sha256": "00"}""")), 400, "file");
        Assert.Contains("another tokenizer", (string?)other["message"]);
    }

    [Fact]
    public async Task AnExportedAdapterImportsAndServesTheSameAnswers()
    {
        var model = await TrainAsync("Teal");
        var list = await Api.JsonAsync(await client.GetAsync("/v1/adapters"));
        var adapter = list["data"]!.AsArray().Single(a => (string?)a!["model"] == model)!;
        Assert.Equal("lora", (string?)adapter["method"]);
        Assert.Equal("tiny-llama-demo", (string?)adapter["base_model"]);
        Assert.True((long)adapter["parameter_count"]! > 0 && (long)adapter["size_bytes"]! > 0);
        Assert.Matches("^[0-9a-f]{64}$", (string)adapter["sha256"]!);
        var id = (string)adapter["id"]!;

        var zip = await client.GetByteArrayAsync($"/v1/adapters/{id}/export");
        using (var archive = new ZipArchive(new MemoryStream(zip)))
            // PEFT's two files, and the chat template it was trained with (the fine-tuned model chats with it after import too).
            Assert.Equal(["adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "trained_with.json"], archive.Entries.Select(e => e.FullName).Order());
        // As a llama.cpp GGUF LoRA adapter (its numbers are checked in llama.cpp by GgufExportTests).
        var gguf = await client.GetByteArrayAsync($"/v1/adapters/{id}/export?format=gguf");
        Assert.Equal("GGUF"u8.ToArray(), gguf[..4]);
        Assert.True(gguf.AsSpan().IndexOf("adapter.lora.alpha"u8) > 0 && gguf.AsSpan().IndexOf("blk.0.attn_q.weight.lora_a"u8) > 0);
        await Api.AssertErrorAsync(await client.GetAsync($"/v1/adapters/{id}/export?format=gguf&type=q4_0"), 400, "type");

        var imported = await Api.JsonAsync(await ImportAsync(client, zip));
        var importedModel = (string)imported["model"]!;
        Assert.StartsWith("ft:tiny-llama-demo:imported:adapter-", importedModel);
        Assert.Equal((long)adapter["parameter_count"]!, (long)imported["parameter_count"]!);
        Assert.Equal((string?)adapter["sha256"], (string?)imported["sha256"]);   // the same files, byte for byte
        Assert.Equal("Teal", await Api.ChatAsync(client, importedModel, "Favourite colour?"));

        var deleted = await Api.JsonAsync(await client.DeleteAsync($"/v1/models/{model}"));
        Assert.True((bool)deleted["deleted"]!);
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/chat/completions",
            new { model, messages = new[] { new { role = "user", content = "x" } } }), 404, "model");
        await Api.AssertErrorAsync(await client.GetAsync($"/v1/adapters/{id}"), 404, "id");
        Assert.False(Directory.Exists(Path.Combine(factory.DataDirectory, "blobs", "adapters", id)));
        Assert.Equal("Teal", await Api.ChatAsync(client, importedModel, "Favourite colour?"));   // the copy is independent
        await Api.AssertErrorAsync(await client.DeleteAsync("/v1/models/tiny-llama-demo"), 400, "model");
    }

    [Fact]
    public async Task BadAdapterZipsAreRefusedAndNothingIsStored()
    {
        int Adapters() => factory.Query(db => db.Adapters.Count());
        int before = Adapters();
        await Api.AssertErrorAsync(await ImportAsync(client, Encoding.UTF8.GetBytes("not a zip")), 400, "file");
        await Api.AssertErrorAsync(await ImportAsync(client, Zip(("adapter_config.json", "{}"))), 400, "file");
        await Api.AssertErrorAsync(await ImportAsync(client, Zip(("adapter_config.json", """{"peft_type": "LORA", "r": 8}"""),
            ("adapter_model.safetensors", "garbage"))), 400, "file");
        await Api.AssertErrorAsync(await ImportAsync(client, Zip(("../../adapter_config.json", "{}"), ("adapter_model.safetensors", ""))), 400, "file");
        await Api.AssertErrorAsync(await ImportAsync(client, Zip(("adapter_config.json", "{}")), model: "nope"), 404, "model");
        Assert.Equal(before, Adapters());
        Assert.Empty(Directory.GetFiles(Path.Combine(factory.DataDirectory, "blobs", "tmp"), "upload.zip", SearchOption.AllDirectories));
    }

    static byte[] Zip(params (string Name, string Content)[] entries)
    {
        var stream = new MemoryStream();
        using (var archive = new ZipArchive(stream, ZipArchiveMode.Create, leaveOpen: true))
            foreach (var (name, content) in entries)
                using (var writer = new StreamWriter(archive.CreateEntry(name).Open()))
                    writer.Write(content);
        return stream.ToArray();
    }
}
