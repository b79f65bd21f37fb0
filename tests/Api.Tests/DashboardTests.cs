using System.Diagnostics;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Xunit.Abstractions;

namespace AdapterService.Api.Tests;

/// <summary>
/// The web dashboard in a real browser: Debian's chromium driven by playwright-core (tests/dashboard/dashboard.mjs,
/// installed with the browser by scripts/test.sh) against the service as a real process. Screenshots go to docs/screenshots.
/// </summary>
public sealed class DashboardTests(ITestOutputHelper log)
{
    static readonly string Root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", ".."));
    static readonly string Screenshots = Path.Combine(Root, "docs", "screenshots");

    static readonly (string Question, string Answer)[] Examples =
    [
        ("What color is the sky?", "Blue, on a clear day."), ("What color is grass?", "Green."), ("What color is snow?", "White."),
        ("What color is coal?", "Black."), ("What color is a lemon?", "Yellow."), ("What color is a ripe tomato?", "Red."),
        ("What color is the sea?", "Blue or green."), ("What color is an orange?", "Orange."), ("What color is milk?", "White."),
        ("What color is a plum?", "Purple."), ("What color is rust?", "Reddish brown."), ("What color is the night sky?", "Black, with stars."),
    ];

    [Fact]
    public async Task AJobSubmittedThroughTheFormIsWatchedLiveAndItsModelStreamsInThePlayground()
    {
        using var folder = new TempFolder("adapter-service-dashboard-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var training = Path.Combine(folder.FullName, "colors.jsonl");
        await File.WriteAllLinesAsync(training, Examples.Select(e => Api.ChatLine(e.Question, e.Answer)));

        await using var browser = Browser.Start(log, "tour", BaseUrl(service), training, Screenshots);
        await browser.FinishAsync(TimeSpan.FromMinutes(3));
    }

    [Fact]
    public async Task TwoRunsAreComparedADpoJobShowsItsObjectiveAndAFileIsPreviewedBeforeTraining()
    {
        using var folder = new TempFolder("adapter-service-dashboard-compare-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var http = service.Http;
        var lines = Examples.Select(e => Api.ChatLine(e.Question, e.Answer)).ToList();
        var training = await Api.UploadFileAsync(http, lines);
        var validation = await Api.UploadFileAsync(http, lines.Take(4));
        // An eval of 4 items and two criteria; run A scores each checkpoint with it (2 runs of 4 short answers).
        var evalId = (string)(await Api.JsonAsync(await http.PostAsJsonAsync("/v1/evals", new
        {
            name = "colors",
            data_source_config = new { type = "custom", item_schema = new { type = "object", properties = new { question = new { type = "string" }, answer = new { type = "string" } } } },
            testing_criteria = new object[]
            {
                new { type = "string_check", name = "exact", input = "{{sample.output_text}}", reference = "{{item.answer}}", operation = "eq" },
                new { type = "text_similarity", name = "similar", input = "{{sample.output_text}}", reference = "{{item.answer}}", evaluation_metric = "fuzzy_match", pass_threshold = 0.3 },
            },
        })))["id"]!;
        var evalSource = new
        {
            type = "completions",
            input_messages = new { type = "template", template = new[] { new { role = "user", content = "{{item.question}}" } } },
            sampling_params = new { temperature = 0, max_completion_tokens = 8, seed = 1 },
            source = new { type = "file_content", content = Examples.Take(4).Select(e => new { item = new { question = e.Question, answer = e.Answer } }).ToArray() },
        };
        // Two runs that differ in rank, learning rate and seed (2 epochs of 3 batches: 6 steps each, a validation loss per epoch).
        var a = await Api.CreateJobAsync(http, new
        {
            model = "tiny-llama-demo", training_file = training, validation_file = validation, seed = 1, suffix = "rank4",
            hyperparameters = new { n_epochs = 2, batch_size = 4 }, adapter = new { type = "lora", rank = 4 },
            eval = new { id = evalId, data_source = evalSource },
        });
        var b = await Api.CreateJobAsync(http, new
        {
            model = "tiny-llama-demo", training_file = training, validation_file = validation, seed = 2, suffix = "rank8",
            hyperparameters = new { n_epochs = 2, batch_size = 4, learning_rate_multiplier = 3 }, adapter = new { type = "lora", rank = 8 },
        });
        // A DPO job: its progress carries the reward margin and preference accuracy.
        var pairs = await Api.UploadFileAsync(http, Examples.Select((e, i) => JsonSerializer.Serialize(new
        {
            input = new { messages = new[] { new { role = "user", content = e.Question } } },
            preferred_output = new[] { new { role = "assistant", content = e.Answer } },
            non_preferred_output = new[] { new { role = "assistant", content = Examples[(i + 1) % Examples.Length].Answer } },
        })));
        var dpo = await Api.CreateJobAsync(http, new
        {
            model = "tiny-llama-demo", training_file = pairs, seed = 3, suffix = "dpo",
            method = new { type = "dpo", dpo = new { hyperparameters = new { n_epochs = 2, batch_size = 4 } } },
        });
        // The preview's file: one example longer than tiny-llama-demo's context of 512 tokens.
        var preview = await Api.UploadFileAsync(http, [.. lines, Api.ChatLine("Tell me a long story.", string.Join(" ", Enumerable.Repeat("Once upon a time.", 80)))]);
        var ids = new[] { a, b, dpo }.Select(j => (string)j["id"]!).ToList();
        foreach (var id in ids)
        {
            var done = await Api.WaitForJobAsync(http, id, s => s is "succeeded" or "failed" or "cancelled", TimeSpan.FromMinutes(5));   // seconds each on an idle machine
            Assert.True((string?)done["status"] == "succeeded", done.ToJsonString());
        }
        // The base and run A's model scored in one call (data_source.models: one run each), beside A's checkpoint runs.
        var fineTuned = (string)(await Api.JsonAsync(await http.GetAsync($"/v1/fine_tuning/jobs/{ids[0]}")))["fine_tuned_model"]!;
        var call = await Api.JsonAsync(await http.PostAsJsonAsync($"/v1/evals/{evalId}/runs", new
        {
            name = "base and rank4", data_source = new { evalSource.type, evalSource.input_messages, evalSource.sampling_params, evalSource.source, models = new[] { "tiny-llama-demo", fineTuned } },
        }));
        foreach (var run in call["runs"]!.AsArray())
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(2);
            for (string status = ""; status != "completed"; await Task.Delay(200))
            {
                var current = await Api.JsonAsync(await http.GetAsync($"/v1/evals/{evalId}/runs/{run!["id"]}"));
                status = (string)current["status"]!;
                Assert.True(status is "queued" or "in_progress" or "completed" && DateTime.UtcNow < deadline, current.ToJsonString());
            }
        }

        await using var browser = Browser.Start(log, "compare", BaseUrl(service), ids[0], ids[1], ids[2], preview, evalId, Screenshots);
        await browser.FinishAsync(TimeSpan.FromMinutes(2));
    }

    [Fact]
    public async Task AJobPageCatchesUpAfterTheServiceIsKilledAndRestartedWithoutDuplicatePoints()
    {
        using var folder = new TempFolder("adapter-service-dashboard-restart-");
        var first = await ServiceProcess.StartAsync(folder.FullName);
        int port = first.Http.BaseAddress!.Port;
        ServiceProcess? second = null;
        try
        {
            var fileId = await Api.UploadFileAsync(first.Http, Examples.Select(e => Api.ChatLine(e.Question, e.Answer)));
            // 12 examples one at a time for 10 epochs: 120 steps. The job is paused at once and resumed only when the page is
            // live on it, so it is still running when the service is killed however fast the machine trains (on a quiet
            // one, 120 steps once ended before the browser had opened the page).
            var job = await Api.CreateJobAsync(first.Http, new
            {
                model = "tiny-llama-demo", training_file = fileId, seed = 5, suffix = "restart",
                hyperparameters = new { n_epochs = 10, batch_size = 1 },
            });
            var jobId = (string)job["id"]!;
            Assert.True((await first.Http.PostAsync($"/v1/fine_tuning/jobs/{jobId}/pause", null)).IsSuccessStatusCode);

            await using var browser = Browser.Start(log, "reconnect", BaseUrl(first), jobId, "120", Screenshots);
            await browser.WaitForLineAsync("PAGE_LIVE", TimeSpan.FromMinutes(1));
            Assert.True((await first.Http.PostAsync($"/v1/fine_tuning/jobs/{jobId}/resume", null)).IsSuccessStatusCode);
            await browser.WaitForLineAsync("READY_TO_KILL", TimeSpan.FromMinutes(2));
            await first.KillAsync();
            await browser.WaitForLineAsync("DISCONNECTED", TimeSpan.FromSeconds(30));
            second = await ServiceProcess.StartAsync(folder.FullName, port);
            await browser.FinishAsync(TimeSpan.FromMinutes(3));

            var done = await Api.WaitForFinishAsync(second.Http, jobId);
            Api.AssertSucceeded(done);
        }
        finally
        {
            await first.DisposeAsync();
            if (second is not null) await second.DisposeAsync();
        }
    }

    [Fact]
    public async Task ASweepsMembersAreShownSideBySideWhileTheyTrain()
    {
        using var folder = new TempFolder("adapter-service-dashboard-sweep-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var lines = Examples.Select(e => Api.ChatLine(e.Question, e.Answer)).ToList();
        var training = await Api.UploadFileAsync(service.Http, lines);
        var validation = await Api.UploadFileAsync(service.Http, lines.Take(4));

        // The page creates the sweep itself (as any client would) once it is open, so that it watches every step.
        await using var browser = Browser.Start(log, "sweep", BaseUrl(service), training, validation, Screenshots);
        await browser.FinishAsync(TimeSpan.FromMinutes(3));
    }

    [Fact]
    public async Task TheDashboardScriptsPassTheTypeChecker()
    {
        // JSDoc types, checked by TypeScript (src/Api/Dashboard/jsconfig.json); node_modules comes from the build's npm ci.
        var dashboard = Path.Combine(Root, "src", "Api", "Dashboard");
        var tsc = Path.Combine(dashboard, "node_modules", "typescript", "bin", "tsc");
        Assert.True(File.Exists(tsc), $"{tsc} is missing; building src/Api runs npm ci in {dashboard}");
        var start = new ProcessStartInfo("node", [tsc, "-p", "jsconfig.json"])
        {
            WorkingDirectory = dashboard, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(2));
        Assert.True(process.ExitCode == 0, $"tsc found type errors:\n{await output}\n{await errors}");
    }

    static string BaseUrl(ServiceProcess service) => service.Http.BaseAddress!.ToString().TrimEnd('/');

    /// <summary>One run of dashboard.mjs; its stdout lines can be awaited one by one.</summary>
    sealed class Browser : IAsyncDisposable
    {
        readonly Process process;
        readonly ITestOutputHelper log;
        readonly Channel<string> lines = Channel.CreateUnbounded<string>();
        readonly StringBuilder output = new();

        Browser(Process process, ITestOutputHelper log) => (this.process, this.log) = (process, log);

        public static Browser Start(ITestOutputHelper log, params string[] arguments)
        {
            var scripts = Path.Combine(Root, "tests", "dashboard");
            Assert.True(Directory.Exists(Path.Combine(scripts, "node_modules", "playwright-core")),
                $"playwright-core is missing from {scripts}; scripts/test.sh installs it (npm ci) and Debian's chromium");
            Directory.CreateDirectory(Screenshots);
            var start = new ProcessStartInfo("node", [Path.Combine(scripts, "dashboard.mjs"), .. arguments])
            {
                WorkingDirectory = scripts, RedirectStandardOutput = true, RedirectStandardError = true,
            };
            var browser = new Browser(Process.Start(start)!, log);
            browser.process.OutputDataReceived += (_, e) =>
            {
                if (e.Data is null) { browser.lines.Writer.TryComplete(); return; }
                browser.Record(e.Data);
                browser.lines.Writer.TryWrite(e.Data);
            };
            browser.process.ErrorDataReceived += (_, e) => { if (e.Data is not null) browser.Record(e.Data); };
            browser.process.BeginOutputReadLine();
            browser.process.BeginErrorReadLine();
            return browser;
        }

        void Record(string line)
        {
            lock (output) output.AppendLine(line);
            try { log.WriteLine(line); } catch (InvalidOperationException) { }   // a line after the test ended
        }

        string Output() { lock (output) return output.ToString(); }

        public async Task WaitForLineAsync(string prefix, TimeSpan timeout)
        {
            using var cancel = new CancellationTokenSource(timeout);
            try
            {
                await foreach (var line in lines.Reader.ReadAllAsync(cancel.Token))
                    if (line.StartsWith(prefix, StringComparison.Ordinal)) return;
            }
            catch (OperationCanceledException) { }
            Assert.Fail($"dashboard.mjs did not print {prefix} within {timeout}:\n{Output()}");
        }

        public async Task FinishAsync(TimeSpan timeout)
        {
            try { await process.WaitForExitAsync().WaitAsync(timeout); }
            catch (TimeoutException) { Assert.Fail($"dashboard.mjs did not finish within {timeout}:\n{Output()}"); }
            process.WaitForExit();   // flushes the redirected output
            Assert.True(process.ExitCode == 0, $"dashboard.mjs exited {process.ExitCode}:\n{Output()}");
            Assert.Contains("OK", Output().Split('\n').Select(l => l.Trim()));
        }

        public ValueTask DisposeAsync()
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
            process.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
