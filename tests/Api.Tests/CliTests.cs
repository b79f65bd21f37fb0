using System.Diagnostics;
using System.IO.Compression;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace AdapterService.Api.Tests;

/// <summary>
/// The <c>adapters</c> command-line client (src/Cli), built beside this project and run as a child process with no
/// terminal, against a running service process with auth on: its plain and JSON output, the live watch over the hub,
/// the watch by polling, and its errors (the API's message, exit code 1).
/// </summary>
public sealed partial class CliTests
{
    const string AdminKey = "sk-admin-cli-test";

    [Fact]
    public async Task TheCommandLineClientUploadsTrainsWatchesChatsAndExports()
    {
        using var folder = new TempFolder("adapter-service-cli-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName, ("Auth__AdminKey", AdminKey));
        var cli = new Cli(service.Http.BaseAddress!, folder.FullName, AdminKey);
        await File.WriteAllLinesAsync(Path.Combine(folder.FullName, "train.jsonl"), Enumerable.Repeat(Api.ChatLine("Who wrote Hamlet?", "Shakespeare."), 10));

        // Redirected output is plain: the upload prints the file's id alone, for `FILE=$(adapters files upload …)`.
        var upload = await cli.RunAsync("files", "upload", "train.jsonl");
        string fileId = upload.Ok().Stdout.Trim();
        Assert.Matches("^file-[A-Za-z0-9]{24}$", fileId);
        Assert.Contains($"{fileId}\ttrain.jsonl\t", (await cli.RunAsync("files", "list")).Ok().Stdout);

        // Bad input: the message names what is wrong (the API's own message and code), and the exit code is 1.
        var missing = await cli.RunAsync("files", "upload", "missing.jsonl");
        Assert.Equal((1, "error: no such file: missing.jsonl"), (missing.ExitCode, missing.Stderr.Trim()));
        var badModel = await cli.RunAsync("jobs", "create", "--model", "no-such-model", "--training-file", fileId);
        Assert.Equal(1, badModel.ExitCode);
        Assert.Matches(@"^error: .*no-such-model.* \(model_not_found\)$", badModel.Stderr.Trim());
        var noKey = await new Cli(service.Http.BaseAddress!, folder.FullName, apiKey: null).RunAsync("models", "list");
        Assert.Equal(1, noKey.ExitCode);
        Assert.Contains("You didn't provide an API key", noKey.Stderr);
        Assert.Contains("set ADAPTERS_API_KEY", noKey.Stderr);
        var unknownJob = await cli.RunAsync("jobs", "get", "ftjob-missing");
        Assert.Equal(1, unknownJob.ExitCode);
        Assert.Contains("ftjob-missing", unknownJob.Stderr);

        // A job created and watched over the hub to its end: every step's line once, the status, the loss sparkline.
        var watched = (await cli.RunAsync("jobs", "create", "--model", "tiny-llama-demo", "--training-file", fileId, "--epochs", "6",
            "--batch-size", "2", "--lr-multiplier", "1", "--suffix", "cli", "--seed", "3", "--watch")).Ok();
        Assert.DoesNotContain("polling instead", watched.Stderr);   // the hub answered (with the key as access token)
        var lines = watched.Stdout.Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        string jobId = lines[0];
        Assert.Matches("^ftjob-[A-Za-z0-9]{24}$", jobId);
        var steps = lines.Select(l => StepLine().Match(l)).Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value)).ToList();
        Assert.Equal(Enumerable.Range(1, 30), steps);
        Assert.All(lines.Where(l => l.StartsWith("step ")), l => Assert.Matches(StepLine(), l));
        string fineTuned = $"ft:tiny-llama-demo:cli:{jobId}";
        Assert.Contains($"status succeeded  {fineTuned}", lines);
        var sparkline = Assert.Single(lines, l => l.StartsWith("loss "));
        Assert.Matches(@"^loss [▁▂▃▄▅▆▇█]{30}  \d+\.\d{4} → \d+\.\d{4} over 30 steps$", sparkline);
        Assert.StartsWith("loss █", sparkline);   // the first step's loss is the highest
        Assert.Equal("succeeded", JsonNode.Parse((await cli.RunAsync("jobs", "get", jobId, "--json")).Ok().Stdout)!["status"]!.GetValue<string>());

