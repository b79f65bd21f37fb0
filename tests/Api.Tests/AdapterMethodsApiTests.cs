using System.IO.Compression;
using System.Net.Http.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Api.Tests;

/// <summary>Every adapter method trains through the API on the built-in LM, reports its statistics and serves.</summary>
[Collection(ServiceCollection.Name)]
public sealed class AdapterMethodsApiTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    /// <summary>Every registered method but LoRA, the default, which the fine-tuning loop and combination tests train through the API.</summary>
    public static TheoryData<string> Methods => new(AdapterMethods.Names.Where(n => n != "lora"));

    [Theory, MemberData(nameof(Methods))]
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
        Api.AssertSucceeded(job);
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

        // Export and import again: the same files, the same parameter count, the same answers.
        var zip = await client.GetByteArrayAsync($"/v1/adapters/{adapter.Id}/export");
        var imported = await Api.JsonAsync(await ImportAsync(zip, method));
        Assert.Equal(adapter.ParameterCount, (long)imported["parameter_count"]!);
        Assert.Equal(method, (string?)imported["method"]);
        Assert.Equal("Blue", await Api.ChatAsync(client, (string)imported["model"]!, "What color is the sky?"));
    }

    async Task<HttpResponseMessage> ImportAsync(byte[] zip, string suffix)
    {
        using var form = new MultipartFormDataContent
        {
            { new ByteArrayContent(zip), "file", "adapter.zip" }, { new StringContent("tiny-llama-demo"), "model" }, { new StringContent(suffix), "suffix" },
        };
        return await client.PostAsync("/v1/adapters/import", form);
    }

    /// <summary>A zip of adapter_config.json and adapter_model.safetensors with the given tensors, as PEFT writes them.</summary>
    static byte[] PeftZip(string config, Dictionary<string, Tensor> tensors)
    {
        using var folder = new TempFolder("peft-");
        SafeTensors.Save(Path.Combine(folder.FullName, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var zip = new MemoryStream();
        using (var archive = new ZipArchive(zip, ZipArchiveMode.Create, leaveOpen: true))
        {
            using (var writer = new StreamWriter(archive.CreateEntry("adapter_config.json").Open())) writer.Write(config);
            archive.CreateEntryFromFile(Path.Combine(folder.FullName, "adapter_model.safetensors"), "adapter_model.safetensors");
        }
        return zip.ToArray();
    }

    /// <summary>
    /// Folders written the way PEFT writes LoRA and Lily (its keys, its config fields, Lily's experts repeated under every
    /// layer and a router per layer) import, count their parameters and serve; with zero updates they answer as the base.
    /// </summary>
    [Fact]
    public async Task PeftLoraAndLilyFoldersImportAndServe()
    {
        TorchRuntime.EnsureReady();
        const int layers = 4, hidden = 128, kv = 64, r = 4, experts = 2;
        using var g = new Generator(3);
        string Key(int layer, string module, string name) => $"base_model.model.model.layers.{layer}.self_attn.{module}.{name}.weight";
        long Out(string module) => module == "q_proj" ? hidden : kv;
        string[] modules = ["q_proj", "v_proj"];
        string baseAnswer = await Api.ChatAsync(client, "tiny-llama-demo", "What color is the sky?");

        var lora = new Dictionary<string, Tensor>();
        for (int l = 0; l < layers; l++)
            foreach (var m in modules)
            {
                lora[Key(l, m, "lora_A")] = randn([r, hidden], generator: g);
                lora[Key(l, m, "lora_B")] = zeros(Out(m), r);
            }
        const string loraConfig = """
            {"alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "tiny", "bias": "none", "fan_in_fan_out": false,
             "inference_mode": true, "init_lora_weights": true, "layers_pattern": null, "layers_to_transform": null, "lora_alpha": 8,
             "lora_dropout": 0.05, "modules_to_save": null, "peft_type": "LORA", "r": 4, "rank_pattern": {}, "revision": null,
             "target_modules": ["v_proj", "q_proj"], "task_type": "CAUSAL_LM", "use_dora": false, "use_rslora": false}
            """;
        var importedLora = await Api.JsonAsync(await ImportAsync(PeftZip(loraConfig, lora), "peft-lora"));
        Assert.Equal(layers * r * ((hidden + hidden) + (hidden + kv)), (long)importedLora["parameter_count"]!);
        Assert.Equal(baseAnswer, await Api.ChatAsync(client, (string)importedLora["model"]!, "What color is the sky?"));

        var lily = new Dictionary<string, Tensor>();
        var shared = modules.ToDictionary(m => m, m => zeros(experts * r, Out(m)));
        for (int l = 0; l < layers; l++)
            foreach (var m in modules)
            {
                lily[Key(l, m, "lily_A")] = randn([r, hidden], generator: g);
                lily[Key(l, m, "lily_B")] = shared[m].clone();
                lily[Key(l, m, "lily_router")] = randn([experts, r], generator: g);
            }
        const string lilyConfig = """
            {"auto_mapping": null, "base_model_name_or_path": "tiny", "exclude_modules": null, "inference_mode": true, "init_weights": true,
             "layers_pattern": null, "layers_to_transform": null, "lily_dropout": 0.0, "lily_scaling": 1.0, "modules_to_save": null,
             "num_A": 4, "num_B": 2, "peft_type": "LILY", "r": 4, "revision": null, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
            """;
        var importedLily = await Api.JsonAsync(await ImportAsync(PeftZip(lilyConfig, lily), "peft-lily"));
        Assert.Equal("lily", (string?)importedLily["method"]);
        // Per layer its LP and its router; the experts of each module type once.
        Assert.Equal(layers * modules.Length * (r * hidden + experts * r) + experts * r * (hidden + kv), (long)importedLily["parameter_count"]!);
        Assert.Equal(baseAnswer, await Api.ChatAsync(client, (string)importedLily["model"]!, "What color is the sky?"));

        foreach (var t in lora.Values.Concat(lily.Values).Concat(shared.Values)) t.Dispose();
    }

    [Fact]
    public async Task CombiningLoraAdaptersWeighsTheirUpdates()
    {
        async Task<string> Train(string answer)
        {
            var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Name a fruit.", answer), 10));
            var job = await Api.CreateJobAsync(client, new
            {
                model = "tiny-llama-demo", training_file = fileId, seed = 3, suffix = answer.ToLowerInvariant(),
                hyperparameters = new { n_epochs = 12, batch_size = 2 },
            });
            var model = (string)(await Api.WaitForFinishAsync(client, (string)job["id"]!))["fine_tuned_model"]!;
            return factory.Query(db => db.Adapters.Single(a => a.Name == model)).Id;
        }
        var (apple, banana) = (await Train("Apple"), await Train("Banana"));

        var onlyBanana = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/adapters/combine", new { adapters = new[] { apple, banana }, weights = new[] { 0.0, 1.0 }, suffix = "blend" }));
        Assert.Equal("lora", (string?)onlyBanana["method"]);
        Assert.Equal("Banana", await Api.ChatAsync(client, (string)onlyBanana["model"]!, "Name a fruit."));
        var onlyApple = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/adapters/combine", new { adapters = new[] { apple, banana }, weights = new[] { 1.0, 0.0 } }));
        Assert.Equal("Apple", await Api.ChatAsync(client, (string)onlyApple["model"]!, "Name a fruit."));

        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/adapters/combine", new { adapters = new[] { apple }, weights = new[] { 1.0 } }), 400, "adapters");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/adapters/combine", new { adapters = new[] { apple, banana }, weights = new[] { 1.0 } }), 400, "weights");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/adapters/combine", new { adapters = new[] { apple, "adapter-missing" }, weights = new[] { 1.0, 1.0 } }), 404, "adapters");
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
        })
            await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/fine_tuning/jobs",
                new { model = "tiny-llama-demo", training_file = fileId, adapter }), 400, param);
    }
}
