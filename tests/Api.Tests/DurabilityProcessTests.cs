using System.Diagnostics;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>What lands on disk, against the real executable: synced before it is named, and damaged saves skipped.</summary>
public sealed class DurabilityProcessTests
{
    /// <summary>
    /// strace (scripts/debian-packages.sh installs it for the tests) watches the service while a file is uploaded: the
    /// blob's bytes are fsynced under their temporary name, renamed into place, and the folder is fsynced after the
    /// rename, so a power cut leaves either no file or the whole file.
    /// </summary>
    [Fact]
    public async Task AnUploadedBlobIsSyncedBeforeItsRenameAndItsFolderAfter()
    {
        using var folder = new TempFolder("adapter-service-fsync-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var trace = Path.Combine(folder.FullName, "strace.txt");
        using var strace = Process.Start(new ProcessStartInfo("strace",
            ["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o", trace, "-p", service.ProcessId.ToString()])
            { RedirectStandardError = true })!;
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!File.Exists(trace) && DateTime.UtcNow < deadline) await Task.Delay(100);
        await Task.Delay(1000);   // attached to every thread
        var fileId = await Api.UploadFileAsync(service.Http, Enumerable.Repeat(Api.ChatLine("Q", "A"), 10));
        await Task.Delay(500);
        strace.Kill();
        await strace.WaitForExitAsync();

        var lines = File.ReadAllLines(trace);
        int rename = Array.FindIndex(lines, l => l.Contains("rename") && l.Contains($"files/{fileId}\""));
        Assert.True(rename >= 0, $"no rename to files/{fileId}:\n{string.Join("\n", lines.TakeLast(40))}");
        Assert.Contains(lines.Take(rename), l => l.Contains("fsync(") && l.Contains($"files/{fileId}.tmp-"));
        Assert.Contains(lines.Skip(rename + 1), l => l.Contains("fsync(") && l.TrimEnd().Contains("/blobs/files>"));
    }

    /// <summary>
    /// A job killed mid-training whose newest saved trainer state is damaged resumes from the state before it (saying
    /// so in its events) and finishes, rather than failing or starting over.
    /// </summary>
    [Fact]
    public async Task AJobWhoseNewestSavedStateIsDamagedResumesFromThePreviousOne()
    {
        using var folder = new TempFolder("adapter-service-states-");
        (string, string) stateEvery = ("Workers__StateEverySteps", "4");
        string jobId;
        await using (var first = await ServiceProcess.StartAsync(folder.FullName, stateEvery))
        {
            var fileId = await Api.UploadFileAsync(first.Http, Enumerable.Repeat(Api.ChatLine("Where is the Eiffel Tower?", "In Paris."), 10));
            jobId = (string)(await Api.CreateJobAsync(first.Http, new
            {
                model = "tiny-llama-demo", training_file = fileId, seed = 8, hyperparameters = new { n_epochs = 3, batch_size = 1 },
            }))["id"]!;
            var deadline = DateTime.UtcNow.AddMinutes(3);
            while (SavedSteps(folder, jobId).Count < 2 && DateTime.UtcNow < deadline) await Task.Delay(50);
            await first.KillAsync();
        }
        var steps = SavedSteps(folder, jobId);
        Assert.True(steps.Count >= 2, $"saved states: {string.Join(", ", steps)}");
        var newest = Path.Combine(folder.FullName, "data", "blobs", "jobs", jobId, "state", $"step-{steps[0]}");
        File.WriteAllText(Path.Combine(newest, "trainer_state.json"), "{\"step\": ");   // torn

        await using var second = await ServiceProcess.StartAsync(folder.FullName, stateEvery);
        var done = await Api.WaitForFinishAsync(second.Http, jobId);
        Api.AssertSucceeded(done);
        var messages = (await Api.JsonAsync(await second.Http.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000")))["data"]!.AsArray()
            .Select(e => (string)e!["message"]!).ToList();
        Assert.Contains($"The trainer state saved at step {steps[0]} is damaged (JsonException); resuming from the one before it", messages);
        Assert.Contains($"Fine-tuning job resumed from step {steps[1]}", messages);
    }

    /// <summary>The saved trainer states' steps, newest first.</summary>
    static List<int> SavedSteps(TempFolder folder, string jobId)
    {
        var root = Path.Combine(folder.FullName, "data", "blobs", "jobs", jobId, "state");
        return Directory.Exists(root)
            ? Directory.GetDirectories(root).Select(d => Path.GetFileName(d)).Where(n => n.StartsWith("step-"))
                .Select(n => int.Parse(n[5..])).OrderDescending().ToList()
            : [];
    }
}