        // Watching again by polling the events, as JSON lines: the whole curve, then the final status.
        var polled = (await cli.RunAsync("jobs", "watch", jobId, "--poll", "--json")).Ok();
        var messages = polled.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.Equal(Enumerable.Range(1, 30), messages.Where(m => m["type"]!.GetValue<string>() == "progress").Select(m => m["step"]!.GetValue<int>()));
        Assert.Equal(30, messages[0]["total_steps"]!.GetValue<int>());
        Assert.Equal(fineTuned, messages[^1]["fine_tuned_model"]!.GetValue<string>());
        Assert.Equal("succeeded", messages[^1]["status"]!.GetValue<string>());

        Assert.Contains(fineTuned, (await cli.RunAsync("models", "list")).Ok().Stdout.Split('\n').Select(l => l.Split('\t')[0]));

        // Chat from a pipe: one answer per prompt line (greedy), and as JSON lines.
        var chat = (await cli.RunAsync(["chat", fineTuned, "--temperature", "0"], stdin: "Who wrote Hamlet?\n\nWho wrote Hamlet?\n")).Ok();
        Assert.Equal("Shakespeare.\nShakespeare.\n", chat.Stdout.ReplaceLineEndings("\n"));
        var chatJson = JsonNode.Parse((await cli.RunAsync(["chat", fineTuned, "--temperature", "0", "--json", "--system", "Be brief."], stdin: "Who wrote Hamlet?\n")).Ok().Stdout)!;
        Assert.Equal("stop", chatJson["finish_reason"]!.GetValue<string>());
        Assert.Equal("Who wrote Hamlet?", chatJson["prompt"]!.GetValue<string>());
        var badChat = await cli.RunAsync(["chat", "no-such-model"], stdin: "Hi\n");
        Assert.Equal(1, badChat.ExitCode);
        Assert.Contains("no-such-model", badChat.Stderr);

        // The merged model as a Hugging Face zip, and the adapter (named by its model) as a PEFT zip.
        var export = (await cli.RunAsync("models", "export", fineTuned, "-o", "merged.zip")).Ok();
        string merged = Path.Combine(folder.FullName, "merged.zip");
        Assert.Equal($"{merged}\t{new FileInfo(merged).Length}", export.Stdout.Trim());
        using (var zip = ZipFile.OpenRead(merged))
            Assert.Superset(new HashSet<string> { "config.json", "model.safetensors" }, zip.Entries.Select(e => e.FullName).ToHashSet());
        var adapters = JsonNode.Parse((await cli.RunAsync("adapters", "list", "--json")).Ok().Stdout)!["data"]!.AsArray();
        var adapter = Assert.Single(adapters, a => a!["model"]!.GetValue<string>() == fineTuned)!;
        var download = JsonNode.Parse((await cli.RunAsync("adapters", "download", fineTuned, "--json")).Ok().Stdout)!;
        Assert.Equal(Path.Combine(folder.FullName, $"{adapter["id"]!.GetValue<string>()}.zip"), download["path"]!.GetValue<string>());
        using (var zip = ZipFile.OpenRead(download["path"]!.GetValue<string>()))
            Assert.Superset(new HashSet<string> { "adapter_config.json", "adapter_model.safetensors" }, zip.Entries.Select(e => e.FullName).ToHashSet());
        var badExport = await cli.RunAsync("models", "export", "no-such-model", "-o", "nothing.zip");
        Assert.Equal(1, badExport.ExitCode);
        Assert.False(File.Exists(Path.Combine(folder.FullName, "nothing.zip")) || File.Exists(Path.Combine(folder.FullName, "nothing.zip.part")));

