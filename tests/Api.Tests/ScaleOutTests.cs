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
    public async Task WorkersTrainForTheApiAndAJobWhoseWorkerDiesFinishesOnTheOther()
    {
        var database = await NewDatabaseAsync();
        var shared = Directory.CreateTempSubdirectory("adapter-service-scaleout-");
        (string, string)[] common =
        [
            ("Database__Provider", "postgres"), ("ConnectionStrings__Database", database), ("Workers__StateEverySteps", "5"),
            ("Workers__LeaseSeconds", "4"), ("Workers__InvisibilityTimeoutSeconds", "8"),
        ];
        try
        {
            await using var api = await ServiceProcess.StartAsync(shared.FullName, [.. common, ("Service__Role", "api")]);
            var workers = new List<ServiceProcess>();
            for (int i = 0; i < 2; i++) workers.Add(await ServiceProcess.StartWorkerAsync(shared.FullName, common));
            try
            {
                await using var hub = new HubConnectionBuilder().WithUrl(new Uri(api.Http.BaseAddress!, "hubs/jobs")).Build();
                var progress = new List<ProgressMessage>();
                var finished = new TaskCompletionSource<StatusMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
                hub.On<ProgressMessage>("progress", m => { lock (progress) progress.Add(m); });
                hub.On<StatusMessage>("status", m => { if (m.Status is "succeeded" or "failed" or "cancelled") finished.TrySetResult(m); });
                await hub.StartAsync();

                var fileId = await Api.UploadFileAsync(api.Http, Enumerable.Repeat(Api.ChatLine("Which port?", "Rotterdam."), 10));
                var job = await Api.CreateJobAsync(api.Http, new
                {
                    model = "tiny-llama-demo", training_file = fileId, seed = 5, hyperparameters = new { n_epochs = 25, batch_size = 1 },
                });
                var jobId = (string)job["id"]!;
                await hub.InvokeAsync("SubscribeToJob", jobId);

                // Wait until a worker is well into the job, then kill that worker (SIGKILL: no chance to save or hand over).
                var deadline = DateTime.UtcNow.AddMinutes(2);
                while (ProgressCount() < 30 && DateTime.UtcNow < deadline) await Task.Delay(50);
                int owner = await LeaseOwnerPidAsync(database, jobId);
                var victim = workers.Single(w => w.ProcessId == owner);
                await victim.KillAsync();
                int beforeKill = ProgressCount();

                var status = await finished.Task.WaitAsync(TimeSpan.FromMinutes(3));
                Assert.Equal("succeeded", status.Status);
                Assert.NotEqual(owner, await LeaseOwnerPidAsync(database, jobId));   // the other worker finished it

                var events = (await Api.JsonAsync(await api.Http.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000")))["data"]!.AsArray();
                var steps = events.Where(e => (string?)e!["type"] == "metrics").Select(e => (int)e!["data"]!["step"]!).Reverse();
                Assert.Equal(Enumerable.Range(1, 250), steps);   // every step reported once, across two workers
                Assert.Contains(events, e => ((string)e!["message"]!).StartsWith("Fine-tuning job resumed from step", StringComparison.Ordinal));
                List<ProgressMessage> seen;
                lock (progress) seen = progress.ToList();
                Assert.True(seen.Count > beforeKill, "progress from the second worker reached the API's SignalR clients");
                Assert.Equal(250, seen[^1].Step);
                Assert.Equal("Rotterdam.", await Api.ChatAsync(api.Http, status.FineTunedModel!, "Which port?"));

                int ProgressCount() { lock (progress) return progress.Count; }
            }
            finally
            {
                foreach (var w in workers) await w.DisposeAsync();
            }
        }
        finally
        {
            shared.Delete(recursive: true);
        }
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
