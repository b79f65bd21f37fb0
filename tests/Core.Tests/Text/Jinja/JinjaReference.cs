using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Tests.Text;

namespace AdapterService.Core.Tests.Text.Jinja;

/// <summary>
/// Renders jobs with @huggingface/jinja through tests/hf-reference/render.mjs (installed by scripts/test.sh): one node
/// run per job, every template with every case.
/// </summary>
public static class JinjaReference
{
    /// <summary>The date both engines' strftime_now sees (UTC).</summary>
    public static readonly DateTimeOffset Now = new(2026, 3, 7, 9, 5, 0, TimeSpan.Zero);

    /// <summary>A template's name and source, and per case the reference's text or its error.</summary>
    public sealed record Rendered(string Name, string Source, List<(string? Text, string? Error)> Renders);

    public static List<Rendered> Render(bool bundled, IEnumerable<(string Name, string Source)> templates, IReadOnlyList<JsonObject> cases)
    {
        var job = new JsonObject
        {
            ["bundled"] = bundled,
            ["now"] = Now.ToString("O"),
            ["templates"] = new JsonArray(templates.Select(t => (JsonNode)new JsonObject { ["name"] = t.Name, ["source"] = t.Source }).ToArray()),
            ["cases"] = new JsonArray(cases.Select(c => c.DeepClone()).ToArray()),
        };
        using var result = JsonDocument.Parse(HfReference.Node("render.mjs", job.ToJsonString(), "-"));
        var names = result.RootElement.GetProperty("templates").EnumerateArray().ToList();
        var renders = result.RootElement.GetProperty("renders").EnumerateArray().ToList();
        return names.Zip(renders, (t, r) => new Rendered(
            t.GetProperty("name").GetString()!, t.GetProperty("source").GetString()!,
            r.EnumerateArray().Select(x => (
                x.TryGetProperty("text", out var text) ? text.GetString() : null,
                x.TryGetProperty("error", out var error) ? error.GetString() : null)).ToList())).ToList();
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