        // A sweep from the terminal: a comma-separated list, watched to its end, then its members side by side.
        var notANumber = await cli.RunAsync("jobs", "create", "--model", "tiny-llama-demo", "--training-file", fileId, "--lr-multiplier", "0.5,x");
        Assert.Equal((1, "error: --lr-multiplier: not a number: x"), (notANumber.ExitCode, notANumber.Stderr.Trim()));
        var tooMany = await cli.RunAsync("jobs", "create", "--model", "tiny-llama-demo", "--training-file", fileId, "--validation-file", fileId, "--rank", "1,2,4,8,16");
        Assert.Equal(1, tooMany.ExitCode);
        Assert.Contains("adapter.rank", tooMany.Stderr);   // the service's 400 names the field
        var swept = (await cli.RunAsync("jobs", "create", "--model", "tiny-llama-demo", "--training-file", fileId, "--validation-file", fileId,
            "--epochs", "2", "--batch-size", "5", "--lr-multiplier", "0.25,4", "--seed", "3", "--watch")).Ok();
        string sweepId = swept.Stdout.Split('\n')[0].Trim();
        Assert.Contains("\nmember\tlearning_rate_multiplier\t", swept.Stdout);   // the watch ends with the members' table
        var table = (await cli.RunAsync("jobs", "get", sweepId)).Ok().Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).SkipWhile(l => !l.StartsWith("member\t")).ToList();
        Assert.Equal("member\tlearning_rate_multiplier\tstep\ttrain_loss\tvalid_loss\tcheckpoint", table[0]);
        var members = table.Skip(1).Select(l => l.Split('\t')).ToList();
        Assert.Equal(["0.25", "4"], members.Select(m => m[1]));
        Assert.Equal(["1", "2"], members.Select(m => m[0].TrimEnd(' ', '*')));
        var job = JsonNode.Parse((await cli.RunAsync("jobs", "get", sweepId, "--json")).Ok().Stdout)!;
        int best = job["sweep"]!["best_member"]!.GetValue<int>();
        Assert.Equal($"{best + 1} *", Assert.Single(members, m => m[0].EndsWith('*'))[0]);
        Assert.All(members, m => Assert.Matches(@"^\d+\.\d+$", m[4]));   // each member's validation loss
    }

    [GeneratedRegex(@"^step (\d+)/30  epoch [1-6]  train_loss \d+\.\d{4}  \d+ tok/s  eta \S+$")]
    private static partial Regex StepLine();

    sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public Result Ok()
        {
            Assert.True(ExitCode == 0, $"exit code {ExitCode}\nstdout:\n{Stdout}\nstderr:\n{Stderr}");
            return this;
        }
    }

    /// <summary>Runs <c>dotnet adapters.dll</c> (src/Cli's build output) in a folder, with the service's URL and a key in its environment.</summary>
    sealed class Cli(Uri baseUrl, string workingDirectory, string? apiKey)
    {
        static readonly string Dll = Path.Combine(
            AppContext.BaseDirectory.Replace(Path.Combine("tests", "Api.Tests"), Path.Combine("src", "Cli")), "adapters.dll");

        public Task<Result> RunAsync(params string[] args) => RunAsync(args, stdin: "");

        public async Task<Result> RunAsync(string[] args, string stdin)
        {
            var start = new ProcessStartInfo("dotnet", [Dll, .. args])
            {
                WorkingDirectory = workingDirectory, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
                StandardOutputEncoding = System.Text.Encoding.UTF8,
            };
            start.Environment["ADAPTERS_BASE_URL"] = baseUrl.ToString();
            start.Environment.Remove("OPENAI_API_KEY");
            if (apiKey is null) start.Environment.Remove("ADAPTERS_API_KEY");
            else start.Environment["ADAPTERS_API_KEY"] = apiKey;
            using var process = Process.Start(start)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.StandardInput.WriteAsync(stdin);
            process.StandardInput.Close();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
            try { await process.WaitForExitAsync(timeout.Token); }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException($"adapters {string.Join(' ', args)} ran over 5 minutes:\n{await stdout}\n{await stderr}");
            }
            return new Result(process.ExitCode, await stdout, await stderr);
        }
    }
}
