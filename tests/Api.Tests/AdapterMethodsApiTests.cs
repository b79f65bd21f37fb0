using System.Net.Http.Json;

namespace AdapterService.Api.Tests;

/// <summary>Every adapter method trains through the API on the built-in LM, reports its statistics and serves.</summary>
[Collection(ServiceCollection.Name)]
public sealed class AdapterMethodsApiTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    [Theory]
    [InlineData("dora")]
    [InlineData("lily")]
    [InlineData("rlrr")]
    [InlineData("mixlora")]
    public async Task MethodTrainsLowersTheLossAndServesWhatItLearned(string method)
    {
        var lines = Enumerable.Repeat(new[] { ("What color is the sky?", "Blue"), ("What is 2+2?", "Four") }, 5)
            .SelectMany(p => p).Select(p => Api.ChatLine(p.Item1, p.Item2));
        var fileId = await Api.UploadFileAsync(client, lines);
        var created = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = fileId, suffix = method, seed = 7,
            hyperparameters = new { n_epochs = 12, batch_size = 2 },
            adapter = new { type = method },
        });
        Assert.Equal(method, (string?)created["adapter"]!["type"]);
        var job = await Api.WaitForFinishAsync(client, (string)created["id"]!);
        Assert.Equal("succeeded", (string?)job["status"]);
        var model = (string)job["fine_tuned_model"]!;

        var events = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{job["id"]}/events?limit=1000"));
        var metrics = events["data"]!.AsArray().Where(e => (string?)e!["type"] == "metrics").Reverse().Select(e => e!["data"]!).ToList();
        double first = (double)metrics[0]["train_loss"]!, last = metrics.TakeLast(5).Average(m => (double)m["train_loss"]!);
        Assert.True(last < first / 4, $"{method}: training loss went from {first} to {last}");
        if (method == "lily")
        {
            // Lily reports each layer's router weights over its module type's experts: 4 experts summing to 1.
            var routers = metrics[^1]["adapter"]!["lily_router_weights"]!.AsObject();
            Assert.Contains("model.layers.0.self_attn.q_proj", routers.Select(r => r.Key));
            Assert.All(routers, r => Assert.Equal(1.0, r.Value!.AsArray().Sum(w => (double)w!), 3));
        }

        if (method == "mixlora")
        {
            // MixLoRA reports each block's expert load: the share of routed token slots per expert, summing to 1.
            var loads = metrics[^1]["adapter"]!["mixlora_expert_load"]!.AsObject();
            Assert.Equal(["model.layers.0.mlp", "model.layers.1.mlp", "model.layers.2.mlp", "model.layers.3.mlp"], loads.Select(l => l.Key));
            Assert.All(loads, l => Assert.Equal(1.0, l.Value!.AsArray().Sum(w => (double)w!), 3));
        }

        var adapter = factory.Query(db => db.Adapters.Single(a => a.Name == model));
        Assert.Equal(method, adapter.Method);
        Assert.Equal("Blue", await Api.ChatAsync(client, model, "What color is the sky?"));
        Assert.Equal("Four", await Api.ChatAsync(client, model, "What is 2+2?"));
    }

    [Fact]
    public async Task UnknownMethodsAndOptionsOutOfRangeAreRejected()
    {
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Hi", "Hello"), 10));
        foreach (var (adapter, param) in new (object, string)[]
        {
            (new { type = "mixture" }, "adapter.type"),
            (new { type = "lily", num_experts = 0 }, "adapter.num_experts"),
            (new { type = "lily", router_mean = "token" }, "adapter.router_mean"),
            (new { type = "rlrr", rank = 65 }, "adapter.rank"),
            (new { type = "mixlora", num_experts = 4, top_k = 5 }, "adapter.top_k"),
            (new { type = "mixlora", target_modules = new[] { "up_proj" } }, "adapter.target_modules"),
        })
            await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/fine_tuning/jobs",
                new { model = "tiny-llama-demo", training_file = fileId, adapter }), 400, param);
    }
}
