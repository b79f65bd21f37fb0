using System.Diagnostics;

namespace AdapterService.Api.Tests;

/// <summary>The official OpenAI Node client (tests/openai-client, installed by scripts/test.sh) against a running service.</summary>
public sealed class OpenAiClientTests
{
    [Fact]
    public async Task TheOfficialNodeClientDrivesTheServiceUnchanged()
    {
        var clientDir = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "openai-client"));
        Assert.True(Directory.Exists(Path.Combine(clientDir, "node_modules", "openai")),
            $"the openai npm package is missing from {clientDir}; scripts/test.sh installs it (npm ci)");
        using var folder = new TempFolder("adapter-service-openai-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var training = Path.Combine(folder.FullName, "train.jsonl");
        await File.WriteAllLinesAsync(training, Enumerable.Repeat(Api.ChatLine("Who wrote Hamlet?", "Shakespeare."), 10));

        var node = new ProcessStartInfo("node", [Path.Combine(clientDir, "client.mjs"), $"{service.Http.BaseAddress}v1", training])
        {
            WorkingDirectory = clientDir, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        using var process = Process.Start(node)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(4));
        Assert.True(process.ExitCode == 0, $"node exited {process.ExitCode}:\n{await output}\n{await errors}");
        Assert.Contains("every call succeeded", await output);
    }

    /// <summary>
    /// Reinforcement fine-tuning (tests/openai-client/reinforcement.mjs): GRPO raises the held-out reward by at least 0.2,
    /// with a text_similarity grader from the base and a string_check grader from a supervised model that is right only
    /// sometimes; bad graders and files are 400s naming the field, and nothing is queued for them.
    /// </summary>
    [Fact]
    public async Task ReinforcementFineTuningRaisesTheHeldOutReward()
    {
        var clientDir = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "openai-client"));
        Assert.True(Directory.Exists(Path.Combine(clientDir, "node_modules", "openai")),
            $"the openai npm package is missing from {clientDir}; scripts/test.sh installs it (npm ci)");
        using var folder = new TempFolder("adapter-service-rft-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var node = new ProcessStartInfo("node", [Path.Combine(clientDir, "reinforcement.mjs"), $"{service.Http.BaseAddress}v1", folder.FullName])
        {
            WorkingDirectory = clientDir, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        using var process = Process.Start(node)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(5));
        Assert.True(process.ExitCode == 0, $"node exited {process.ExitCode}:\n{await output}\n{await errors}");
        Assert.Contains("every call succeeded", await output);
    }
}
