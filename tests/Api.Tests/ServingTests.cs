using System.IO.Compression;
using System.Net;
using System.Net.Http.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Api.Tests;

/// <summary>Many adapters served at once from one base model, through HTTP.</summary>
[Collection(ServiceCollection.Name)]
public sealed class ServingTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    /// <summary>Imports <paramref name="count"/> LoRA adapters with random weights (different ranks and targets); returns their model names.</summary>
    async Task<List<string>> ImportRandomAdaptersAsync(int count)
    {
        var names = new List<string>();
        using var model = ModelFolder.Load(Path.Combine(factory.DataDirectory, "blobs", "models", "tiny-llama-demo"));
        for (int i = 0; i < count; i++)
        {
            var folder = Directory.CreateTempSubdirectory("random-adapter-").FullName;
            try
            {
                string[] targets = (i % 3) switch { 0 => ["all-linear"], 1 => ["q_proj", "v_proj"], _ => ["down_proj", "o_proj"] };
                using (var scope = NewDisposeScope())
                using (var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 4 + i % 3 * 4, Alpha = 16, TargetModules = targets }, seed: i))
                {
                    using var g = new Generator((ulong)(1000 + i));
                    using (no_grad()) foreach (var p in adapter.Parameters()) p.normal_(0, 0.3, g);
                    adapter.Save(folder);
                }
                var zip = Path.Combine(folder, "adapter.zip");
                using (var archive = ZipFile.Open(zip, ZipArchiveMode.Create))
                    foreach (var file in new[] { "adapter_config.json", "adapter_model.safetensors" })
                        archive.CreateEntryFromFile(Path.Combine(folder, file), file);
                using var form = new MultipartFormDataContent
                {
                    { new ByteArrayContent(await File.ReadAllBytesAsync(zip)), "file", "adapter.zip" },
                    { new StringContent("tiny-llama-demo"), "model" }, { new StringContent($"random{i}"), "suffix" },
                };
                var imported = await Api.JsonAsync(await client.PostAsync("/v1/adapters/import", form));
                names.Add((string)imported["model"]!);
            }
            finally
            {
                Directory.Delete(folder, recursive: true);
            }
        }
        return names;
    }

    static string Prompt(int i) => $"Request {i % 4}: tell me something.";

    [Fact]
    public async Task SixtyFourConcurrentRequestsOverSixteenAdaptersEachGetTheirOwnAdaptersOutput()
    {
        var adapters = await ImportRandomAdaptersAsync(16);
        string Model(int i) => i % 17 == 16 ? "tiny-llama-demo" : adapters[i % 17 % 16];

        var alone = new string[64];
        for (int i = 0; i < 64; i++) alone[i] = await Api.ChatAsync(client, Model(i), Prompt(i), maxTokens: 10);
        var together = await Task.WhenAll(Enumerable.Range(0, 64).Select(i => Api.ChatAsync(client, Model(i), Prompt(i), maxTokens: 10)));

        Assert.Equal(alone, together);
        Assert.True(alone.Take(16).Distinct().Count() >= 12, "the random adapters should mostly answer differently");
    }

    [Fact]
    public async Task TheBatchEndpointAnswersEveryInputWithItsOwnModelInOrder()
    {
        var adapters = await ImportRandomAdaptersAsync(3);
        var models = adapters.Append("tiny-llama-demo").ToList();
        var inputs = models.Select((m, i) => new { model = m, prompt = Prompt(i), max_tokens = 8, temperature = 0 }).ToList();

        var batch = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions/batch", new { inputs }));
        var data = batch["data"]!.AsArray();
        Assert.Equal(models, data.Select(d => (string)d!["model"]!));
        for (int i = 0; i < models.Count; i++)
        {
            var single = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", inputs[i]));
            Assert.Equal((string?)single["choices"]![0]!["text"], (string?)data[i]!["choices"]![0]!["text"]);
        }

        var bad = new object[] { inputs[0], new { model = "nope", prompt = "x" } };
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/completions/batch", new { inputs = bad }), 404, "inputs[1].model");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/completions/batch", new { inputs = Array.Empty<object>() }), 400, "inputs");
    }

    /// <summary>
    /// A prompt sent again is served from the prefix cache (chat and completions, streamed usage too): the usage reports
    /// the reused prompt tokens as OpenAI does, in usage.prompt_tokens_details.cached_tokens, and the answer is the same.
    /// </summary>
    [Fact]
    public async Task ARepeatedPromptReportsItsCachedTokens()
    {
        string system = string.Concat(Enumerable.Repeat("Every request starts with this same long system prompt. ", 5));
        object[] bodies =
        [
            new { model = "tiny-llama-demo", prompt = system + "Go on:", max_tokens = 4, temperature = 0 },
            new { model = "tiny-llama-demo", messages = new[] { new { role = "system", content = system }, new { role = "user", content = "Hi" } }, max_tokens = 4, temperature = 0 },
        ];
        foreach (var (path, body) in new[] { "/v1/completions", "/v1/chat/completions" }.Zip(bodies))
        {
            var first = await Api.JsonAsync(await client.PostAsJsonAsync(path, body));
            var second = await Api.JsonAsync(await client.PostAsJsonAsync(path, body));
            int prompt = (int)second["usage"]!["prompt_tokens"]!, cached = (int)second["usage"]!["prompt_tokens_details"]!["cached_tokens"]!;
            Assert.True(cached >= 16 && cached < prompt, $"{cached} of {prompt} prompt tokens cached");
            Assert.Equal(0, (int)first["usage"]!["prompt_tokens_details"]!["cached_tokens"]!);
            Assert.Equal(first["choices"]!.ToJsonString(), second["choices"]!.ToJsonString());
        }
    }
}
