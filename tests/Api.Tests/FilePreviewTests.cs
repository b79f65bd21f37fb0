using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>POST /v1/files/{id}/preview: a file seen through a base model's chat template and context before a job starts.</summary>
[Collection(ServiceCollection.Name)]
public sealed class FilePreviewTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    static Task<HttpResponseMessage> PreviewAsync(HttpClient client, string fileId, object request) =>
        client.PostAsJsonAsync($"/v1/files/{fileId}/preview", request);

    [Fact]
    public async Task AChatFileIsRenderedWithTheTemplateItsTrainedTokensMarkedAndItsTokensCounted()
    {
        // tiny-llama-demo: a context of 512 tokens; the last example is far longer.
        var lines = new List<string>
        {
            Api.ChatLine("What color is the sky?", "Blue."), Api.ChatLine("What color is grass?", "Green."),
            Api.ChatLine("What color is snow?", "White."), Api.ChatLine("Tell me a long story.", new string('a', 700)),
        };
        var fileId = await Api.UploadFileAsync(client, lines);
        var preview = await Api.JsonAsync(await PreviewAsync(client, fileId, new { model = "tiny-llama-demo", max_examples = 2 }));

        Assert.Equal("file.preview", (string?)preview["object"]);
        Assert.Equal("chat", (string?)preview["format"]);
        Assert.Equal(4, (int)preview["examples"]!);
        Assert.Equal(512, (int)preview["context_length"]!);
        var data = preview["data"]!.AsArray();
        Assert.Equal([1, 2], data.Select(e => (int)e!["line"]!));
        var first = data[0]!["sequences"]!.AsArray().Single()!;
        var segments = first["segments"]!.AsArray();
        // The template's rendering, as /tokenize renders the same chat; only the answer (and its end) is trained on.
        string whole = string.Concat(segments.Select(s => (string)s!["text"]!));
        var tokenized = await Api.JsonAsync(await client.PostAsJsonAsync("/tokenize", new
        {
            model = "tiny-llama-demo", add_generation_prompt = false,
            messages = new[] { new { role = "user", content = "What color is the sky?" }, new { role = "assistant", content = "Blue." } },
        }));
        Assert.Equal((int)tokenized["count"]!, (int)first["tokens"]!);
        Assert.Contains("What color is the sky?", whole);
        var trained = string.Concat(segments.Where(s => (bool)s!["trained"]!).Select(s => (string)s!["text"]!));
        Assert.StartsWith("Blue.", trained);
        Assert.DoesNotContain("sky", trained);
        Assert.InRange((int)first["trained_tokens"]!, 1, (int)first["tokens"]! / 2);
        Assert.False((bool)first["truncated"]!);

        var counts = preview["token_counts"]!;
        Assert.Equal(4, (int)counts["counted"]!);
        Assert.True((int)counts["max"]! > 700 && (int)counts["min"]! < 100, counts.ToJsonString());
        var bins = counts["histogram"]!.AsArray();
        Assert.Equal(4, bins.Sum(b => (int)b!["count"]!));
        Assert.True(bins.Count <= 10 && (int)bins[0]!["from"]! == 0 && (int)bins[^1]!["to"]! >= (int)counts["max"]!);
        Assert.Equal(1, (int)preview["truncated"]!);
        Assert.Equal([4], preview["truncated_lines"]!.AsArray().Select(l => (int)l!));
        Assert.Null(preview["label_counts"]);
    }

    [Fact]
    public async Task APromptCompletionFileTrainsOnItsCompletionAndBadRequestsNameTheirField()
    {
        var fileId = await Api.UploadFileAsync(client, Enumerable.Range(0, 3).Select(i =>
            JsonSerializer.Serialize(new { prompt = $"Count {i}:", completion = " one two" })));
        var preview = await Api.JsonAsync(await PreviewAsync(client, fileId, new { model = "tiny-llama-demo" }));
        Assert.Equal("prompt_completion", (string?)preview["format"]);
        Assert.Equal(3, preview["data"]!.AsArray().Count);
        var segments = preview["data"]![0]!["sequences"]![0]!["segments"]!.AsArray();
        Assert.Contains("Count 0:", string.Concat(segments.Where(s => !(bool)s!["trained"]!).Select(s => (string)s!["text"]!)));
        Assert.StartsWith(" one two", string.Concat(segments.Where(s => (bool)s!["trained"]!).Select(s => (string)s!["text"]!)));
        Assert.Equal(0, (int)preview["truncated"]!);

        await Api.AssertErrorAsync(await PreviewAsync(client, "file-nope", new { model = "tiny-llama-demo" }), 404, "id");
        await Api.AssertErrorAsync(await PreviewAsync(client, fileId, new { model = "no-such-model" }), 404, "model");
        await Api.AssertErrorAsync(await PreviewAsync(client, fileId, new { }), 400, "model");
        await Api.AssertErrorAsync(await PreviewAsync(client, fileId, new { model = "tiny-llama-demo", max_examples = 21 }), 400, "max_examples");
        await Api.AssertErrorAsync(await PreviewAsync(client, fileId, new { model = "tiny-llama-demo", max_examples = 0 }), 400, "max_examples");
        var chat = await Api.UploadFileAsync(client, [Api.ChatLine("a", "b")]);
        await Api.AssertErrorAsync(await PreviewAsync(client, chat, new { model = "tiny-llama-demo", chat_template = "{% if %}" }), 400, "chat_template");
    }
}
