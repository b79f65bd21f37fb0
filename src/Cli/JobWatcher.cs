using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.AspNetCore.SignalR.Client;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace AdapterService.Cli;

/// <summary>
/// Follows a job to its end: live over the job hub (<c>/hubs/jobs</c>, the dashboard's), or, when the hub cannot be
/// reached (or with <c>--poll</c>), by polling the job and its events. The steps before the watch started come from
/// the job's <c>metrics</c> events, so the loss curve is whole whenever it is watched.
/// </summary>
public sealed class JobWatcher(ServiceClient client, Output output, string jobId)
{
    abstract record Update;
    sealed record Step(int Number, int TotalSteps, int Epoch, double TrainLoss, double? ValidLoss, double TokensPerSecond, double EtaSeconds, JsonObject Data) : Update;
    sealed record Status(string Value, string? FineTunedModel, string? Error) : Update;

    static bool Final(string status) => status is "succeeded" or "failed" or "cancelled";

    readonly Channel<Update> updates = Channel.CreateUnbounded<Update>();
    readonly List<double> losses = [];
    long lastEvent;
    int lastStep, totalSteps, epoch;
    double? lastValidLoss;
    double tokensPerSecond, etaSeconds;
    string status = "";

    /// <summary>Watches until the job ends; answers the exit code: 0 when it succeeded.</summary>
    public async Task<int> WatchAsync(bool poll, CancellationToken cancel)
    {
        var job = (JsonObject)await client.GetAsync($"v1/fine_tuning/jobs/{Uri.EscapeDataString(jobId)}", cancel);
        await using var hub = poll || Final(Output.Text(job["status"])) ? null : await ConnectAsync(cancel);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        // Subscribed first, then the history: a step is in one or the other (or both: steps are taken once each).
        await CatchUpAsync(stop.Token);
        var polling = PollAsync(events: hub is null, stop.Token);
        try
        {
            Status end = output.Rich ? await RenderLiveAsync(stop.Token) : await RenderLinesAsync(stop.Token);
            // The curve above is the first member's; a sweep's members and its winner are a table of their own.
            if (job["sweep"] is not null && !output.Json
                && (await client.GetAsync($"v1/fine_tuning/jobs/{Uri.EscapeDataString(jobId)}", cancel))["sweep"] is JsonObject sweep)
                JobsCommands.SweepTable(output, sweep);
            return end.Value switch
            {
                "succeeded" => 0,
                "failed" => throw new CliException($"job {jobId} failed: {end.Error ?? "no message"}"),
                _ => throw new CliException($"job {jobId} was {end.Value}"),
            };
        }
        finally
        {
            stop.Cancel();
            try { await polling; } catch (OperationCanceledException) { }
        }
    }

