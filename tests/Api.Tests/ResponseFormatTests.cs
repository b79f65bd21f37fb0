using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary><c>response_format</c> on chat completions (and, as our extension, completions and their batch): json_schema and json_object outputs parse and fit; max_tokens cuts with "length"; bad formats are 400s naming the keyword.</summary>
[Collection(ServiceCollection.Name)]
public sealed class ResponseFormatTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    static readonly JsonObject Schema = JsonNode.Parse("""
        {"type":"object","properties":{
          "city":{"type":"string","maxLength":8},
          "rank":{"type":"integer"},
          "mood":{"enum":["calm","busy",null]},
          "tags":{"type":"array","items":{"type":"boolean"},"maxItems":3}
        },"required":["city","rank","mood","tags"],"additionalProperties":false}
        """)!.AsObject();

    object Chat(object responseFormat, int seed, int maxTokens = 80, bool stream = false) => new
    {
        model = "tiny-llama-demo", temperature = 1.0, seed, max_tokens = maxTokens, stream, response_format = responseFormat,
        messages = new[] { new { role = "user", content = $"Describe city number {seed} as JSON." } },
    };

    static object JsonSchema(JsonObject schema) => new { type = "json_schema", json_schema = new { name = "city", strict = true, schema } };

    [Fact]
    public async Task JsonSchemaOutputsParseAndFitTheSchemaForManyPrompts()
    {
        int finished = 0;
        var cut = new List<string>();
        for (int seed = 0; seed < 4; seed++)
        {
            var body = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions", Chat(JsonSchema(Schema), seed, maxTokens: 160)));
            var choice = body["choices"]![0]!;
            string text = (string)choice["message"]!["content"]!;
            if ((string?)choice["finish_reason"] == "length") { cut.Add(text); continue; }
            Assert.Equal("stop", (string?)choice["finish_reason"]);
            finished++;
            var value = JsonNode.Parse(text)!.AsObject();
            Assert.Equal(["city", "rank", "mood", "tags"], value.Select(p => p.Key));
            Assert.InRange(((string)value["city"]!).EnumerateRunes().Count(), 0, 8);
            Assert.Equal(JsonValueKind.Number, value["rank"]!.GetValueKind());
            Assert.DoesNotContain('.', value["rank"]!.ToJsonString());
            Assert.Contains(value["mood"]?.ToJsonString() ?? "null", new[] { "\"calm\"", "\"busy\"", "null" });
            Assert.All(value["tags"]!.AsArray(), t => Assert.True(t!.GetValueKind() is JsonValueKind.True or JsonValueKind.False));
            Assert.InRange(value["tags"]!.AsArray().Count, 0, 3);
        }
        Assert.True(finished >= 3, $"{finished} of 4 finished within 160 tokens: {string.Join(" / ", cut)}");
    }

    [Fact]
    public async Task JsonObjectStreamsAnObjectAndMaxTokensCutsWithLength()
    {
        var response = await client.PostAsJsonAsync("/v1/chat/completions", Chat(new { type = "json_object" }, 3, maxTokens: 200, stream: true));
        var events = (await response.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        var chunks = events[..^1].Select(e => JsonNode.Parse(e["data: ".Length..])!).ToList();
        var text = string.Concat(chunks.Select(c => (string?)c["choices"]![0]!["delta"]!["content"]));
        string finish = (string)chunks[^1]["choices"]![0]!["finish_reason"]!;
        Assert.StartsWith("{", text);
        if (finish == "stop") Assert.Equal(JsonValueKind.Object, JsonNode.Parse(text)!.GetValueKind());

        var cut = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions", Chat(JsonSchema(Schema), 1, maxTokens: 5)));
        Assert.Equal("length", (string?)cut["choices"]![0]!["finish_reason"]);
        Assert.StartsWith("{", (string?)cut["choices"]![0]!["message"]!["content"]);
        Assert.ThrowsAny<JsonException>(() => JsonDocument.Parse((string)cut["choices"]![0]!["message"]!["content"]!));

        var text2 = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions", Chat(new { type = "text" }, 1, maxTokens: 3)));
        Assert.Equal(3, (int)text2["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task EachOfNChoicesIsConstrained()
    {
        var schema = JsonNode.Parse("""{"type":"object","properties":{"a":{"enum":["x","yy"]},"b":{"type":"boolean"}},"required":["a","b"]}""")!.AsObject();
        var body = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions", new
        {
            model = "tiny-llama-demo", temperature = 1.0, seed = 9, n = 3, max_tokens = 40, logprobs = true, response_format = JsonSchema(schema),
            messages = new[] { new { role = "user", content = "Pick one." } },
        }));
        var choices = body["choices"]!.AsArray();
        Assert.Equal(3, choices.Count);
        foreach (var choice in choices)
        {
            Assert.Equal("stop", (string?)choice!["finish_reason"]);
            var value = JsonNode.Parse((string)choice["message"]!["content"]!)!.AsObject();
            Assert.Contains((string)value["a"]!, new[] { "x", "yy" });
            Assert.True(value["b"]!.GetValueKind() is JsonValueKind.True or JsonValueKind.False);
            // logprobs stay the raw model's: a forced token (the opening brace) need not be the model's likely one
            Assert.Equal("{", (string?)choice["logprobs"]!["content"]![0]!["token"]);
        }
    }

    [Fact]
    public async Task CompletionsAndTheirBatchAreConstrainedToo()
    {
        var schema = JsonNode.Parse("""{"type":"object","properties":{"n":{"type":"integer"},"ok":{"type":"boolean"}},"required":["n","ok"],"additionalProperties":false}""")!.AsObject();
        static void Fits(JsonNode choice)
        {
            Assert.Equal("stop", (string?)choice["finish_reason"]);
            var value = JsonNode.Parse((string)choice["text"]!)!.AsObject();
            Assert.Equal(["n", "ok"], value.Select(p => p.Key));
            Assert.Equal(JsonValueKind.Number, value["n"]!.GetValueKind());
            Assert.True(value["ok"]!.GetValueKind() is JsonValueKind.True or JsonValueKind.False);
        }
        object Input(int seed, object? format) => new
        {
            model = "tiny-llama-demo", prompt = $"Record {seed}:", temperature = 1.0, seed, max_tokens = 60, response_format = format,
        };
        var single = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", Input(1, JsonSchema(schema))));
        Fits(single["choices"]![0]!);

        // A batch mixes constrained and free inputs; a bad format is named by its input.
        var batch = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions/batch",
            new { inputs = new[] { Input(2, JsonSchema(schema)), Input(3, null), Input(4, JsonSchema(schema)) } }));
        var data = batch["data"]!.AsArray();
        Fits(data[0]!["choices"]![0]!);
        Fits(data[2]!["choices"]![0]!);
        var bad = await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/completions/batch",
            new { inputs = new[] { Input(2, null), Input(3, new { type = "xml" }) } }), 400, "inputs[1].response_format");
        Assert.Contains("'xml'", (string)bad["message"]!);
    }

    [Theory]
    [InlineData("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"string","pattern":"a+"}}}""", "'pattern'")]
    [InlineData("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":"number","minimum":1}}}}}""", "schema.properties.a: the keyword 'minimum'")]
    [InlineData("""{"type":"json_schema","json_schema":{"name":"x","schema":{"$ref":"#/$defs/nope"}}}""", "#/$defs/nope")]
    [InlineData("""{"type":"json_schema","json_schema":{"schema":{"type":"object"}}}""", "name")]
    [InlineData("""{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"},"strict":"yes"}}""", "strict")]
    [InlineData("""{"type":"json_schema"}""", "json_schema")]
    [InlineData("""{"type":"xml"}""", "'xml'")]
    [InlineData("""{"type":"json_object","extra":1}""", "'extra'")]
    [InlineData("\"json\"", "type")]
    public async Task UnsupportedFormatsAreRefusedNamingTheKeyword(string format, string named)
    {
        var request = JsonNode.Parse("""{"model":"tiny-llama-demo","messages":[{"role":"user","content":"hi"}]}""")!.AsObject();
        request["response_format"] = JsonNode.Parse(format);
        var error = await Api.AssertErrorAsync(await client.PostAsync("/v1/chat/completions",
            new StringContent(request.ToJsonString(), System.Text.Encoding.UTF8, "application/json")), 400, "response_format");
        Assert.Contains(named, (string)error["message"]!);
    }
}
