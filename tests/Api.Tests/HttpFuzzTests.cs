using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>
/// Seeded fuzzing of the HTTP API in-process: mutated JSON bodies (bytes and structure), multipart bodies and query
/// strings on every writing endpoint. No answer may be a 5xx, and every 4xx must be OpenAI's error object.
/// </summary>
[Collection(SecuredServiceCollection.Name)]
public sealed class HttpFuzzTests(SecuredServiceFactory factory)
{
    const int Requests = 3200;

    [Fact]
    public async Task MutatedRequestsNeverGiveA5xxAndEveryRejectionIsAnErrorObject()
    {
        var (_, key) = await factory.NewProjectAsync("fuzz");
        var client = factory.ClientWithKey(key);
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Q?", "A."), 10));
        var jobId = (string)(await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 } }))["id"]!;
        await Api.WaitForFinishAsync(client, jobId);

        (string Path, string Json)[] bodies =
        [
            ("/v1/fine_tuning/jobs", $$"""
                {"model": "tiny-llama-demo", "training_file": "{{fileId}}", "validation_file": "{{fileId}}", "suffix": "fz", "seed": 1,
                 "hyperparameters": {"n_epochs": 1, "batch_size": "auto", "learning_rate_multiplier": 1.5, "early_stopping_patience": 1},
                 "adapter": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
                 "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1} } }, "metadata": {"k": "v"} }
                """),
            ("/v1/completions", """{"model": "tiny-llama-demo", "prompt": "Hi", "max_tokens": 2, "temperature": 0, "top_p": 1, "stop": ["\n"], "seed": 1, "n": 1}"""),
            ("/v1/completions", """{"model": "tiny-llama-demo", "prompt": ["Hi"], "max_tokens": 2, "stream": true}"""),
            ("/v1/completions", """
                {"model": "tiny-llama-demo", "prompt": "Hi", "max_tokens": 2, "n": 2, "logprobs": 1, "presence_penalty": 0.5, "frequency_penalty": -0.5,
                 "logit_bias": {"72": 3}, "stream": true, "stream_options": {"include_usage": true}}
                """),
            ("/v1/chat/completions", """
                {"model": "tiny-llama-demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "n": 2, "seed": 3,
                 "logprobs": true, "top_logprobs": 2, "logit_bias": {"72": -100}}
                """),
            ("/v1/chat/completions", """
                {"model": "tiny-llama-demo", "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "Hi"}],
                 "max_tokens": 2, "max_completion_tokens": 2, "temperature": 0.5, "stop": "\n", "stream": false}
                """),
            ("/v1/chat/completions", """
                {"model": "tiny-llama-demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                 "chat_template": "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{{ '<|' ~ m['role'] ~ '|>' ~ m.content | trim }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
                 "chat_template_kwargs": {"enable_thinking": false, "n": [1, 2]}, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
                """),
            ("/tokenize", """
                {"model": "tiny-llama-demo", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "A"}],
                 "add_generation_prompt": false, "continue_final_message": true, "add_special_tokens": false, "return_token_strs": true,
                 "chat_template": "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content }}{% endfor %}{{ ns.n }}"}
                """),
            ("/tokenize", """{"model": "tiny-llama-demo", "prompt": "Hi there", "add_special_tokens": true}"""),
            ("/detokenize", """{"model": "tiny-llama-demo", "tokens": [260, 72, 105, 256]}"""),
            ($"/v1/files/{fileId}/preview", """{"model": "tiny-llama-demo", "max_examples": 2, "chat_template": null}"""),
            ("/v1/completions/batch", """{"inputs": [{"model": "tiny-llama-demo", "prompt": "a", "max_tokens": 1}, {"model": "tiny-llama-demo", "prompt": "b", "max_tokens": 2}]}"""),
        ];
        string[] queries =
        [
            $"/v1/files?limit=2&order=asc&after={fileId}&purpose=fine-tune", $"/v1/files/{fileId}", $"/v1/fine_tuning/jobs?limit=3&metadata[k]=v&after={jobId}",
            $"/v1/fine_tuning/jobs/{jobId}/events?limit=5&after=ftevent-3", $"/v1/fine_tuning/jobs/{jobId}/checkpoints?limit=1&after=ftckpt-x",
            "/v1/models/tiny-llama-demo", "/v1/adapters?limit=1",
        ];
        var training = Encoding.UTF8.GetBytes(string.Join("\n", Enumerable.Repeat(Api.ChatLine("Q?", "A."), 10)));

        var mutator = new Mutator(42);
        var random = mutator.Random;
        var statuses = new Dictionary<int, int>();
        for (int i = 0; i < Requests; i++)
        {
            HttpRequestMessage request;
            switch (i % 10)
            {
                case < 6:
                    var (path, json) = bodies[random.Next(bodies.Length)];
                    var body = random.Next(2) == 0 ? mutator.Mutate(Encoding.UTF8.GetBytes(json)) : Encoding.UTF8.GetBytes(MutateStructure(json, random));
                    request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new ByteArrayContent(body) };
                    request.Content.Headers.ContentType = new MediaTypeHeaderValue(random.Next(20) == 0 ? "text/plain" : "application/json");
                    break;
                case < 8:
                    request = Multipart(mutator, random.Next(3) == 0 ? "/v1/adapters/import" : "/v1/files", training);
                    break;
                default:
                    // Paths stay under /v1/: the API's; other paths belong to the dashboard's static files.
                    var query = "/v1/" + mutator.MutateText(queries[random.Next(queries.Length)]["/v1/".Length..]);
                    if (!Uri.TryCreate(query, UriKind.Relative, out var uri) || query.Any(c => c is '#' or < ' ') || query.Contains("..")) uri = new Uri(queries[0], UriKind.Relative);
                    request = new HttpRequestMessage(random.Next(4) == 0 ? HttpMethod.Delete : HttpMethod.Get, uri);
                    break;
            }
            var description = $"request {i}: {request.Method} {request.RequestUri} {(request.Content is null ? "" : Convert.ToBase64String(await request.Content.ReadAsByteArrayAsync()))}";
            using var response = await client.SendAsync(request);
            var text = await response.Content.ReadAsStringAsync();
            int status = (int)response.StatusCode;
            statuses[status] = statuses.GetValueOrDefault(status) + 1;
            Assert.True(status < 500, $"{description}\nanswered {status}: {text}");
            if (status >= 400)
            {
                JsonNode? error = null;
                try { error = JsonNode.Parse(text)?["error"]; }
                catch (JsonException) { }
                Assert.True(error?["message"]?.GetValueKind() == JsonValueKind.String && ((string)error["message"]!).Length > 0
                    && error["type"]?.GetValueKind() == JsonValueKind.String, $"{description}\nanswered {status} without an error object: {text}");
            }
            else if (request.RequestUri!.ToString() == "/v1/fine_tuning/jobs" && request.Method == HttpMethod.Post)
                await client.PostAsync($"/v1/fine_tuning/jobs/{(string)JsonNode.Parse(text)!["id"]!}/cancel", null);   // keep the CPU for the fuzzing
        }
        // Both sides were reached: accepted requests and a range of rejections.
        Assert.True(statuses.GetValueOrDefault(200) > 100, string.Join(", ", statuses.Select(s => $"{s.Key}: {s.Value}")));
        Assert.True(statuses.Keys.Count(s => s >= 400) >= 3, string.Join(", ", statuses.Select(s => $"{s.Key}: {s.Value}")));
    }

    /// <summary>Replaces one value somewhere in the JSON with a random one (a type or range the endpoint does not expect).</summary>
    static string MutateStructure(string json, Random random)
    {
        var root = JsonNode.Parse(json)!;
        var nodes = new List<JsonNode>();
        void Walk(JsonNode? node)
        {
            if (node is null) return;
            nodes.Add(node);
            if (node is JsonObject o) foreach (var (_, child) in o) Walk(child);
            if (node is JsonArray a) foreach (var child in a) Walk(child);
        }
        Walk(root);
        var target = nodes[random.Next(1, nodes.Count)];
        var value = RandomValue(random, depth: 0);
        switch (target.Parent)
        {
            case JsonObject parent when random.Next(5) == 0: parent.Remove(target.GetPropertyName()); break;
            case JsonObject parent: parent[target.GetPropertyName()] = value; break;
            case JsonArray parent: parent[target.GetElementIndex()] = value; break;
        }
        return root.ToJsonString();
    }

    static JsonNode? RandomValue(Random random, int depth) => random.Next(depth > 2 ? 7 : 9) switch
    {
        0 => null,
        1 => JsonValue.Create(random.Next(2) == 0),
        2 => JsonValue.Create(new[] { 0, -1, 1, 2, 3, 255, 256, 1000, int.MaxValue, int.MinValue }[random.Next(10)]),
        3 => JsonValue.Create(new[] { 0.5, -0.0, 1e-300, 1e300, double.Epsilon, 2.5, 50.0000001 }[random.Next(7)]),
        4 => JsonValue.Create(new[] { "", "auto", "tiny-llama-demo", "ft:tiny-llama-demo:x:ftjob-x", "q_proj", ".*", "(a+)+$", "user", "lora", new string('x', 5000) }[random.Next(10)]),
        5 => JsonValue.Create(long.MaxValue),
        6 => JsonValue.Create("\u0000\uFFFF"),
        7 => new JsonArray(Enumerable.Range(0, random.Next(4)).Select(_ => RandomValue(random, depth + 1)).ToArray()),
        _ => new JsonObject(Enumerable.Range(0, random.Next(4)).Select(i => KeyValuePair.Create(
            new[] { "role", "content", "model", "type", "n_epochs", "x" }[random.Next(6)] + (i > 0 ? i.ToString() : ""), RandomValue(random, depth + 1)))),
    };

    /// <summary>A multipart upload whose body bytes (and sometimes boundary or content type) are mutated.</summary>
    static HttpRequestMessage Multipart(Mutator mutator, string path, byte[] training)
    {
        const string boundary = "fuzzboundary";
        var fields = path == "/v1/files"
            ? $"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            : $"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ntiny-llama-demo\r\n";
        var head = Encoding.UTF8.GetBytes(fields + $"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"../../x.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        var tail = Encoding.UTF8.GetBytes($"\r\n--{boundary}--\r\n");
        var random = mutator.Random;
        var content = random.Next(2) == 0 ? mutator.Mutate(training) : training;
        byte[] body = [.. head, .. content, .. tail];
        if (random.Next(2) == 0) body = mutator.Mutate(body);
        var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new ByteArrayContent(body) };
        request.Content.Headers.TryAddWithoutValidation("Content-Type", random.Next(8) == 0
            ? mutator.MutateText($"multipart/form-data; boundary={boundary}") : $"multipart/form-data; boundary={boundary}");
        return request;
    }
}
