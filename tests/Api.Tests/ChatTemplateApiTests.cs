using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>Chat templates through the HTTP pipeline: /tokenize and /detokenize, request overrides, template errors, a job's pinned template.</summary>
[Collection(ServiceCollection.Name)]
public sealed class ChatTemplateApiTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    // The built-in byte tokenizer: bytes are ids 0-255; <|end|> 256, <|user|> 258, <|assistant|> 259, <|begin|> 260.
    static int[] Bytes(string text) => Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToArray();
    static readonly object[] Hi = [new { role = "user", content = "hi" }];

    async Task<JsonObject> TokenizeAsync(object request)
    {
        var response = await client.PostAsJsonAsync("/tokenize", request);
        var body = await Api.JsonAsync(response);
        Assert.True(response.IsSuccessStatusCode, body.ToJsonString());
        return body;
    }

    static List<int> Tokens(JsonObject body) => body["tokens"]!.AsArray().Select(t => (int)t!).ToList();

    [Fact]
    public async Task TokenizeRendersTheModelsTemplateAndDetokenizeGivesTheTextBack()
    {
        var chat = await TokenizeAsync(new { model = "tiny-llama-demo", messages = Hi });
        Assert.Equal([260, 258, .. Bytes("hi"), 256, 259], Tokens(chat));
        Assert.Equal(6, (int)chat["count"]!);
        Assert.Equal(512, (int)chat["max_model_len"]!);

        Assert.Equal([260, .. Bytes("hi")], Tokens(await TokenizeAsync(new { model = "tiny-llama-demo", prompt = "hi" })));
        var plain = await TokenizeAsync(new { model = "tiny-llama-demo", prompt = "hi", add_special_tokens = false, return_token_strs = true });
        Assert.Equal(Bytes("hi"), Tokens(plain));
        Assert.Equal(2, plain["token_strs"]!.AsArray().Count);

        var back = await Api.JsonAsync(await client.PostAsJsonAsync("/detokenize", new { model = "tiny-llama-demo", tokens = Tokens(chat) }));
        Assert.Equal("<|begin|><|user|>hi<|end|><|assistant|>", (string?)back["prompt"]);

        // A chat completion's prompt is what /tokenize counts.
        var completion = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = "tiny-llama-demo", messages = Hi, max_tokens = 1, temperature = 0 }));
        Assert.Equal(6, (int)completion["usage"]!["prompt_tokens"]!);
    }

    [Fact]
    public async Task ARequestsTemplateAndItsVariablesAreUsed()
    {
        const string template = "{% for m in messages %}{{ m.content }}{% endfor %}{% if shout %}!{% endif %}";
        var body = await TokenizeAsync(new { model = "tiny-llama-demo", messages = Hi, chat_template = template, chat_template_kwargs = new { shout = true } });
        Assert.Equal(Bytes("hi!"), Tokens(body));
        var response = await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = "tiny-llama-demo", messages = Hi, max_tokens = 2, temperature = 0, chat_template = template });
        Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync());
        Assert.Equal(2, (int)(await Api.JsonAsync(response))["usage"]!["prompt_tokens"]!);   // "hi": the template, not the model's
    }

    [Fact]
    public async Task TemplateFaultsAndRefusalsAre400sThatSayWhy()
    {
        async Task<JsonObject> Refused(object request, string param) =>
            await Api.AssertErrorAsync(await client.PostAsJsonAsync("/tokenize", request), 400, param);

        await Refused(new { model = "tiny-llama-demo", messages = Hi, chat_template = "{% for %}" }, "chat_template");
        var raised = await Refused(new { model = "tiny-llama-demo", messages = Hi, chat_template = "{{ raise_exception('no system messages here') }}" }, "messages");
        Assert.Contains("no system messages here", (string?)raised["message"]);
        // The built-in template refuses a role it has no token for, with its own message.
        var tool = await Refused(new { model = "tiny-llama-demo", messages = new object[] { new { role = "tool", content = "42", tool_call_id = "call_1" } } }, "messages");
        Assert.Contains("tool", (string?)tool["message"]);
        // A template that would loop for ever, or print without end, is stopped by the render budget.
        await Refused(new { model = "tiny-llama-demo", messages = Hi, chat_template = "{% for i in range(999999999) %}{% for j in range(999999999) %}x{% endfor %}{% endfor %}" }, "chat_template");
        await Refused(new { model = "tiny-llama-demo", messages = Hi, chat_template = "{{ 'x' * 999999999 }}" }, "chat_template");
        await Refused(new { model = "tiny-llama-demo", prompt = "hi", messages = Hi }, "messages");
        await Refused(new { model = "tiny-llama-demo", messages = new object[] { new { role = "user", content = new[] { new { type = "image_url" } } } } }, "messages[0].content[0]");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/detokenize", new { model = "tiny-llama-demo", tokens = new[] { 1, 99999 } }), 400, "tokens[1]");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/tokenize", new { model = "no-such-model", prompt = "hi" }), 404, "model");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = "tiny-llama-demo", messages = Hi, chat_template = "{{ messages[0].content | no_such_filter }}" }), 400, "chat_template");
    }

    [Fact]
    public async Task AJobTrainsWithItsOwnTemplateReportsCutExamplesAndItsModelIsServedWithThatTemplate()
    {
        const string template = "{{ bos_token }}{% for m in messages %}{{ '<|' + m.role + '|>### ' + m.content + '<|end|>' }}{% endfor %}"
                                + "{% if add_generation_prompt %}{{ '<|assistant|>### ' }}{% endif %}";
        var lines = Enumerable.Range(1, 10).Select(i => Api.ChatLine($"question {i}", i is 3 or 7 ? new string('x', 600) : $"answer {i}"));
        string file = await Api.UploadFileAsync(client, lines);
        var job = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = file, chat_template = template, suffix = "hashes",
            hyperparameters = new { n_epochs = 1, batch_size = 4 },
        });
        Assert.Equal(template, (string?)job["chat_template"]);
        var done = await Api.WaitForFinishAsync(client, (string)job["id"]!);
        Assert.True((string?)done["status"] == "succeeded", done.ToJsonString());

        var events = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{job["id"]}/events?limit=100"));
        var cut = events["data"]!.AsArray().Select(e => (string)e!["message"]!).Single(m => m.Contains("exceed the model's context"));
        Assert.Contains("2 example(s)", cut);
        Assert.EndsWith("line(s) 3, 7", cut);

        // The fine-tuned model renders chats with the job's template; the base with its own.
        string model = (string)done["fine_tuned_model"]!;
        var tuned = Tokens(await TokenizeAsync(new { model, messages = Hi }));
        Assert.Equal([260, 258, .. Bytes("### hi"), 256, 259, .. Bytes("### ")], tuned);
        Assert.Equal([260, 258, .. Bytes("hi"), 256, 259], Tokens(await TokenizeAsync(new { model = "tiny-llama-demo", messages = Hi })));
        var checkpoints = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{job["id"]}/checkpoints"));
        string checkpoint = (string)checkpoints["data"]![0]!["fine_tuned_model_checkpoint"]!;
        Assert.Equal(tuned, Tokens(await TokenizeAsync(new { model = checkpoint, messages = Hi })));

        // Exported, the merged folder carries the template, as transformers reads it.
        using var zip = new System.IO.Compression.ZipArchive(await client.GetStreamAsync($"/v1/models/{Uri.EscapeDataString(model)}/export"));
        var entry = zip.Entries.Single(e => e.Name == "chat_template.jinja");
        using var reader = new StreamReader(entry.Open());
        Assert.Equal(template, await reader.ReadToEndAsync());

        // As GGUF (its numbers are checked in llama.cpp by GgufExportTests) it carries the template as tokenizer.chat_template.
        var gguf = await client.GetByteArrayAsync($"/v1/models/{Uri.EscapeDataString(model)}/export?format=gguf&type=q8_0");
        Assert.Equal("GGUF"u8.ToArray(), gguf[..4]);
        Assert.True(gguf.AsSpan().IndexOf(Encoding.UTF8.GetBytes(template)) > 0);
    }

    [Fact]
    public async Task AJobsTemplateMustRenderItsTrainingFile()
    {
        string file = await Api.UploadFileAsync(client, Enumerable.Range(1, 10).Select(i => Api.ChatLine($"q{i}", $"a{i}")));
        var response = await client.PostAsJsonAsync("/v1/fine_tuning/jobs", new
        {
            model = "tiny-llama-demo", training_file = file, chat_template = "{{ raise_exception('this template takes no chats') }}",
        });
        var error = await Api.AssertErrorAsync(response, 400, "training_file");
        Assert.Contains("this template takes no chats", (string?)error["message"]);
        Assert.Contains("line 1", JsonSerializer.Serialize(error).ToLowerInvariant());
    }
}
