using AdapterService.Core.Jobs;
using Microsoft.AspNetCore.SignalR.Client;
using Npgsql;

namespace AdapterService.Api.Tests;

/// <summary>
/// Scale-out on a real PostgreSQL server (started on loopback by scripts/test.sh, which exports its connection string
/// as ADAPTER_SERVICE_TEST_POSTGRES): an API process without training and two standalone workers over one database,
/// one Hangfire queue and one blob folder.
/// </summary>
public sealed class ScaleOutTests
{
    static string Server() => Environment.GetEnvironmentVariable("ADAPTER_SERVICE_TEST_POSTGRES")
        ?? throw new InvalidOperationException("ADAPTER_SERVICE_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which starts PostgreSQL");

    /// <summary>A fresh database on the test server; returns its connection string.</summary>
    static async Task<string> NewDatabaseAsync()
    {
        string name = "scaleout_" + Guid.NewGuid().ToString("N")[..12];
        await using var connection = new NpgsqlConnection(Server());
        await connection.OpenAsync();
        await using (var create = new NpgsqlCommand($"CREATE DATABASE {name}", connection)) await create.ExecuteNonQueryAsync();
        return new NpgsqlConnectionStringBuilder(Server()) { Database = name }.ConnectionString;
    }

    [Fact]
    public async Task TwoWorkersTrainTheApisJobsAndAJobWhoseWorkerDiesFinishesOnTheOther()
    {
        var database = await NewDatabaseAsync();
        using var shared = new TempFolder("adapter-service-scaleout-");
        (string, string)[] common =
        [
            ("Database__Provider", "postgres"), ("ConnectionStrings__Database", database), ("Workers__StateEverySteps", "5"),
            ("Workers__LeaseSeconds", "4"), ("Workers__InvisibilityTimeoutSeconds", "8"),
        ];
        await using var api = await ServiceProcess.StartAsync(shared.FullName, [.. common, ("Service__Role", "api")]);
        await using var hub = new HubConnectionBuilder().WithUrl(new Uri(api.Http.BaseAddress!, "hubs/jobs")).Build();
        var progress = new List<ProgressMessage>();
        var finished = new Dictionary<string, StatusMessage>();
        hub.On<ProgressMessage>("progress", m => { lock (progress) progress.Add(m); });
        hub.On<StatusMessage>("status", m => { if (m.Status is "succeeded" or "failed" or "cancelled") lock (finished) finished[m.JobId] = m; });
        await hub.StartAsync();

        // Six short jobs and a long one, queued (and subscribed to) before any worker is up, so every step is seen live.
        var fileId = await Api.UploadFileAsync(api.Http, Enumerable.Repeat(Api.ChatLine("Which port?", "Rotterdam."), 10));
        async Task<string> Create(int epochs, int batch)
        {
            var job = await Api.CreateJobAsync(api.Http, new
            {
                model = "tiny-llama-demo", training_file = fileId, seed = 5, hyperparameters = new { n_epochs = epochs, batch_size = batch },
            });
            await hub.InvokeAsync("SubscribeToJob", (string)job["id"]!);
            return (string)job["id"]!;
        }
        var small = new List<string>();
        for (int i = 0; i < 6; i++) small.Add(await Create(3, 2));
        var longJob = await Create(25, 1);
        var steps = small.ToDictionary(id => id, _ => 15);
        steps[longJob] = 250;

        var workers = new List<ServiceProcess>();
        try
        {
            for (int i = 0; i < 2; i++) workers.Add(await ServiceProcess.StartWorkerAsync(shared.FullName, common));

            // When the long job is well under way, kill its worker (SIGKILL: no chance to save or hand over).
            var deadline = DateTime.UtcNow.AddMinutes(3);
            while (Seen(longJob).Count < 30 && DateTime.UtcNow < deadline) await Task.Delay(50);
            int owner = await LeaseOwnerPidAsync(database, longJob);
            await workers.Single(w => w.ProcessId == owner).KillAsync();

            while (DateTime.UtcNow < deadline.AddMinutes(2) && Finished() < steps.Count) await Task.Delay(100);
            lock (finished) Assert.All(steps.Keys, id => Assert.Equal("succeeded", finished.GetValueOrDefault(id)?.Status));

            var owners = new HashSet<int>();
            foreach (var id in small) owners.Add(await LeaseOwnerPidAsync(database, id));
            Assert.Equal(workers.Select(w => w.ProcessId).ToHashSet(), owners);                 // both workers trained jobs
            Assert.NotEqual(owner, await LeaseOwnerPidAsync(database, longJob));               // the survivor finished the long one
            foreach (var (id, total) in steps)
            {
                Assert.Equal(Enumerable.Range(1, total), Seen(id));                            // every progress event, live, once
                var events = (await Api.JsonAsync(await api.Http.GetAsync($"/v1/fine_tuning/jobs/{id}/events?limit=1000")))["data"]!.AsArray();
                Assert.Equal(Enumerable.Range(1, total), events.Where(e => (string?)e!["type"] == "metrics").Select(e => (int)e!["data"]!["step"]!).Reverse());
            }
            var longEvents = (await Api.JsonAsync(await api.Http.GetAsync($"/v1/fine_tuning/jobs/{longJob}/events?limit=1000")))["data"]!.AsArray();
            Assert.Contains(longEvents, e => ((string)e!["message"]!).StartsWith("Fine-tuning job resumed from step", StringComparison.Ordinal));
            var model = (string)(await Api.JsonAsync(await api.Http.GetAsync($"/v1/fine_tuning/jobs/{longJob}")))["fine_tuned_model"]!;
            Assert.Equal("Rotterdam.", await Api.ChatAsync(api.Http, model, "Which port?"));
        }
        finally
        {
            foreach (var w in workers) await w.DisposeAsync();
        }

        List<int> Seen(string id) { lock (progress) return progress.Where(p => p.JobId == id).Select(p => p.Step).ToList(); }
        int Finished() { lock (finished) return finished.Count; }
    }

