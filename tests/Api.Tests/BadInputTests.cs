using System.Net.Http.Json;
using System.Text;

namespace AdapterService.Api.Tests;

/// <summary>A user's mistakes get a 4xx with OpenAI's error object, and nothing is stored for them.</summary>
[Collection(ServiceCollection.Name)]
public sealed class BadInputTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    (int Files, int Jobs, int Blobs) Stored() => factory.Query(db => (db.Files.Count(), db.Jobs.Count(),
        Directory.Exists(Path.Combine(factory.DataDirectory, "blobs", "files"))
            ? Directory.GetFiles(Path.Combine(factory.DataDirectory, "blobs", "files")).Length : 0));

    async Task<string> GoodFileAsync() => await Api.UploadFileAsync(client, [Api.ChatLine("hi", "there")]);

    [Fact]
    public async Task MalformedJsonlIsRefusedWithItsLineNumber()
    {
        var before = Stored();
        var lines = string.Join("\n", Api.ChatLine("a", "b"), Api.ChatLine("c", "d"), "{\"messages\": [ broken", Api.ChatLine("e", "f"));
        var error = await Api.AssertErrorAsync(await Api.UploadAsync(client, lines), 400, "file");
        Assert.Contains("Line 3", (string)error["message"]!);
        Assert.Equal(before, Stored());
    }

    [Theory]
    [InlineData("{\"prompt\": \"p\"}", "Line 1", "completion")]
    [InlineData("{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}", "Line 1", "role")]
    [InlineData("", null, "no training examples")]
    public async Task InvalidTrainingFilesAreRefused(string content, string? line, string phrase)
    {
        var before = Stored();
        var error = await Api.AssertErrorAsync(await Api.UploadAsync(client, content), 400, "file");
        if (line is not null) Assert.Contains(line, (string)error["message"]!);
        Assert.Contains(phrase, (string)error["message"]!);
        Assert.Equal(before, Stored());
    }

    [Fact]
    public async Task UploadWithoutFileOrWithWrongPurposeIsRefused()
    {
        var before = Stored();
        using (var form = new MultipartFormDataContent { { new StringContent("fine-tune"), "purpose" } })
            await Api.AssertErrorAsync(await client.PostAsync("/v1/files", form), 400, "file");
        await Api.AssertErrorAsync(await Api.UploadAsync(client, Api.ChatLine("a", "b"), purpose: "vision"), 400, "purpose");
        await Api.AssertErrorAsync(await client.PostAsync("/v1/files", new StringContent("x")), 400);
        Assert.Equal(before, Stored());
    }

    public static TheoryData<string, int, string> BadJobs => new()
    {
        { """{"model": "no-such-model", "training_file": "FILE"}""", 404, "model" },
        { """{"training_file": "FILE"}""", 400, "model" },
        { """{"model": "tiny-llama-demo", "training_file": "file-doesnotexist"}""", 400, "training_file" },
        { """{"model": "tiny-llama-demo"}""", 400, "training_file" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "hyperparameters": {"n_epochs": -1}}""", 400, "hyperparameters.n_epochs" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "hyperparameters": {"batch_size": "big"}}""", 400, "hyperparameters.batch_size" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "hyperparameters": {"learning_rate_multiplier": 0}}""", 400, "hyperparameters.learning_rate_multiplier" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}}""", 400, "hyperparameters.n_epochs" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"type": "prefix-tuning"}}""", 400, "adapter.type" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"type": "lora", "rank": 0}}""", 400, "adapter.rank" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"type": "lora", "dropout": 1.5}}""", 400, "adapter.dropout" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"type": "lora", "target_modules": ["c_attn"]}}""", 400, "adapter.target_modules" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "suffix": "has spaces!"}""", 400, "suffix" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "seed": -5}""", 400, "seed" },
    };

    [Theory]
    [MemberData(nameof(BadJobs))]
    public async Task BadJobRequestsAreRefusedAndNothingIsStored(string body, int status, string param)
    {
        var fileId = await GoodFileAsync();
        var before = Stored();
        var response = await client.PostAsync("/v1/fine_tuning/jobs", new StringContent(body.Replace("FILE", fileId), Encoding.UTF8, "application/json"));
        await Api.AssertErrorAsync(response, status, param);
        Assert.Equal(before, Stored());
    }

    [Fact]
    public async Task BrokenJsonAndUnknownIdsGetErrorObjects()
    {
        await Api.AssertErrorAsync(await client.PostAsync("/v1/fine_tuning/jobs", new StringContent("{\"model\": ", Encoding.UTF8, "application/json")), 400);
        await Api.AssertErrorAsync(await client.GetAsync("/v1/fine_tuning/jobs/ftjob-nope"), 404, "id");
        await Api.AssertErrorAsync(await client.GetAsync("/v1/fine_tuning/jobs/ftjob-nope/events"), 404, "id");
        await Api.AssertErrorAsync(await client.PostAsync("/v1/fine_tuning/jobs/ftjob-nope/cancel", null), 404, "id");
        await Api.AssertErrorAsync(await client.GetAsync("/v1/files/file-nope"), 404, "id");
        await Api.AssertErrorAsync(await client.GetAsync("/v1/no-such-route"), 404);
    }

    [Fact]
    public async Task BadCompletionRequestsAreRefused()
    {
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/completions", new { model = "nope", prompt = "x" }), 404, "model");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/completions", new { model = "ft:tiny-llama-demo::ftjob-nope", prompt = "x" }), 404, "model");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-demo" }), 400, "prompt");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-demo", prompt = "x", temperature = 3 }), 400, "temperature");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-demo", prompt = "x", max_tokens = 100000 }), 400);
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/chat/completions", new { model = "tiny-llama-demo", messages = Array.Empty<object>() }), 400, "messages");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = "tiny-llama-demo", messages = new[] { new { role = "robot", content = "x" } } }), 400, "messages[0].role");
    }
}
