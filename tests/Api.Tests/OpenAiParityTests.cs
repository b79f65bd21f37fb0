using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>OpenAI's logprobs, n, penalties, logit_bias and stream_options on chat, completions and the batch endpoint.</summary>
[Collection(ServiceCollection.Name)]
public sealed class OpenAiParityTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    static object[] Hello => [new { role = "user", content = "hello" }];

    static async Task<List<JsonNode>> EventsAsync(HttpResponseMessage response)
    {
        var events = (await response.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("data: [DONE]", events[^1]);
        return [.. events[..^1].Select(e => JsonNode.Parse(e["data: ".Length..])!)];
    }

    [Fact]
    public async Task ChatChoicesCarryOpenAisLogprobsAndUsageCountsThePromptOnce()
    {
        var one = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = "tiny-llama-demo", messages = Hello, max_tokens = 6, temperature = 0, logprobs = true, top_logprobs = 3 }));
        var many = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = "tiny-llama-demo", messages = Hello, max_tokens = 6, temperature = 1, seed = 9, n = 3, logprobs = true, top_logprobs = 3 }));
        var choices = many["choices"]!.AsArray();
        Assert.Equal([0, 1, 2], choices.Select(c => (int)c!["index"]!));
        int tokens = 0;
        foreach (var choice in choices.Append(one["choices"]![0]))
        {
            var content = choice!["logprobs"]!["content"]!.AsArray();
            tokens += content.Count;
            foreach (var t in content)
            {
                var top = t!["top_logprobs"]!.AsArray().Select(a => (double)a!["logprob"]!).ToList();
                Assert.Equal(3, top.Count);
                Assert.Equal(top.OrderDescending(), top);
                Assert.True((double)t["logprob"]! <= top[0] + 1e-6 && (double)t["logprob"]! < 0);
                var token = (string)t["token"]!;   // a lone byte of a multi-byte character reads U+FFFD; its bytes say which
                if (!token.Contains('\uFFFD')) Assert.Equal(System.Text.Encoding.UTF8.GetBytes(token).Select(b => (int)b), t["bytes"]!.AsArray().Select(b => (int)b!));
            }
        }
        foreach (var t in one["choices"]![0]!["logprobs"]!["content"]!.AsArray())   // greedy: the token is the top one
            Assert.Equal((double)t!["top_logprobs"]![0]!["logprob"]!, (double)t["logprob"]!);
        int prompt = (int)one["usage"]!["prompt_tokens"]!;
        Assert.Equal(prompt, (int)many["usage"]!["prompt_tokens"]!);
        Assert.Equal(tokens, (int)many["usage"]!["completion_tokens"]! + (int)one["usage"]!["completion_tokens"]!);
        Assert.True(choices.Select(c => (string?)c!["message"]!["content"]).Distinct().Count() > 1, "seeded choices differ");
        Assert.Null(one["choices"]![0]!["logprobs"]!["refusal"]);
        var plain = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions", new { model = "tiny-llama-demo", messages = Hello, max_tokens = 2 }));
        Assert.Null(plain["choices"]![0]!["logprobs"]);
    }

    [Fact]
    public async Task StreamedChoicesEqualTheWholeAnswersAndIncludeUsageEndsTheStream()
    {
        object Request(bool stream) => stream
            ? new { model = "tiny-llama-demo", messages = Hello, max_tokens = 8, temperature = 1, seed = 4, n = 2, logprobs = true, stream, stream_options = new { include_usage = true } }
            : new { model = "tiny-llama-demo", messages = Hello, max_tokens = 8, temperature = 1, seed = 4, n = 2, logprobs = true };
        var whole = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions", Request(false)));
        var chunks = await EventsAsync(await client.PostAsJsonAsync("/v1/chat/completions", Request(true)));
        for (int i = 0; i < 2; i++)
        {
            var mine = chunks[..^1].Select(c => c["choices"]![0]!).Where(c => (int)c["index"]! == i).ToList();
            Assert.Equal("assistant", (string?)mine[0]["delta"]!["role"]);
            Assert.Equal((string?)whole["choices"]![i]!["message"]!["content"], string.Concat(mine.Select(c => (string?)c["delta"]!["content"])));
            Assert.Equal(whole["choices"]![i]!["logprobs"]!["content"]!.ToJsonString(),
                new JsonArray([.. mine.SelectMany(c => c["logprobs"]?["content"]?.AsArray().Select(t => t!.DeepClone()) ?? [])]).ToJsonString());
            Assert.Equal((string?)whole["choices"]![i]!["finish_reason"], (string?)mine[^1]["finish_reason"]);
        }
        Assert.All(chunks[..^1], c => Assert.Null(c["usage"]));
        Assert.Empty(chunks[^1]["choices"]!.AsArray());
        Assert.Equal(whole["usage"]!.ToJsonString(), chunks[^1]["usage"]!.ToJsonString());
    }

    [Fact]
    public async Task CompletionLogprobsHaveTheLegacyShapeInAndOutOfStreaming()
    {
        object Request(bool stream) => new { model = "tiny-llama-demo", prompt = "abc", max_tokens = 7, temperature = 0.8, seed = 3, logprobs = 2, stream };
        var whole = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", Request(false)));
        var choice = whole["choices"]![0]!;
        var logprobs = choice["logprobs"]!;
        var tokens = logprobs["tokens"]!.AsArray().Select(t => (string)t!).ToList();
        Assert.Equal(7, tokens.Count);
        var offsets = logprobs["text_offset"]!.AsArray().Select(o => (int)o!).ToList();
        Assert.Equal(0, offsets[0]);
        Assert.Equal(offsets.Order(), offsets);
        var values = logprobs["token_logprobs"]!.AsArray().Select(v => (double)v!).ToList();
        for (int i = 0; i < tokens.Count; i++)
        {
            if (tokens[i].StartsWith("bytes:")) Assert.Matches(@"^bytes:(\\x[0-9a-f]{2})+$", tokens[i]);   // a piece of a character, by its bytes
            else Assert.DoesNotContain('\uFFFD', tokens[i]);
            var top = logprobs["top_logprobs"]![i]!.AsObject();
            Assert.InRange(top.Count, 2, 3);   // the 2 most likely, and the sampled token when it is not among them
            Assert.Equal(values[i], (double)top[tokens[i]]!);
        }
        var chunks = await EventsAsync(await client.PostAsJsonAsync("/v1/completions", Request(true)));
        var streamed = chunks.Select(c => c["choices"]![0]!["logprobs"]).Where(l => l is not null).ToList();
        Assert.Equal(tokens, streamed.SelectMany(l => l!["tokens"]!.AsArray().Select(t => (string)t!)));
        Assert.Equal(logprobs["text_offset"]!.ToJsonString(), new JsonArray([.. streamed.SelectMany(l => l!["text_offset"]!.AsArray().Select(o => o!.DeepClone()))]).ToJsonString());
        Assert.Equal(7, (int)chunks[^1]["usage"]!["completion_tokens"]!);   // without include_usage: on the last finish, as before
    }

    [Fact]
    public async Task LogitBiasAndPenaltiesSteerTheTokensAndTheBatchEndpointHonoursTheOptions()
    {
        var forced = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions",
            new { model = "tiny-llama-demo", prompt = "abc", max_tokens = 5, temperature = 0, logit_bias = new Dictionary<string, int> { ["120"] = 100 } }));
        Assert.Equal("xxxxx", (string?)forced["choices"]![0]!["text"]);
        // A strong frequency penalty forbids repeating a token the forcing bias no longer outweighs.
        var penalised = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions",
            new { model = "tiny-llama-demo", prompt = "abc", max_tokens = 4, temperature = 0, frequency_penalty = 2, presence_penalty = 2, logit_bias = new Dictionary<string, int> { ["120"] = 7, ["121"] = 6 } }));
        var text = (string)penalised["choices"]![0]!["text"]!;
        Assert.StartsWith("xy", text);

        var batch = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions/batch", new
        {
            inputs = new object[]
            {
                new { model = "tiny-llama-demo", prompt = "a", max_tokens = 3, temperature = 0.9, seed = 1, n = 3, logprobs = 1 },
                new { model = "tiny-llama-demo", prompt = "b", max_tokens = 2, temperature = 0, logit_bias = new Dictionary<string, int> { ["122"] = 100 } },
            },
        }));
        var first = batch["data"]![0]!;
        Assert.Equal(3, first["choices"]!.AsArray().Count);
        Assert.All(first["choices"]!.AsArray(), c => Assert.Equal(3, c!["logprobs"]!["tokens"]!.AsArray().Count));
        Assert.Equal(9, (int)first["usage"]!["completion_tokens"]!);
        Assert.Equal("zz", (string?)batch["data"]![1]!["choices"]![0]!["text"]);
    }

    [Fact]
    public async Task OutOfRangeOptionsAreRefusedNamingTheField()
    {
        async Task Refused(string path, object body, string param) =>
            await Api.AssertErrorAsync(await client.PostAsJsonAsync(path, body), 400, param);
        const string chat = "/v1/chat/completions", completions = "/v1/completions";
        await Refused(chat, new { model = "tiny-llama-demo", messages = Hello, n = 9 }, "n");
        await Refused(completions, new { model = "tiny-llama-demo", prompt = "a", n = 0 }, "n");
        await Refused(chat, new { model = "tiny-llama-demo", messages = Hello, logprobs = true, top_logprobs = 21 }, "top_logprobs");
        await Refused(chat, new { model = "tiny-llama-demo", messages = Hello, top_logprobs = 2 }, "top_logprobs");
        await Refused(completions, new { model = "tiny-llama-demo", prompt = "a", logprobs = 6 }, "logprobs");
        await Refused(chat, new { model = "tiny-llama-demo", messages = Hello, presence_penalty = 2.5 }, "presence_penalty");
        await Refused(completions, new { model = "tiny-llama-demo", prompt = "a", frequency_penalty = -3 }, "frequency_penalty");
        await Refused(chat, new { model = "tiny-llama-demo", messages = Hello, stream_options = new { include_usage = true } }, "stream_options");
        await Refused(completions, new { model = "tiny-llama-demo", prompt = "a", logit_bias = new Dictionary<string, int> { ["5"] = 101 } }, "logit_bias");
        await Refused(completions, new { model = "tiny-llama-demo", prompt = "a", logit_bias = new[] { 1 } }, "logit_bias");
        var error = await Api.AssertErrorAsync(await client.PostAsJsonAsync(chat,
            new { model = "tiny-llama-demo", messages = Hello, logit_bias = new Dictionary<string, int> { ["99999"] = 1 } }), 400, "logit_bias");
        Assert.Contains("99999", (string?)error["message"]);
        error = await Api.AssertErrorAsync(await client.PostAsJsonAsync(chat,
            new { model = "tiny-llama-demo", messages = Hello, logit_bias = new Dictionary<string, int> { ["hello"] = 1 } }), 400, "logit_bias");
        Assert.Contains("'hello'", (string?)error["message"]);
        await Refused("/v1/completions/batch", new { inputs = new[] { new { model = "tiny-llama-demo", prompt = "a", n = 12 } } }, "inputs[0].n");
    }
}
