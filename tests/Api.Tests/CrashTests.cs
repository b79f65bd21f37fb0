using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Adapters;
using AdapterService.Core.Storage;
using Microsoft.Data.Sqlite;

namespace AdapterService.Api.Tests;

/// <summary>
/// The service SIGKILLed again and again at random (seeded) moments while jobs train and completions run, then
/// started once more: every job finishes, every step is reported once, no blob is half-written, the database is intact.
/// </summary>
public sealed class CrashTests
{
    const int Kills = 10;

    [Fact]
    public async Task TenKillsDuringTrainingAndInferenceLoseNothingAndCorruptNothing()
    {
        using var folder = new TempFolder("adapter-service-kills-");
        (string, string)[] settings = [("Workers__StateEverySteps", "5")];
        var random = new Random(1123);
        var jobs = new List<string>();
        string? fileId = null, servedModel = null;
        int served = 0, killedWhileTraining = 0;

        for (int kill = 0; kill < Kills; kill++)
        {
            await using var service = await ServiceProcess.StartAsync(folder.FullName, settings);
            fileId ??= await Api.UploadFileAsync(service.Http, Enumerable.Repeat(Api.ChatLine("Capital of Peru?", "Lima"), 10));
            // Keep a job training: a new one whenever the last has finished (each restart resumes the unfinished one).
            if (jobs.Count == 0 || await StatusAsync(service.Http, jobs[^1]) is "succeeded" or "failed" or "cancelled")
                jobs.Add((string)(await Api.CreateJobAsync(service.Http, new
                {
                    model = "tiny-llama-demo", training_file = fileId, seed = kill, hyperparameters = new { n_epochs = 10, batch_size = 1 },
                }))["id"]!);
            servedModel ??= await FineTunedModelAsync(service.Http, jobs);

            using var stop = new CancellationTokenSource();
            var inference = Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    try
                    {
                        var response = await service.Http.PostAsJsonAsync("/v1/completions",
                            new { model = servedModel ?? "tiny-llama-demo", prompt = "Capital of Peru?", max_tokens = 8, temperature = 0 }, stop.Token);
                        Assert.True(response.StatusCode is HttpStatusCode.OK or HttpStatusCode.TooManyRequests, $"completion answered {response.StatusCode}");
                        if (response.IsSuccessStatusCode) Interlocked.Increment(ref served);
                    }
                    catch (Exception e) when (e is HttpRequestException or OperationCanceledException) { }   // the kill
                }
            });
            await Task.Delay(random.Next(200, 2500));
            if (await StatusAsync(service.Http, jobs[^1]) == "running") killedWhileTraining++;
            await service.KillAsync();
            await stop.CancelAsync();
            await inference;
        }

        // A last start finishes what is left.
        await using (var last = await ServiceProcess.StartAsync(folder.FullName, settings))
        {
            foreach (var job in jobs)
            {
                var done = await Api.WaitForFinishAsync(last.Http, job);
                Api.AssertSucceeded(done);
                var events = (await Api.JsonAsync(await last.Http.GetAsync($"/v1/fine_tuning/jobs/{job}/events?limit=1000")))["data"]!.AsArray();
                var steps = events.Where(e => (string?)e!["type"] == "metrics").Select(e => (int)e!["data"]!["step"]!).Order().ToList();
                Assert.Equal(Enumerable.Range(1, 100), steps);   // every step reported exactly once
                Assert.Single(events, e => (string?)e!["message"] == "The job has successfully completed");
                var answer = await Api.ChatAsync(last.Http, (string)done["fine_tuned_model"]!, "Capital of Peru?");
                Assert.Equal("Lima", answer);
            }
        }
        Assert.True(killedWhileTraining >= 3, $"only {killedWhileTraining} of the kills came while a job was training");
        Assert.True(served > 0, "no completion was served between the kills");

        var data = Path.Combine(folder.FullName, "data");
        await using (var connection = new SqliteConnection($"Data Source={Path.Combine(data, "service.db")};Pooling=False"))
        {
            await connection.OpenAsync();
            await using var check = new SqliteCommand("PRAGMA integrity_check", connection);
            Assert.Equal("ok", (string?)await check.ExecuteScalarAsync());
            await using var duplicates = new SqliteCommand(
                """SELECT COUNT(*) FROM (SELECT "JobId", "Step" FROM "JobEvents" WHERE "Step" IS NOT NULL GROUP BY "JobId", "Step", "Type" HAVING COUNT(*) > 1)""", connection);
            Assert.Equal(0L, (long)(await duplicates.ExecuteScalarAsync())!);
            await using var adapters = new SqliteCommand("""SELECT "Id", "BlobPath", "Sha256" FROM "Adapters" """, connection);
            var blobs = new FolderBlobStore(Path.Combine(data, "blobs"));
            int rows = 0;
            await using var reader = await adapters.ExecuteReaderAsync();
            while (await reader.ReadAsync())
            {
                rows++;
                Assert.Equal(reader.GetString(2), blobs.ContentHash(reader.GetString(1)));   // the files are whole, as when the row was written
                Assert.Equal(reader.GetString(0), Path.GetFileName(reader.GetString(1)));
            }
            Assert.Equal(jobs.Count, rows);
        }
        // Every published adapter folder is complete (a folder is published in one rename, never written in place).
        foreach (var adapter in Directory.GetDirectories(Path.Combine(data, "blobs", "adapters")))
        {
            Assert.True(File.Exists(Path.Combine(adapter, LoraConfig.FileName)), adapter);
            Assert.True(File.Exists(Path.Combine(adapter, LoraAdapter.WeightsFileName)), adapter);
        }
    }

    static async Task<string> StatusAsync(HttpClient http, string jobId) =>
        (string)(await Api.JsonAsync(await http.GetAsync($"/v1/fine_tuning/jobs/{jobId}")))["status"]!;

    static async Task<string?> FineTunedModelAsync(HttpClient http, List<string> jobs)
    {
        foreach (var job in jobs)
            if ((string?)(await Api.JsonAsync(await http.GetAsync($"/v1/fine_tuning/jobs/{job}")))["fine_tuned_model"] is { } model) return model;
        return null;
    }
}