    async Task<HubConnection?> ConnectAsync(CancellationToken cancel)
    {
        var hub = new HubConnectionBuilder()
            .WithUrl(new Uri(client.BaseUrl, "hubs/jobs"), o => { if (client.ApiKey is { } key) o.AccessTokenProvider = () => Task.FromResult<string?>(key); })
            .WithAutomaticReconnect()
            .Build();
        hub.On<JsonElement>("progress", m => updates.Writer.TryWrite(StepOf(JsonNode.Parse(m.GetRawText())!.AsObject(), camel: true)));
        hub.On<JsonElement>("status", m =>
        {
            var s = JsonNode.Parse(m.GetRawText())!.AsObject();
            updates.Writer.TryWrite(new Status(Output.Text(s["status"]), s["fineTunedModel"]?.GetValue<string>(), s["error"]?.GetValue<string>()));
        });
        hub.Reconnected += _ => hub.InvokeAsync("SubscribeToJob", jobId);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancel);
            timeout.CancelAfter(TimeSpan.FromSeconds(15));
            await hub.StartAsync(timeout.Token);
            await hub.InvokeAsync("SubscribeToJob", jobId, timeout.Token);
            return hub;
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancel.IsCancellationRequested)
        {
            await hub.DisposeAsync();
            Console.Error.WriteLine($"note: no live updates from {client.BaseUrl}hubs/jobs ({e.Message}); polling instead");
            return null;
        }
    }

    /// <summary>
    /// The job's status every second (the hub's status message can be missed across a reconnect), and without the hub
    /// its new events too.
    /// </summary>
    async Task PollAsync(bool events, CancellationToken cancel)
    {
        string last = "";
        while (!cancel.IsCancellationRequested)
        {
            if (events) await CatchUpAsync(cancel);
            var job = (JsonObject)await client.GetAsync($"v1/fine_tuning/jobs/{Uri.EscapeDataString(jobId)}", cancel);
            var now = Output.Text(job["status"]);
            if (now != last)
            {
                // A final status is sent after the steps' events are read, so the curve ends with the last step.
                if (Final(now)) await CatchUpAsync(cancel);
                updates.Writer.TryWrite(new Status(now, job["fine_tuned_model"]?.GetValue<string>(), job["error"]?["message"]?.GetValue<string>()));
                last = now;
            }
            await Task.Delay(TimeSpan.FromSeconds(events ? 1 : 2), cancel);
        }
    }

    /// <summary>The events since the last one read (newest first from the API, paged with <c>after</c>), as steps in order.</summary>
    async Task CatchUpAsync(CancellationToken cancel)
    {
        var fresh = new List<JsonObject>();
        string? after = null;
        while (true)
        {
            var page = await client.GetAsync($"v1/fine_tuning/jobs/{Uri.EscapeDataString(jobId)}/events?limit=1000{(after is null ? "" : $"&after={after}")}", cancel);
            var data = page["data"]!.AsArray().Select(e => e!.AsObject()).ToList();
            var newer = data.TakeWhile(e => Number(e) > lastEvent).ToList();
            fresh.AddRange(newer);
            if (newer.Count < data.Count || page["has_more"]?.GetValue<bool>() != true || data.Count == 0) break;
            after = Output.Text(data[^1]["id"]);
        }
        if (fresh.Count == 0) return;
        lastEvent = Math.Max(lastEvent, Number(fresh[0]));
        foreach (var e in Enumerable.Reverse(fresh))
            if (Output.Text(e["type"]) == "metrics" && e["data"] is JsonObject data) updates.Writer.TryWrite(StepOf(data, camel: false));
    }

    static long Number(JsonObject e) => long.TryParse(Output.Text(e["id"]).Replace("ftevent-", ""), out var n) ? n : 0;

    /// <summary>A step from the hub's message (camelCase, with the job id) or a metrics event's data (snake_case): held as the latter.</summary>
    static Step StepOf(JsonObject m, bool camel)
    {
        var data = camel
            ? new JsonObject(m.Where(p => p.Key != "jobId").Select(p => KeyValuePair.Create(JsonNamingPolicy.SnakeCaseLower.ConvertName(p.Key), p.Value?.DeepClone())))
            : m;
        double? Get(string name) => data[name] is JsonValue v && v.TryGetValue<double>(out var d) ? d : null;
        return new Step((int)(Get("step") ?? 0), (int)(Get("total_steps") ?? 0), (int)(Get("epoch") ?? 0), Get("train_loss") ?? double.NaN,
            Get("valid_loss"), Get("tokens_per_second") ?? 0, Get("eta_seconds") ?? 0, data);
    }

    /// <summary>Applies an update; false for a step already seen (from both the hub and the events).</summary>
    bool Apply(Update update)
    {
        switch (update)
        {
            case Step step when step.Number <= lastStep:
                return false;
            case Step step:
                (lastStep, totalSteps, epoch, tokensPerSecond, etaSeconds) = (step.Number, step.TotalSteps, step.Epoch, step.TokensPerSecond, step.EtaSeconds);
                losses.Add(step.TrainLoss);
                lastValidLoss = step.ValidLoss ?? lastValidLoss;
                return true;
            case Status s when s.Value == status:
                return false;
            case Status s:
                status = s.Value;
                return true;
        }
        return false;
    }

    /// <summary>Plain lines (redirected output) or JSON lines (<c>--json</c>): one a step, one a status change.</summary>
    async Task<Status> RenderLinesAsync(CancellationToken cancel)
    {
        await foreach (var update in updates.Reader.ReadAllAsync(cancel))
        {
            if (!Apply(update)) continue;
            switch (update)
            {
                case Step step when output.Json:
                    var line = step.Data.DeepClone().AsObject();
                    line.Insert(0, "type", "progress");
                    output.WriteJsonLine(line);
                    break;
                case Step step:
                    Console.Out.WriteLine($"step {step.Number}/{step.TotalSteps}  epoch {step.Epoch}  train_loss {step.TrainLoss:F4}"
                        + (step.ValidLoss is { } valid ? $"  valid_loss {valid:F4}" : "") + $"  {step.TokensPerSecond:F0} tok/s  eta {Eta(step.EtaSeconds)}");
                    break;
                case Status s when output.Json:
                    output.WriteJsonLine(new JsonObject { ["type"] = "status", ["status"] = s.Value, ["fine_tuned_model"] = s.FineTunedModel, ["error"] = s.Error });
                    break;
                case Status s:
                    Console.Out.WriteLine($"status {s.Value}" + (s.FineTunedModel is { } model ? $"  {model}" : "") + (s.Error is { } error ? $"  {error}" : ""));
                    break;
            }
            Console.Out.Flush();
            if (update is Status end && Final(end.Value))
            {
                if (!output.Json && losses.Count > 0)
                    Console.Out.WriteLine($"loss {Sparkline.Render(losses, 60)}  {losses[0]:F4} → {losses[^1]:F4} over {losses.Count} steps");
                return end;
            }
        }
        throw new OperationCanceledException(cancel);
    }

    /// <summary>A terminal: a live panel with a progress bar, the loss and its sparkline, redrawn on every update.</summary>
    async Task<Status> RenderLiveAsync(CancellationToken cancel)
    {
        Status? end = null;
        await output.Terminal.Live(Panel()).AutoClear(false).Overflow(VerticalOverflow.Ellipsis).StartAsync(async live =>
        {
            await foreach (var update in updates.Reader.ReadAllAsync(cancel))
            {
                if (!Apply(update)) continue;
                if (update is Status s && Final(s.Value)) end = s;
                // Steps can come faster than a terminal wants to be redrawn: draw when the queue is empty.
                if (end is null && updates.Reader.Count > 0) continue;
                live.UpdateTarget(Panel(end));
                live.Refresh();
                if (end is not null) return;
            }
        });
        if (end is null) throw new OperationCanceledException(cancel);
        if (end.FineTunedModel is { } model) output.Terminal.MarkupLine($"[green]Fine-tuned model:[/] {Markup.Escape(model)}");
        return end;
    }

    IRenderable Panel(Status? end = null)
    {
        string colour = status switch { "succeeded" => "green", "failed" => "red", "cancelled" => "yellow", "running" => "blue", _ => "grey" };
        int width = Math.Clamp(output.Terminal.Profile.Width - 40, 10, 60);
        double done = totalSteps > 0 ? Math.Min(1, (double)lastStep / totalSteps) : 0;
        int filled = (int)Math.Round(done * width);
        var rows = new List<IRenderable>
        {
            new Markup($"[bold]{Markup.Escape(jobId)}[/]  [{colour}]{Markup.Escape(status)}[/]" + (epoch > 0 ? $"  epoch {epoch}" : "")),
            new Markup($"[{colour}]{new string('━', filled)}[/][grey]{new string('━', width - filled)}[/]  {lastStep}/{(totalSteps > 0 ? totalSteps : "?")}  {done * 100:F0}%"
                + (status == "running" && lastStep > 0 ? $"  eta {Eta(etaSeconds)}  {tokensPerSecond:F0} tok/s" : "")),
        };
        if (losses.Count > 0)
            rows.Add(new Markup($"loss [bold]{losses[^1]:F4}[/]  [aqua]{Sparkline.Render(losses, width)}[/]"
                + (lastValidLoss is { } valid ? $"  valid {valid:F4}" : "")));
        if (end?.Error is { } error) rows.Add(new Markup($"[red]{Markup.Escape(error)}[/]"));
        return new Rows(rows);
    }

    static string Eta(double seconds) => seconds < 1 ? "<1s" : TimeSpan.FromSeconds(Math.Round(seconds)).ToString(seconds >= 3600 ? @"h\:mm\:ss" : seconds >= 60 ? @"m\:ss" : @"s\s");
}