    [Fact]
    public void TheComposeFileValidatesWhereDockerComposeIsInstalled()
    {
        var root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", ".."));
        var compose = File.ReadAllText(Path.Combine(root, "docker-compose.yml"));
        // The same entry points and settings as the processes the test above runs.
        foreach (var expected in new[] { "docker/Dockerfile.api", "docker/Dockerfile.worker", "Database__Provider: postgres", "Service__Role: api", "replicas: 2" })
            Assert.Contains(expected, compose);
        System.Diagnostics.Process? version;
        try
        {
            version = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("docker", ["compose", "version"])
                { RedirectStandardOutput = true, RedirectStandardError = true });
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return;   // no docker at all: the checks above stand
        }
        using (version)
        {
            version?.WaitForExit();
            if (version is not { ExitCode: 0 }) return;   // no compose plugin on this machine: the checks above stand
        }
        using var config = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("docker", ["compose", "config", "--quiet"])
            { WorkingDirectory = root, RedirectStandardError = true, Environment = { ["ADAPTER_SERVICE_ADMIN_KEY"] = "compose-check" } })!;
        config.WaitForExit();
        Assert.Equal(0, config.ExitCode);
    }

    static async Task<int> LeaseOwnerPidAsync(string database, string jobId)
    {
        await using var connection = new NpgsqlConnection(database);
        await connection.OpenAsync();
        await using var query = new NpgsqlCommand("""SELECT "LeaseOwner" FROM "Jobs" WHERE "Id" = @id""", connection);
        query.Parameters.AddWithValue("id", jobId);
        var owner = (string)(await query.ExecuteScalarAsync())!;   // machine:pid:guid
        return int.Parse(owner.Split(':')[1]);
    }
}
