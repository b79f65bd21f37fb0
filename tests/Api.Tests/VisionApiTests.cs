using System.Net.Http.Json;
using System.Net;
using System.Text.Json.Nodes;
using System.Text.Json;
using AdapterService.Core.Data;

namespace AdapterService.Api.Tests;

/// <summary>The built-in ViT end to end: pre-training, fine-tuning on new classes, and classification with mixed adapters.</summary>
[Collection(ServiceCollection.Name)]
public class VisionApiTests(ServiceFactory factory)
{
    const string Vit = "vit-fashion-mnist-demo";
    static readonly int[] NewClasses = [5, 6, 7, 8, 9];

    static string Line(LabelledImages images, int i) => JsonSerializer.Serialize(new
    {
        image = Convert.ToBase64String(Png.EncodeGray(28, 28, images.Image(i))), label = FashionMnist.ClassNames[images.Labels[i]],
    });

    static async Task EnsurePretrainedAsync(HttpClient client)
    {
        var response = await client.PostAsync($"/v1/models/{Vit}/pretrain", null);
        Assert.True(response.StatusCode is HttpStatusCode.Accepted or HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        if (response.StatusCode == HttpStatusCode.Accepted)
        {
            // Pre-training is a job reporting like fine-tuning: a metrics event per step, then success.
            var jobId = (string)(await Api.JsonAsync(response))["job_id"]!;
            var job = await Api.WaitForJobAsync(client, jobId, s => s is "succeeded" or "failed" or "cancelled", TimeSpan.FromMinutes(4));
            Assert.True((string)job["status"]! == "succeeded" && (string?)job["fine_tuned_model"] == Vit, $"pre-training ended as {job}");
            var events = (await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000")))["data"]!.AsArray();
            Assert.Equal(150, events.Count(e => (string)e!["type"]! == "metrics"));
            Assert.Equal(150, (int)events.First(e => (string)e!["type"]! == "metrics")!["data"]!["step"]!);
        }
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(4);
        while ((await client.GetAsync($"/v1/models/{Vit}")).StatusCode == HttpStatusCode.NotFound)
        {
            Assert.True(DateTime.UtcNow < deadline, "the built-in ViT was not pre-trained in time");
            await Task.Delay(200);
        }
    }

    static async Task<JsonObject> ClassifyAsync(HttpClient client, object request)
    {
        var response = await client.PostAsJsonAsync("/v1/classify", request);
        var body = await Api.JsonAsync(response);
        Assert.True(response.IsSuccessStatusCode, body.ToJsonString());
        return body;
    }

    [Fact]
    public async Task PretrainFineTuneOnNewClassesAndClassifyWithMixedAdapters()
    {
        var client = factory.CreateClient();
        await EnsurePretrainedAsync(client);
        var baseModel = await Api.JsonAsync(await client.GetAsync($"/v1/models/{Vit}"));
        Assert.Contains("Fashion-MNIST classes 0-4", (string)baseModel["description"]!);
        await Api.AssertErrorAsync(await client.PostAsync("/v1/models/tiny-llama-demo/pretrain", null), 404, "model");

        var train = FashionMnist.Load("train").Where(NewClasses, 400);
        var test = FashionMnist.Load("t10k").Where(NewClasses, 150);
        var trainingFile = await Api.UploadFileAsync(client, Enumerable.Range(0, train.Count).Select(i => Line(train, i)));
        var validationFile = await Api.UploadFileAsync(client, Enumerable.Range(0, 100).Select(i => Line(test, i)));
        Assert.Equal("image", factory.Query(db => db.Files.Single(f => f.Id == trainingFile).Format));

        var lora = await Api.CreateJobAsync(client, new
        {
            model = Vit, training_file = trainingFile, validation_file = validationFile, seed = 1, suffix = "lora",
            hyperparameters = new { n_epochs = 2, batch_size = 32 }, adapter = new { type = "lora", rank = 4 },
        });
        Assert.Equal(["dense", "key", "query", "value"], lora["adapter"]!["target_modules"]!.AsArray().Select(t => (string)t!));
        var lily = await Api.CreateJobAsync(client, new
        {
            model = Vit, training_file = trainingFile, seed = 2, suffix = "lily",
            hyperparameters = new { n_epochs = 1, batch_size = 32 }, adapter = new { type = "lily", rank = 4, num_experts = 2, target_modules = new[] { "query", "value" } },
        });
        var loraJob = await Api.WaitForFinishAsync(client, (string)lora["id"]!);
        var lilyJob = await Api.WaitForFinishAsync(client, (string)lily["id"]!);
        Assert.Equal("succeeded", (string?)loraJob["status"]);
        Assert.Equal("succeeded", (string?)lilyJob["status"]);

        // The events report the validation accuracy at each epoch's end.
        var events = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{lora["id"]}/events?limit=1000"));
        var validated = events["data"]!.AsArray().Where(e => e!["data"]?["valid_mean_token_accuracy"] is JsonValue).ToList();
        Assert.Equal(2, validated.Count);
        Assert.Contains("validation accuracy=", (string)validated[0]!["message"]!);

        // The fine-tuned classifier labels held-out images of the new classes far better than chance (20%).
        string loraModel = (string)loraJob["fine_tuned_model"]!, lilyModel = (string)lilyJob["fine_tuned_model"]!;
        var images = Enumerable.Range(0, test.Count).Select(i => Convert.ToBase64String(Png.EncodeGray(28, 28, test.Image(i)))).ToList();
        var predictions = (await ClassifyAsync(client, new { model = loraModel, images }))["data"]!.AsArray();
        Assert.Equal(Enumerable.Range(0, test.Count), predictions.Select(p => (int)p!["index"]!));
        double accuracy = Enumerable.Range(0, test.Count).Count(i => (string?)predictions[i]!["label"] == FashionMnist.ClassNames[test.Labels[i]]) / (double)test.Count;
        Assert.True(accuracy > 0.5, $"accuracy {accuracy:P1} on held-out images of classes 5-9");
        Assert.Equal(NewClasses.Select(c => FashionMnist.ClassNames[c]).Order(StringComparer.Ordinal), predictions[0]!["probabilities"]!.AsObject().Select(p => p.Key));

        // Rows of two adapters and of the base in one request equal each model alone.
        string[] models = [loraModel, lilyModel, Vit];
        var mixed = (await ClassifyAsync(client, new
        {
            input = Enumerable.Range(0, 9).Select(i => new { image = images[i], model = models[i % 3] }),
        }))["data"]!.AsArray();
        for (int m = 0; m < 3; m++)
        {
            var alone = (await ClassifyAsync(client, new { model = models[m], images = Enumerable.Range(0, 9).Where(i => i % 3 == m).Select(i => images[i]) }))["data"]!.AsArray();
            foreach (var (i, k) in Enumerable.Range(0, 9).Where(i => i % 3 == m).Select((i, k) => (i, k)))
            {
                Assert.Equal(models[m], (string?)mixed[i]!["model"]);
                Assert.Equal((string?)alone[k]!["label"], (string?)mixed[i]!["label"]);
                foreach (var (label, p) in alone[k]!["probabilities"]!.AsObject())
                    Assert.Equal((double)p!, (double)mixed[i]!["probabilities"]![label]!, 4);
            }
        }
    }

    /// <summary>The other methods train on the built-in ViT too: the loss falls, MixLoRA reports its experts' load, the model classifies.</summary>
    [Theory]
    [InlineData("dora")]
    [InlineData("rlrr")]
    [InlineData("mixlora")]
    public async Task EveryMethodTrainsOnTheBuiltInVit(string method)
    {
        var client = factory.CreateClient();
        await EnsurePretrainedAsync(client);
        var train = FashionMnist.Load("train").Where(NewClasses, 240);
        var trainingFile = await Api.UploadFileAsync(client, Enumerable.Range(0, train.Count).Select(i => Line(train, i)));
        var job = await Api.CreateJobAsync(client, new
        {
            model = Vit, training_file = trainingFile, seed = 3, suffix = method,
            hyperparameters = new { n_epochs = 2, batch_size = 24 }, adapter = new { type = method, rank = 2, num_experts = 3 },
        });
        var finished = await Api.WaitForFinishAsync(client, (string)job["id"]!);
        Api.AssertSucceeded(finished);
        var events = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{job["id"]}/events?limit=1000"));
        var metrics = events["data"]!.AsArray().Where(e => (string?)e!["type"] == "metrics").Reverse().Select(e => e!["data"]!).ToList();
        double first = (double)metrics[0]["train_loss"]!, last = metrics.TakeLast(3).Average(m => (double)m["train_loss"]!);
        Assert.True(last < first * 0.8, $"{method}: training loss went from {first} to {last}");
        if (method == "mixlora")   // one entry per encoder block: the share of routed token slots per expert
            Assert.All(metrics[^1]["adapter"]!["mixlora_expert_load"]!.AsObject(), l => Assert.Equal(1.0, l.Value!.AsArray().Sum(w => (double)w!), 3));
        var image = Convert.ToBase64String(Png.EncodeGray(28, 28, train.Image(0)));
        var predicted = (await ClassifyAsync(client, new { model = (string)finished["fine_tuned_model"]!, images = new[] { image } }))["data"]![0]!;
        Assert.Contains((string)predicted["label"]!, NewClasses.Select(c => FashionMnist.ClassNames[c]));
    }

    [Fact]
    public async Task BadImagesAreRefusedWithTheLineOrTheItem()
    {
        var client = factory.CreateClient();
        var good = Convert.ToBase64String(Png.EncodeGray(28, 28, new byte[784]));
        var upload = await Api.UploadAsync(client, $"{{\"image\": \"{good}\", \"label\": \"Bag\"}}\n{{\"image\": \"{good}\", \"label\": \"Bag\"}}\n{{\"image\": \"aGVsbG8=\", \"label\": \"Bag\"}}\n");
        var error = await Api.AssertErrorAsync(upload, 400, "file");
        Assert.Contains("Line 3: image is not a supported PNG", (string)error["message"]!);

        await EnsurePretrainedAsync(client);
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/classify", new { model = Vit, images = new[] { good, "not base64" } }), 400, "images[1]");
        var small = Convert.ToBase64String(Png.EncodeGray(8, 8, new byte[64]));
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/classify", new { model = Vit, input = new[] { new { image = small } } }), 400, "input[0]");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/classify", new { model = "tiny-llama-demo", images = new[] { good } }), 400, "model");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/classify", new { model = "ft:nope", images = new[] { good } }), 404, "model");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/chat/completions", new { model = Vit, messages = new[] { new { role = "user", content = "hi" } } }), 400, "model");

        // A chat file cannot train an image classifier, and a wrongly sized image names its line.
        var chat = await Api.UploadFileAsync(client, Enumerable.Range(0, 10).Select(i => Api.ChatLine("q", "a")));
        var chatError = await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/fine_tuning/jobs", new { model = Vit, training_file = chat }), 400, "training_file");
        Assert.Contains("labelled images", (string)chatError["message"]!);
        var sized = await Api.UploadFileAsync(client, Enumerable.Range(0, 10).Select(i => $"{{\"image\": \"{(i == 4 ? small : good)}\", \"label\": \"Bag\"}}"));
        var sizeError = await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/fine_tuning/jobs", new { model = Vit, training_file = sized }), 400, "training_file");
        Assert.Contains("Line 5: the image is 8×8", (string)sizeError["message"]!);

        // The data preview (POST /v1/files/{id}/preview) counts an image file's labels; a language model refuses it, and the classifier a chat file.
        var labelled = await Api.UploadFileAsync(client, Enumerable.Range(0, 7).Select(i => $"{{\"image\": \"{good}\", \"label\": \"{(i < 5 ? "Bag" : "Coat")}\"}}"));
        var preview = await Api.JsonAsync(await client.PostAsJsonAsync($"/v1/files/{labelled}/preview", new { model = Vit, max_examples = 2 }));
        Assert.Equal("image", (string?)preview["format"]);
        Assert.Equal(5, (int)preview["label_counts"]!["Bag"]!);
        Assert.Equal(2, (int)preview["label_counts"]!["Coat"]!);
        Assert.Equal(["Bag", "Bag"], preview["data"]!.AsArray().Select(e => (string)e!["label"]!));
        Assert.Equal("28x28", (string?)preview["data"]![0]!["image_size"]);
        await Api.AssertErrorAsync(await client.PostAsJsonAsync($"/v1/files/{labelled}/preview", new { model = "tiny-llama-demo" }), 400, "model");
        var wrong = await Api.AssertErrorAsync(await client.PostAsJsonAsync($"/v1/files/{chat}/preview", new { model = Vit }), 400, "model");
        Assert.Contains("labelled images", (string)wrong["message"]!);
    }
}
