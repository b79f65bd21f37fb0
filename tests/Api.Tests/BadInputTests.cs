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

    async Task<string> GoodFileAsync() => await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("hi", "there"), 10));

    [Fact]
    public async Task MalformedJsonlIsRefusedWithItsLineNumber()
    {
        var before = Stored();
        var lines = string.Join("\n", Api.ChatLine("a", "b"), Api.ChatLine("c", "d"), "{\"messages\": [ broken", Api.ChatLine("e", "f"));
        var error = await Api.AssertErrorAsync(await Api.UploadAsync(client, lines), 400, "file");
        Assert.Contains("Line 3", (string)error["message"]!);
        Assert.Equal(before, Stored());
    }

    /// <summary>Malformed training files: the bad line is the third (two good lines first), or the file as a whole.</summary>
    public static TheoryData<string, string> MalformedLines => new()
    {
        { "not json at all", "not valid JSON" },
        { "[1, 2, 3]", "object" },
        { "{\"messages\": \"hello\"}", "messages" },
        { "{\"messages\": []}", "messages" },
        { "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}", "role" },
        { "{\"messages\": [{\"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}", "role" },
        { "{\"messages\": [{\"role\": \"user\", \"content\": 5}, {\"role\": \"assistant\", \"content\": \"y\"}]}", "content" },
        { "{\"messages\": [{\"role\": \"user\", \"content\": \"only a question\"}]}", "assistant" },
        { "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\", \"weight\": 2}]}", "weight" },
        { "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}, {\"role\": \"assistant\", \"content\": \"a\"}]}", "image_url" },
        { "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"tool_calls\": []}]}", "tool" },
        { "{\"prompt\": \"p\"}", "completion" },
        { "{\"prompt\": \"p\", \"completion\": \"\"}", "completion" },
        { "{\"prompt\": 1, \"completion\": \"c\"}", "prompt" },
        { "{\"text\": \"hello\"}", "messages" },
        { "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]", "not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(MalformedLines))]
    public async Task MalformedTrainingFilesAreRefusedWithTheLineNumber(string badLine, string phrase)
    {
        var before = Stored();
        var content = string.Join("\n", Api.ChatLine("a", "b"), Api.ChatLine("c", "d"), badLine, Api.ChatLine("e", "f"));
        var error = await Api.AssertErrorAsync(await Api.UploadAsync(client, content), 400, "file");
        Assert.Contains("Line 3:", (string)error["message"]!);
        Assert.Contains(phrase, (string)error["message"]!, StringComparison.OrdinalIgnoreCase);
        Assert.Equal(before, Stored());
    }

    [Fact]
    public async Task AnEmptyFileAndAFileMixingFormatsAreRefused()
    {
        var before = Stored();
        Assert.Contains("no training examples", (string)(await Api.AssertErrorAsync(await Api.UploadAsync(client, "\n\n"), 400, "file"))["message"]!);
        var mixed = string.Join("\n", Api.ChatLine("a", "b"), "{\"prompt\": \"p\", \"completion\": \"c\"}");
        Assert.Contains("Line 2: mixes formats", (string)(await Api.AssertErrorAsync(await Api.UploadAsync(client, mixed), 400, "file"))["message"]!);
        Assert.Equal(before, Stored());
    }

    [Fact]
    public async Task TooFewExamplesAreRefusedAtJobCreation()
    {
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("hi", "there"), 9));
        var before = Stored();
        var response = await client.PostAsJsonAsync("/v1/fine_tuning/jobs", new { model = "tiny-llama-demo", training_file = fileId });
        Assert.Contains("at least 10", (string)(await Api.AssertErrorAsync(response, 400, "training_file"))["message"]!);
        Assert.Equal(before, Stored());
    }

    [Fact]
    public async Task UploadWithoutFileOrWithWrongPurposeIsRefused()
    {
        var before = Stored();
        using (var form = new MultipartFormDataContent { { new StringContent("fine-tune"), "purpose" } })
            await Api.AssertErrorAsync(await client.PostAsync("/v1/files", form), 400, "file");
        await Api.AssertErrorAsync(await Api.UploadAsync(client, Api.ChatLine("a", "b"), purpose: "vision"), 400, "purpose");
        await Api.AssertErrorAsync(await client.PostAsync("/v1/files", new StringContent("x")), 415);
        await Api.AssertErrorAsync(await client.PostAsync("/v1/fine_tuning/jobs", new StringContent("{}", Encoding.UTF8, "text/plain")), 415);
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
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}}""", 400, "method.supervised.hyperparameters.n_epochs" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "method": {"type": "ppo"}}""", 400, "method.type" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}}""", 400, "method.supervised.hyperparameters.beta" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "method": {"type": "supervised", "dpo": {}}}""", 400, "method.dpo" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"type": "prefix-tuning"}}""", 400, "adapter.type" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"type": "lora", "rank": 0}}""", 400, "adapter.rank" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"type": "lora", "rank": {"r": 8}}}""", 400, "adapter.rank" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"rank": [2, 4, 8, 16, 32]}}""", 400, "adapter.rank" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"rank": [2, 8]}}""", 400, "validation_file" },   // a rank sweep scores on one
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"type": "lora", "dropout": 1.5}}""", 400, "adapter.dropout" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "adapter": {"type": "lora", "target_modules": ["c_attn"]}}""", 400, "adapter.target_modules" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "suffix": "has spaces!"}""", 400, "suffix" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "seed": -5}""", 400, "seed" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "validation_file": "file-nope"}""", 400, "validation_file" },
        { """{"model": "tiny-llama-demo", "training_file": "FILE", "metadata": {"": "x"}}""", 400, "metadata" },
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

    [Fact]
    public async Task OddButWellFormedInputsGet4xxNot500()
    {
        var json = (string body) => new StringContent(body, Encoding.UTF8, "application/json");
        await Api.AssertErrorAsync(await client.PostAsync("/v1/chat/completions", json("""{"model": "tiny-llama-demo", "messages": [null]}""")), 400, "messages[0]");
        await Api.AssertErrorAsync(await client.PostAsync("/v1/completions/batch", json("""{"inputs": [null]}""")), 400, "inputs[0]");
        var fileId = await GoodFileAsync();
        await Api.AssertErrorAsync(await client.PostAsync("/v1/fine_tuning/jobs", json($$$"""{"model": "tiny-llama-demo", "training_file": "{{{fileId}}}", "metadata": {"k": null}}""")), 400, "metadata");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await Api.AssertErrorAsync(await client.PostAsync("/v1/fine_tuning/jobs", json($$$"""{"model": "tiny-llama-demo", "training_file": "{{{fileId}}}", "adapter": {"target_modules": "(.*)*X"}}""")), 400, "adapter.target_modules");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), "a pathological regex is cut short");
        await Api.AssertErrorAsync(await client.PostAsync("/v1/fine_tuning/jobs", json($$$"""{"model": "tiny-llama-demo", "training_file": "{{{fileId}}}", "adapter": {"target_modules": "(unclosed"}}""")), 400, "adapter.target_modules");

        var broken = new StringContent("--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune", Encoding.UTF8);
        broken.Headers.ContentType = System.Net.Http.Headers.MediaTypeHeaderValue.Parse("multipart/form-data; boundary=xyz");
        await Api.AssertErrorAsync(await client.PostAsync("/v1/files", broken), 400);

        var tiny = await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-demo", prompt = "x", max_tokens = 3, temperature = 1e-300 });
        Assert.True(tiny.IsSuccessStatusCode, await tiny.Content.ReadAsStringAsync());
    }
}
