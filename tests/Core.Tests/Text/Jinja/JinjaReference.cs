using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Core.Tests.Text.Jinja;

/// <summary>
/// Renders jobs with @huggingface/jinja through tests/hf-reference/render.mjs (installed by scripts/test.sh): one node
/// run per job, every template with every case.
/// </summary>
public static class JinjaReference
{
    /// <summary>The date both engines' strftime_now sees (UTC).</summary>
    public static readonly DateTimeOffset Now = new(2026, 3, 7, 9, 5, 0, TimeSpan.Zero);

    public static string Directory => Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "hf-reference"));

    /// <summary>A template's name and source, and per case the reference's text or its error.</summary>
    public sealed record Rendered(string Name, string Source, List<(string? Text, string? Error)> Renders);

    public static List<Rendered> Render(bool bundled, IEnumerable<(string Name, string Source)> templates, IReadOnlyList<JsonObject> cases)
    {
        Assert.True(File.Exists(Path.Combine(Directory, "node_modules", "@huggingface", "jinja", "package.json")),
            $"@huggingface/jinja is missing from {Directory}; scripts/test.sh installs it (npm ci)");
        var job = new JsonObject
        {
            ["bundled"] = bundled,
            ["now"] = Now.ToString("O"),
            ["templates"] = new JsonArray(templates.Select(t => (JsonNode)new JsonObject { ["name"] = t.Name, ["source"] = t.Source }).ToArray()),
            ["cases"] = new JsonArray(cases.Select(c => c.DeepClone()).ToArray()),
        };
        var file = Path.Combine(Path.GetTempPath(), $"jinja-job-{Guid.NewGuid():N}.json");
        File.WriteAllText(file, job.ToJsonString());
        try
        {
            var start = new ProcessStartInfo("node", [Path.Combine(Directory, "render.mjs"), file])
            {
                WorkingDirectory = Directory, RedirectStandardOutput = true, RedirectStandardError = true,
            };
            start.Environment["TZ"] = "UTC";
            using var process = Process.Start(start)!;
            var output = process.StandardOutput.ReadToEndAsync();
            var errors = process.StandardError.ReadToEndAsync();
            Assert.True(process.WaitForExit(TimeSpan.FromMinutes(2)), "render.mjs did not finish in 2 minutes");
            Assert.True(process.ExitCode == 0, $"render.mjs exited {process.ExitCode}: {errors.Result}");
            using var result = JsonDocument.Parse(output.Result);
            var names = result.RootElement.GetProperty("templates").EnumerateArray().ToList();
            var renders = result.RootElement.GetProperty("renders").EnumerateArray().ToList();
            return names.Zip(renders, (t, r) => new Rendered(
                t.GetProperty("name").GetString()!, t.GetProperty("source").GetString()!,
                r.EnumerateArray().Select(x => (
                    x.TryGetProperty("text", out var text) ? text.GetString() : null,
                    x.TryGetProperty("error", out var error) ? error.GetString() : null)).ToList())).ToList();
        }
        finally { File.Delete(file); }
    }

    /// <summary>A clock fixed at <see cref="Now"/>, local time UTC.</summary>
    public sealed class FixedClock : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => Now;
        public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;
    }

    /// <summary>A case's variables as the lead's code passes them: each top-level value a JsonNode.</summary>
    public static IReadOnlyDictionary<string, object?> Variables(JsonObject variables) =>
        variables.ToDictionary(p => p.Key, p => (object?)p.Value?.DeepClone());
}
