using System.Diagnostics;
using Xunit.Abstractions;

namespace AdapterService.Api.Tests;

/// <summary>The official OpenAI Node client (tests/openai-client, installed by scripts/test.sh) against a running service.</summary>
public sealed class OpenAiClientTests(ITestOutputHelper log)
{
    static readonly string ClientDir = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "openai-client"));

    [Fact]
    public async Task TheOfficialNodeClientDrivesTheServiceUnchanged()
    {
        using var folder = new TempFolder("adapter-service-openai-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var training = Path.Combine(folder.FullName, "train.jsonl");
        await File.WriteAllLinesAsync(training, Enumerable.Repeat(Api.ChatLine("Who wrote Hamlet?", "Shakespeare."), 10));

        var output = await RunAsync("client.mjs", [$"{service.Http.BaseAddress}v1", training], TimeSpan.FromMinutes(4));
        Assert.Contains("every call succeeded", output);
    }

    /// <summary>
    /// dpo.mjs: a DPO job and an SFT-on-chosen baseline, both continuing from a fine-tuned model, on a synthetic preference
    /// set; DPO must raise the preferred answers' margin and make them the greedy answers on held-out prompts; bad
    /// preference files and DPO requests get 4xx errors naming the line or field, with nothing stored.
    /// </summary>
    [Fact]
    public async Task ADpoJobMakesTheModelPreferThePreferredAnswers()
    {
        using var folder = new TempFolder("adapter-service-dpo-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);

        var output = await RunAsync("dpo.mjs", [$"{service.Http.BaseAddress}v1", folder.FullName], TimeSpan.FromMinutes(8));
        log.WriteLine(output);   // the measured numbers: held-out margins and greedy answers of the start model, DPO and SFT
        Assert.Contains("every call succeeded", output);
    }

    /// <summary>
    /// sweep.mjs: a sweep of 3 learning-rate multipliers on tiny-llama-demo trains fused and picks the member with the
    /// lowest validation loss (checked against the members' reported losses, which differ); every member's checkpoints are
    /// listed with its hyperparameters and serve; a rank sweep (adapter.rank [2, 8]) trains adapters of those ranks (their
    /// checkpoint files and the served winner's config) and picks the lowest validation loss; a sweep with an eval picks the
    /// member with the highest reported eval score; bad sweeps are 400s naming the field, with nothing stored.
    /// </summary>
    [Fact]
    public async Task ASweepOfThreeLearningRatesPicksTheLowestValidationLoss()
    {
        using var folder = new TempFolder("adapter-service-sweep-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var output = await RunAsync("sweep.mjs", [$"{service.Http.BaseAddress}v1", folder.FullName], TimeSpan.FromMinutes(4));
        log.WriteLine(output);   // each member's losses and the winner
        Assert.Contains("every call succeeded", output);
    }

    /// <summary>
    /// evals.mjs: OpenAI's Evals API through the official client: an eval over the base, two fine-tuned models and a
    /// checkpoint in one call gives each model the counts, per-criterion results and samples of scoring it alone; a job
    /// with an attached eval reports its scores per checkpoint (events and checkpoint metrics, keep_best); output items,
    /// cancel, delete; bad input is a 4xx naming the field, and nothing runs for it.
    /// </summary>
    [Fact]
    public async Task AnEvalOverSeveralModelsScoresEachAsAlone()
    {
        using var folder = new TempFolder("adapter-service-evals-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var output = await RunAsync("evals.mjs", [$"{service.Http.BaseAddress}v1", folder.FullName], TimeSpan.FromMinutes(8));
        log.WriteLine(output);   // per-checkpoint scores, each model's counts, the laps
        Assert.Contains("every call succeeded", output);
    }

    async Task<string> RunAsync(string script, string[] args, TimeSpan timeout)
    {
        Assert.True(Directory.Exists(Path.Combine(ClientDir, "node_modules", "openai")),
            $"the openai npm package is missing from {ClientDir}; scripts/test.sh installs it (npm ci)");
        var node = new ProcessStartInfo("node", [Path.Combine(ClientDir, script), .. args])
        {
            WorkingDirectory = ClientDir, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        using var process = Process.Start(node)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(timeout);
        Assert.True(process.ExitCode == 0, $"node {script} exited {process.ExitCode}:\n{await output}\n{await errors}");
        return await output;
    }

    /// <summary>
    /// Reinforcement fine-tuning (tests/openai-client/reinforcement.mjs): GRPO raises the held-out reward by at least 0.2,
    /// with a text_similarity grader from the base and a string_check grader from a supervised model that is right only
    /// sometimes; bad graders and files are 400s naming the field, and nothing is queued for them.
    /// </summary>
    [Fact]
    public async Task ReinforcementFineTuningRaisesTheHeldOutReward()
    {
        using var folder = new TempFolder("adapter-service-rft-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var output = await RunAsync("reinforcement.mjs", [$"{service.Http.BaseAddress}v1", folder.FullName], TimeSpan.FromMinutes(6));
        log.WriteLine(output);   // the measured held-out rewards before and after each job
        Assert.Contains("every call succeeded", output);
    }
}
