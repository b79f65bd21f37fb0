using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

[Collection(ServiceCollection.Name)]
public sealed class CompletionsTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    [Fact]
    public async Task CompletionHasOpenAiShapeAndHonoursMaxTokens()
    {
        var body = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-demo", prompt = "Once", max_tokens = 5, temperature = 0 }));
        Assert.Equal("text_completion", (string?)body["object"]);
        Assert.StartsWith("cmpl-", (string?)body["id"]);
        Assert.Equal("tiny-llama-demo", (string?)body["model"]);
        var usage = body["usage"]!;
        Assert.Equal(5, (int)usage["prompt_tokens"]!);   // <|begin|> + 4 bytes
        Assert.Equal(5, (int)usage["completion_tokens"]!);
        Assert.Equal("length", (string?)body["choices"]![0]!["finish_reason"]);
    }

    [Fact]
    public async Task SeededSamplingIsReproducibleAndStreamingMatchesTheWholeAnswer()
    {
        object Request(bool stream) => new { model = "tiny-llama-demo", prompt = "abc", max_tokens = 12, temperature = 0.9, top_p = 0.9, seed = 42, stream };
        var whole = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", Request(false)));
        var again = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", Request(false)));
        var text = (string)whole["choices"]![0]!["text"]!;
        Assert.Equal(text, (string?)again["choices"]![0]!["text"]);

        var response = await client.PostAsJsonAsync("/v1/completions", Request(true));
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var events = (await response.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.All(events, e => Assert.StartsWith("data: ", e));
        Assert.Equal("data: [DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonNode.Parse(e["data: ".Length..])!).ToList();
        Assert.All(chunks, c => Assert.Equal("text_completion", (string?)c["object"]));
        Assert.Equal(text, string.Concat(chunks.Select(c => (string?)c["choices"]![0]!["text"])));
        Assert.Equal("length", (string?)chunks[^1]["choices"]![0]!["finish_reason"]);
        Assert.Equal(12, (int)chunks[^1]["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task ChatStreamsDeltasAndStopSequencesCutTheText()
    {
        var whole = await Api.ChatAsync(client, "tiny-llama-demo", "hello", maxTokens: 30);
        var cut = whole.Length > 4 ? whole.Substring(3, 2) : null;
        var response = await client.PostAsJsonAsync("/v1/chat/completions", new
        {
            model = "tiny-llama-demo", temperature = 0, max_tokens = 30, stream = true, stop = cut,
            messages = new[] { new { role = "user", content = "hello" } },
        });
        var events = (await response.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("data: [DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonNode.Parse(e["data: ".Length..])!).ToList();
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", (string?)c["object"]));
        Assert.Equal("assistant", (string?)chunks[0]["choices"]![0]!["delta"]!["role"]);
        var text = string.Concat(chunks.Select(c => (string?)c["choices"]![0]!["delta"]!["content"]));
        if (cut is null) return;
        Assert.Equal(whole[..whole.IndexOf(cut, StringComparison.Ordinal)], text);
        Assert.Equal("stop", (string?)chunks[^1]["choices"]![0]!["finish_reason"]);
    }

    [Fact]
    public async Task SwaggerDocumentsEveryEndpoint()
    {
        Assert.True((await client.GetAsync("/swagger/index.html")).IsSuccessStatusCode);
        var doc = JsonNode.Parse(await client.GetStringAsync("/swagger/v1/swagger.json"))!;
        var paths = doc["paths"]!.AsObject().Select(p => p.Key).ToList();
        foreach (var path in new[] { "/v1/files", "/v1/files/{fileId}", "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/{jobId}",
                     "/v1/fine_tuning/jobs/{jobId}/cancel", "/v1/fine_tuning/jobs/{jobId}/events", "/v1/completions", "/v1/chat/completions", "/v1/models" })
            Assert.Contains(path, paths);
        Assert.NotNull(doc["components"]!["schemas"]!["FineTuningJobDto"]!["properties"]!["fine_tuned_model"]);
        Assert.NotNull(doc["paths"]!["/v1/fine_tuning/jobs"]!["post"]!["responses"]!["400"]);   // error object documented
        Assert.Equal("tiny-llama-demo", (string?)doc["components"]!["schemas"]!["CreateFineTuningJobRequest"]!["properties"]!["model"]!["example"]);
    }
}
