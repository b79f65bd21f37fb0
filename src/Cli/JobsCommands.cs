using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Spectre.Console;

namespace AdapterService.Cli;

/// <summary>
/// <c>jobs create|list|get|watch|cancel|pause|resume</c>. Plain HTTP: the job object carries our <c>adapter</c>
/// extension, and pause and resume are protocol methods only in the SDK.
/// </summary>
public static class JobsCommands
{
    static readonly string[] JobFields =
        ["id", "status", "model", "fine_tuned_model", "training_file", "validation_file", "created_at", "finished_at", "trained_tokens",
         "method", "adapter", "suffix", "seed", "result_files", "error"];

    public static Command Create(Runner run)
    {
        var model = new Option<string>("--model", "-m") { Description = "The base model (tiny-llama-demo) or a fine-tuned model to continue", Required = true };
        var training = new Option<string>("--training-file", "-t") { Description = "An uploaded file's id, or a local file to upload first", Required = true };
        var validation = new Option<string?>("--validation-file", "-v") { Description = "An uploaded file's id, or a local file to upload first" };
        var method = new Option<string?>("--method") { Description = "The adapter method: lora (default), dora, lily, rlrr, mixlora" };
        var rank = new Option<string?>("--rank") { Description = "The adapter's rank; a comma-separated list (4,8,16) trains a sweep" };
        var epochs = new Option<int?>("--epochs", "-e") { Description = "Number of epochs (default: auto)" };
        var batch = new Option<int?>("--batch-size") { Description = "Batch size (default: auto)" };
        var lr = new Option<string?>("--lr-multiplier") { Description = "Learning rate multiplier (default: auto, 1); a comma-separated list (0.5,1,2) trains a sweep" };
        var suffix = new Option<string?>("--suffix") { Description = "Part of the fine-tuned model's name" };
        var seed = new Option<int?>("--seed") { Description = "Random seed, for a reproducible adapter" };
        var watch = new Option<bool>("--watch", "-w") { Description = "Follow the job until it ends" };
        var poll = new Option<bool>("--poll") { Description = "Follow the job by polling instead of over the live hub", Recursive = true };
        var create = new Command("create", "Create a fine-tuning job; prints its id") { model, training, validation, method, rank, epochs, batch, lr, suffix, seed, watch };
        create.SetAction(run(async (c, cancel) =>
        {
            var hyperparameters = new JsonObject();
            if (c.Get(epochs) is { } n) hyperparameters["n_epochs"] = n;
            if (c.Get(batch) is { } b) hyperparameters["batch_size"] = b;
            if (c.Get(lr) is { } m) hyperparameters["learning_rate_multiplier"] = Values(m, "--lr-multiplier", whole: false);
            var request = new JsonObject
            {
                ["model"] = c.Get(model),
                ["training_file"] = await FileIdAsync(c, c.Get(training), "--training-file", cancel),
                ["method"] = new JsonObject { ["type"] = "supervised", ["supervised"] = new JsonObject { ["hyperparameters"] = hyperparameters } },
            };
            if (c.Get(validation) is { } v) request["validation_file"] = await FileIdAsync(c, v, "--validation-file", cancel);
            if (c.Get(suffix) is { } s) request["suffix"] = s;
            if (c.Get(seed) is { } sd) request["seed"] = sd;
            if (c.Get(method) is not null || c.Get(rank) is not null)
            {
                var adapter = new JsonObject { ["type"] = c.Get(method) ?? "lora" };
                if (c.Get(rank) is { } r) adapter["rank"] = Values(r, "--rank", whole: true);
                request["adapter"] = adapter;
            }
            var job = (JsonObject)await c.Client.PostAsync("v1/fine_tuning/jobs", request, cancel);
            string id = Output.Text(job["id"]);
            if (c.Output.Json) { if (c.Get(watch)) c.Output.WriteJsonLine(job); else c.Output.WriteJson(job); }
            else c.Output.Line(id, $"Created job [green]{id}[/] ({Markup.Escape(Output.Text(job["model"]))}, {Markup.Escape(Output.Text(job["adapter"]?["type"]))})");
            return c.Get(watch) ? await new JobWatcher(c.Client, c.Output, id).WatchAsync(c.Get(poll), cancel) : 0;
        }));

        var limit = new Option<int>("--limit", "-n") { Description = "How many jobs", DefaultValueFactory = _ => 20 };
        var list = new Command("list", "List fine-tuning jobs, newest first") { limit };
        list.SetAction(run(async (c, cancel) =>
        {
            var jobs = await c.Client.GetAsync($"v1/fine_tuning/jobs?limit={c.Get(limit)}", cancel);
            if (c.Output.Json) { c.Output.WriteJson(jobs); return 0; }
            c.Output.Table(["id", "status", "model", "fine_tuned_model", "created"], jobs["data"]!.AsArray().Select(j =>
                new[] { Output.Text(j!["id"]), Output.Text(j["status"]), Output.Text(j["model"]), Output.Text(j["fine_tuned_model"]), Output.Time(j["created_at"]) }));
            return 0;
        }));

        var id = new Argument<string>("job_id") { Description = "The job's id (ftjob-…)" };
        var get = new Command("get", "Show a job") { id };
        get.SetAction(run(async (c, cancel) =>
        {
            var job = (JsonObject)await c.Client.GetAsync(JobPath(c.Get(id)), cancel);
            if (c.Output.Json) { c.Output.WriteJson(job); return 0; }
            c.Output.Fields(job, JobFields);
            if (job["sweep"] is JsonObject sweep) SweepTable(c.Output, sweep);
            return 0;
        }));

        var watchCommand = new Command("watch", "Follow a job with a live progress bar and loss curve until it ends; exits 1 unless it succeeded") { id, poll };
        watchCommand.SetAction(run((c, cancel) => new JobWatcher(c.Client, c.Output, c.Get(id)).WatchAsync(c.Get(poll), cancel)));

        var jobs = new Command("jobs", "Create, follow and control fine-tuning jobs") { create, list, get, watchCommand };
        foreach (var (verb, help) in new[] { ("cancel", "Cancel a job"), ("pause", "Pause a running or queued job"), ("resume", "Resume a paused job") })
        {
            var command = new Command(verb, help) { id };
            command.SetAction(run(async (c, cancel) =>
            {
                var job = (JsonObject)await c.Client.PostAsync($"{JobPath(c.Get(id))}/{verb}", null, cancel);
                if (c.Output.Json) c.Output.WriteJson(job);
                else c.Output.Line($"{Output.Text(job["id"])}\t{Output.Text(job["status"])}", $"{Output.Text(job["id"])} is now [bold]{Output.Text(job["status"])}[/]");
                return 0;
            }));
            jobs.Subcommands.Add(command);
        }
        return jobs;
    }

