using System.ClientModel;
using System.ClientModel.Primitives;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Files;
using OpenAI.FineTuning;
using OpenAI.Models;

namespace AdapterService.Api.Tests;

/// <summary>
/// The official OpenAI .NET SDK (OpenAI 2.15.0) and Microsoft.Extensions.AI's <see cref="IChatClient"/> over it, changed
/// only in their endpoint, against a running service process. Its fine-tuning surface is marked experimental (OPENAI001).
/// </summary>
#pragma warning disable OPENAI001
public sealed class DotnetSdkTests
{
    [Fact]
    public async Task TheOfficialDotnetSdkAndIChatClientDriveTheServiceUnchanged()
    {
        using var folder = new TempFolder("adapter-service-dotnet-sdk-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var options = new OpenAIClientOptions { Endpoint = new Uri(service.Http.BaseAddress!, "v1") };
        var openai = new OpenAIClient(new ApiKeyCredential("sk-local-test"), options);
        var training = Path.Combine(folder.FullName, "train.jsonl");
        await File.WriteAllLinesAsync(training, Enumerable.Repeat(Api.ChatLine("Who wrote Hamlet?", "Shakespeare."), 10));

        // Files
        var files = openai.GetOpenAIFileClient();
        OpenAIFile file = await files.UploadFileAsync(training, FileUploadPurpose.FineTune);
        Assert.Equal(FilePurpose.FineTune, file.Purpose);
        Assert.Equal("train.jsonl", file.Filename);
        Assert.Equal(new FileInfo(training).Length, file.SizeInBytesLong);
        Assert.Equal(file.Id, (await files.GetFileAsync(file.Id)).Value.Id);
        Assert.Contains((await files.GetFilesAsync(FilePurpose.FineTune)).Value, f => f.Id == file.Id);
        Assert.Equal(await File.ReadAllTextAsync(training), (await files.DownloadFileAsync(file.Id)).Value.ToString());

        // Fine-tuning, the convenience surface: OpenAI's `method` form of the hyperparameters.
        var fineTuning = openai.GetFineTuningClient();
        FineTuningJob job = await fineTuning.FineTuneAsync("tiny-llama-demo", file.Id, waitUntilCompleted: false, new FineTuningOptions
        {
            Suffix = "dotnet", Seed = 3, Metadata = { ["client"] = "dotnet" },
            TrainingMethod = FineTuningTrainingMethod.CreateSupervised(batchSize: 2, epochCount: 6, learningRate: 1.0),
        });
        Assert.Equal("tiny-llama-demo", job.BaseModel);
        Assert.Equal("dotnet", job.Metadata["client"]);
        Assert.Equal(3, job.Seed);
        await WaitAsync(job, s => s == FineTuningStatus.Succeeded || s == FineTuningStatus.Failed || s == FineTuningStatus.Cancelled);
        Assert.Equal(FineTuningStatus.Succeeded, job.Status);
        job = await fineTuning.GetJobAsync(job.JobId);   // UpdateStatus refreshes the status only
        string raw = job.GetRawResponse().Content.ToString();
        Assert.True(job.MethodHyperparameters is HyperparametersForSupervised, raw);
        var hyperparameters = (HyperparametersForSupervised)job.MethodHyperparameters;
        Assert.Equal(6, hyperparameters.EpochCount);
        Assert.Equal(2, hyperparameters.BatchSize);
        // The SDK leaves BillableTrainedTokenCount at 0 whatever `trained_tokens` holds (seen with OpenAI 2.15.0); the JSON has it.
        Assert.True(JsonNode.Parse(raw)!["trained_tokens"]!.GetValue<long>() > 0, raw);
        string fineTuned = JsonNode.Parse(raw)!["fine_tuned_model"]!.GetValue<string>();
        Assert.StartsWith("ft:tiny-llama-demo:dotnet:", fineTuned);

        // OpenAI's result file: the step metrics as CSV, one row per step (6 epochs of 5 steps).
        var resultFile = Assert.Single(job.ResultFileIds);
        Assert.Equal(FilePurpose.FineTuneResults, (await files.GetFileAsync(resultFile)).Value.Purpose);
        var csv = (await files.DownloadFileAsync(resultFile)).Value.ToString().TrimEnd('\n').Split('\n');
        Assert.StartsWith("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,", csv[0]);
        Assert.Equal(31, csv.Length);

        var events = new List<FineTuningEvent>();
        await foreach (var e in job.GetEventsAsync(new GetEventsOptions { PageSize = 7 })) events.Add(e);   // pages of 7, auto-paged
        Assert.True(events.Count > 20, $"{events.Count} events");
        Assert.Equal("The job has successfully completed", events[0].Message);
        Assert.Contains(events, e => e.Kind == FineTuningJobEventKind.Metrics && e.Data is not null);

        var checkpoints = new List<FineTuningCheckpoint>();
        await foreach (var c in job.GetCheckpointsAsync()) checkpoints.Add(c);
        Assert.True(checkpoints.Count >= 3);
        Assert.Equal(30, checkpoints[0].StepNumber);   // 6 epochs of 5 steps
        Assert.Equal(30, checkpoints[0].Metrics.StepNumber);
        Assert.NotNull(checkpoints[0].Metrics.TrainLoss);
        Assert.StartsWith("ft:tiny-llama-demo:dotnet:", checkpoints[0].ModelId);

        // Our `adapter` extension has no place in FineTuningOptions: the protocol method sends the JSON as written.
        var request = new
        {
            model = "tiny-llama-demo", training_file = file.Id, seed = 4,
            method = new { type = "supervised", supervised = new { hyperparameters = new { n_epochs = 50, batch_size = 2 } } },
            adapter = new { type = "dora", rank = 4, alpha = 8 },
        };
        FineTuningJob second = await fineTuning.FineTuneAsync(BinaryContent.Create(BinaryData.FromObjectAsJson(request)), waitUntilCompleted: false, new RequestOptions());
        Assert.Equal("dora", JsonNode.Parse(second.GetRawResponse().Content.ToString())!["adapter"]!["type"]!.GetValue<string>());
        await WaitAsync(second, s => s == FineTuningStatus.Running);
        // Pause and resume are protocol methods in this SDK version: their answer is the job's JSON.
        var paused = await fineTuning.PauseFineTuningJobAsync(second.JobId, new RequestOptions());
        Assert.Equal("paused", JsonNode.Parse(paused.GetRawResponse().Content.ToString())!["status"]!.GetValue<string>());
        var resumed = await fineTuning.ResumeFineTuningJobAsync(second.JobId, new RequestOptions());
        Assert.Equal("queued", JsonNode.Parse(resumed.GetRawResponse().Content.ToString())!["status"]!.GetValue<string>());
        await second.CancelAndUpdateAsync();
        Assert.Equal(FineTuningStatus.Cancelled, second.Status);

        var listed = new List<string>();
        await foreach (var j in fineTuning.GetJobsAsync(new FineTuningJobCollectionOptions { PageSize = 1 })) listed.Add(j.JobId);   // a page per job
        Assert.Equal([second.JobId, job.JobId], listed);

        // A 404 is a ClientResultException with the status and OpenAI's error body.
        var missing = await Assert.ThrowsAsync<ClientResultException>(() => fineTuning.GetJobAsync("ftjob-missing"));
        Assert.Equal(404, missing.Status);

        // Models
        var models = openai.GetOpenAIModelClient();
        Assert.Contains((await models.GetModelsAsync()).Value, m => m.Id == fineTuned);
        OpenAIModel model = await models.GetModelAsync(fineTuned);
        Assert.Equal(fineTuned, model.Id);

        // Chat, whole and streamed
        var chat = openai.GetChatClient(fineTuned);
        var hamlet = new List<OpenAI.Chat.ChatMessage> { new UserChatMessage("Who wrote Hamlet?") };
        ChatCompletion answer = await chat.CompleteChatAsync(hamlet, new ChatCompletionOptions { Temperature = 0 });
        Assert.Equal("Shakespeare.", answer.Content[0].Text);
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Stop, answer.FinishReason);
        Assert.True(answer.Usage.OutputTokenCount > 0);
        var streamed = new System.Text.StringBuilder();
        ChatTokenUsage? usage = null;
        await foreach (var update in chat.CompleteChatStreamingAsync(hamlet, new ChatCompletionOptions { Temperature = 0 }))
        {
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            usage ??= update.Usage;
        }
        Assert.Equal("Shakespeare.", streamed.ToString());
        Assert.Equal(answer.Usage.OutputTokenCount, usage?.OutputTokenCount);   // the SDK asks for include_usage when streaming

        // Legacy completions: the SDK's client for them is internal, so the request goes through its pipeline as raw JSON.
        var legacy = await SendAsync(openai, "completions", new { model = "tiny-llama-demo", prompt = "Hi", max_tokens = 3, temperature = 0, logit_bias = new Dictionary<string, int> { ["120"] = 100 } });
        Assert.Equal("xxx", legacy["choices"]![0]!["text"]!.GetValue<string>());
        Assert.Equal(3, legacy["usage"]!["completion_tokens"]!.GetValue<int>());

        // Microsoft.Extensions.AI: an IChatClient over the fine-tuned model.
        IChatClient client = chat.AsIChatClient();
        var response = await client.GetResponseAsync("Who wrote Hamlet?", new ChatOptions { Temperature = 0 });
        Assert.Equal("Shakespeare.", response.Text);
        Assert.Equal(fineTuned, response.ModelId);
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.Stop, response.FinishReason);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in client.GetStreamingResponseAsync("Who wrote Hamlet?", new ChatOptions { Temperature = 0, MaxOutputTokens = 20 }))
            updates.Add(update);
        Assert.Equal("Shakespeare.", updates.ToChatResponse().Text);

        // Deleting the model, then the file.
        Assert.True((await models.DeleteModelAsync(fineTuned)).Value.Deleted);
        Assert.Equal(404, (await Assert.ThrowsAsync<ClientResultException>(() => models.GetModelAsync(fineTuned))).Status);
        Assert.True((await files.DeleteFileAsync(file.Id)).Value.Deleted);
    }

    /// <summary>Polls the job (the SDK's UpdateStatus) until its status passes <paramref name="done"/>.</summary>
    static async Task WaitAsync(FineTuningJob job, Func<FineTuningStatus, bool> done)
    {
        var deadline = DateTime.UtcNow.AddMinutes(3);
        while (!done(job.Status))
        {
            Assert.True(DateTime.UtcNow < deadline, $"job {job.JobId} is still {job.Status}");
            await Task.Delay(100);
            await job.UpdateStatusAsync();
        }
    }

    /// <summary>A POST the SDK has no method for, sent through its pipeline (its auth, retries and errors) as raw JSON.</summary>
    static async Task<JsonNode> SendAsync(OpenAIClient openai, string path, object body)
    {
        using var message = openai.Pipeline.CreateMessage();
        message.Request.Method = "POST";
        message.Request.Uri = new Uri($"{openai.Endpoint.ToString().TrimEnd('/')}/{path}");
        message.Request.Headers.Set("Content-Type", "application/json");
        message.Request.Content = BinaryContent.Create(BinaryData.FromObjectAsJson(body));
        message.ResponseClassifier = PipelineMessageClassifier.Create([200]);
        await openai.Pipeline.SendAsync(message);
        if (message.Response!.IsError) throw new ClientResultException(message.Response);
        return JsonNode.Parse(message.Response.Content.ToString())!;
    }
}