    /// <summary>
    /// One value, or a sweep's list of them (<c>0.5,1,2</c>): the service checks how many and which; only what is not a
    /// number of the option's kind is refused here.
    /// </summary>
    static JsonNode Values(string text, string option, bool whole)
    {
        var values = text.Split(',', StringSplitOptions.TrimEntries).Select(v => (JsonNode)(
            whole ? int.TryParse(v, CultureInfo.InvariantCulture, out int i) ? JsonValue.Create(i) : throw new CliException($"{option}: not a whole number: {v}")
            : double.TryParse(v, CultureInfo.InvariantCulture, out double d) ? JsonValue.Create(d) : throw new CliException($"{option}: not a number: {v}"))).ToList();
        return values.Count == 1 ? values[0] : new JsonArray([.. values]);
    }

    /// <summary>A sweep's members side by side: the swept value, its losses (and eval score), the best one starred.</summary>
    internal static void SweepTable(Output output, JsonObject sweep)
    {
        string parameter = Output.Text(sweep["parameter"]);
        int? best = sweep["best_member"]?.GetValue<int>();
        bool byEval = Output.Text(sweep["scored_by"]).StartsWith("eval_", StringComparison.Ordinal);
        List<string> headers = ["member", parameter, "step", "train_loss", "valid_loss"];
        if (byEval) headers.Add("eval_score");
        headers.Add("checkpoint");
        output.Table([.. headers], (sweep["members"]?.AsArray() ?? []).Select(m =>
        {
            int member = m!["member"]!.GetValue<int>();
            List<string> row = [member == best ? $"{member + 1} *" : $"{member + 1}", Output.Text(m["hyperparameters"]?[parameter]),
                Output.Text(m["step"]), Output.Text(m["train_loss"]), Output.Text(m["valid_loss"])];
            if (byEval) row.Add(Output.Text(m["eval_score"]));
            row.Add(Output.Text(m["checkpoint"]));
            return row.ToArray();
        }));
    }

    static string JobPath(string id) => $"v1/fine_tuning/jobs/{Uri.EscapeDataString(id)}";

    /// <summary>An uploaded file's id as given, or a local file uploaded now: what a terminal user would try first.</summary>
    static async Task<string> FileIdAsync(Context c, string value, string option, CancellationToken cancel)
    {
        if (value.StartsWith("file-", StringComparison.Ordinal) && !File.Exists(value)) return value;
        if (!File.Exists(value)) throw new CliException($"{option}: no such local file, nor a file id (file-…): {value}");
        var file = await FilesCommands.UploadAsync(c.Client, value, "fine-tune", cancel);
        if (!c.Output.Json) Console.Error.WriteLine($"uploaded {value} as {Output.Text(file["id"])}");
        return Output.Text(file["id"]);
    }
}
