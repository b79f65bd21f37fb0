using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using AdapterService.Core.Tests.Text;
using AdapterService.Core.Text.Jinja;
using Xunit.Abstractions;

namespace AdapterService.Core.Tests.Text.Jinja;

/// <summary>
/// Hostile templates and variables end in a rendered string or a JinjaException, quickly: nothing else escapes, nothing
/// hangs or exhausts memory. The fuzz test mutates the real templates; JINJA_FUZZ_ITERATIONS runs it longer.
/// </summary>
[Collection(TextReferences.Name)]
public sealed class JinjaHostileTests(ITestOutputHelper log)
{
    static readonly JinjaRenderOptions Tight = new(MaxOutputChars: 1 << 20, MaxSteps: 200_000, Timeout: TimeSpan.FromSeconds(2));

    /// <summary>Parses and renders within <paramref name="bound"/>; returns the failure's message, or null when it rendered.</summary>
    static string? Outcome(string template, IReadOnlyDictionary<string, object?>? variables = null, JinjaRenderOptions? options = null, int bound = 5)
    {
        var watch = Stopwatch.StartNew();
        var run = Task.Run(() =>
        {
            try
            {
                JinjaTemplate.Parse(template).Render(variables ?? new Dictionary<string, object?>(), options ?? Tight);
                return null;
            }
            catch (JinjaException e) { return e.Message; }
        });
        Assert.True(run.Wait(TimeSpan.FromSeconds(bound * 4)), $"hung: {Cut(template)}");
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(bound), $"took {watch.Elapsed.TotalSeconds:0.0} s: {Cut(template)}");
        // The engine's final guard turns a slipped .NET exception into "template failed: …"; none may slip.
        Assert.False(run.Result?.StartsWith("template failed:", StringComparison.Ordinal) == true, $"{run.Result}: {Cut(template)}");
        return run.Result;
    }

    static string Cut(string s) => s.Length > 300 ? s[..300] + "…" : s;

    [Theory]
    [InlineData("{% for i in range(999999999) %}{% endfor %}", "items")]
    [InlineData("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", "steps")]
    [InlineData("{{ range(999999999)|length }}", "items")]
    [InlineData("{{ 'a' * 999999999 }}", "Unknown operator")]
    [InlineData("{% set s = 'ab' %}{% for i in range(64) %}{% set s = s ~ s %}{% endfor %}{{ s|length }}", "characters")]
    [InlineData("{% set s = 'ab' %}{% for i in range(64) %}{% set s = s + s %}{% endfor %}", "characters")]
    [InlineData("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", "steps")]
    [InlineData("{{ range(190000)|join(',') }}", "characters")]
    [InlineData("{% for i in range(90000) %}{{ 'fifteen chars: ' ~ i }}{% endfor %}", "characters")]
    [InlineData("{{ range(2000000)|length }}", "items")]
    [InlineData("{{ 'x\ny'|indent(999999999) }}", "characters")]
    [InlineData("{{ [[[1]]]|tojson(indent=999999999) }}", "characters")]
    [InlineData("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", "nested")]
    [InlineData("{% macro r(n) %}{% for i in range(10) %}{{ r(n) }}{% endfor %}{% endmacro %}{{ r(0) }}", "nested")]
    [InlineData("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns|tojson }}", "levels deep")]
    [InlineData("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", "levels deep")]
    [InlineData("{{ 2 ** 99999 }}", "finite")]
    [InlineData("{{ range(0, 10 ** 308 * 10) }}", "items")]
    [InlineData("{% for x in 5 %}{% endfor %}", "iterable")]
    public void Hostile_templates_fail_cleanly(string template, string reason)
    {
        var message = Outcome(template);
        Assert.NotNull(message);
        Assert.Contains(reason, message);
    }

    [Fact]
    public void Deep_nesting_is_refused_when_parsed()
    {
        Assert.Contains("nested", Outcome("{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}", bound: 2));
        Assert.Contains("nested", Outcome("{{ " + new string('[', 5000) + new string(']', 5000) + " }}", bound: 2));
        Assert.Contains("nested", Outcome("{{ 1" + string.Concat(Enumerable.Repeat(" + 1", 100_000)) + " }}", bound: 2));
        Assert.Contains("nested", Outcome(string.Concat(Enumerable.Repeat("{% if x %}", 5000)) + string.Concat(Enumerable.Repeat("{% endif %}", 5000)), bound: 2));
        Assert.Contains("nested", Outcome("{{ " + string.Concat(Enumerable.Repeat("not ", 5000)) + "x }}", bound: 2));
        Assert.Contains("nested", Outcome("{{ " + string.Concat(Enumerable.Repeat("- ", 5000)) + "x }}", bound: 2));
        Assert.Contains("characters long", Assert.Throws<JinjaException>(() => JinjaTemplate.Parse(new string('x', 100), new JinjaLimits(MaxSourceChars: 50))).Message);
        // A template's ordinary nesting is far below the limit.
        Assert.Null(Outcome("{{ ((((1)))) + [[[[1]]]]|length }}"));
    }

    [Fact]
    public void Hostile_variables_fail_cleanly()
    {
        JsonNode deep = new JsonArray();
        for (int i = 0; i < 10_000; i++) deep = new JsonObject { ["x"] = deep };
        Assert.Contains("levels deep", Outcome("{{ v }}", new Dictionary<string, object?> { ["v"] = deep }));

        JsonNode shallow = "leaf";
        for (int i = 0; i < 200; i++) shallow = new JsonArray(shallow);
        Assert.Null(Outcome("{{ v|tojson|length }}", new Dictionary<string, object?> { ["v"] = shallow }));

        var huge = new string('a', 3 << 20);
        Assert.Contains("characters", Outcome("{{ s }}", new Dictionary<string, object?> { ["s"] = huge }));
        Assert.Contains("characters", Outcome("{{ s ~ s }}", new Dictionary<string, object?> { ["s"] = new string('a', 700_000) }));
        Assert.Null(Outcome("{{ s|length }}", new Dictionary<string, object?> { ["s"] = huge }));
        // Output set aside by nested macro calls counts too: 100 levels of 600k characters would be 60M.
        Assert.Contains("characters", Outcome("{% macro r(n) %}{{ s }}{% if n > 0 %}{{ r(n - 1) }}{% endif %}{% endmacro %}{{ r(99)|length }}",
            new Dictionary<string, object?> { ["s"] = new string('a', 600_000) }));

        var cycle = new Dictionary<string, object?>();
        cycle["self"] = cycle;
        Assert.Contains("levels deep", Outcome("{{ v }}", new Dictionary<string, object?> { ["v"] = cycle }));

        var many = new JsonArray(Enumerable.Range(0, 100_000).Select(i => (JsonNode?)new JsonObject { ["role"] = "user", ["content"] = $"m{i}" }).ToArray());
        Assert.Contains("steps", Outcome("{% for m in messages %}{% for n in messages %}{% endfor %}{% endfor %}", new Dictionary<string, object?> { ["messages"] = many }));
        Assert.Contains("not supported", Outcome("{{ v }}", new Dictionary<string, object?> { ["v"] = new Uri("http://x") }));
    }

    [Fact]
    public void A_slow_render_times_out()
    {
        var options = new JinjaRenderOptions(MaxSteps: long.MaxValue, Timeout: TimeSpan.FromMilliseconds(200));
        Assert.Contains("longer than", Outcome("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", options: options, bound: 3));
    }

    /// <summary>Mutations of the real templates (characters and tags deleted, inserted, duplicated), rendered with a
    /// conversation and with hostile variables.</summary>
    [Fact]
    public void Mutated_real_templates_render_or_fail_cleanly()
    {
        var templates = BundledTemplates();
        Assert.True(templates.Count >= 95, $"only {templates.Count} templates read");
        int iterations = int.TryParse(Environment.GetEnvironmentVariable("JINJA_FUZZ_ITERATIONS"), out var n) ? n : 800;
        int seed = int.TryParse(Environment.GetEnvironmentVariable("JINJA_FUZZ_SEED"), out var s) ? s : Environment.TickCount;
        log.WriteLine($"seed {seed} (JINJA_FUZZ_SEED), {iterations} iterations (JINJA_FUZZ_ITERATIONS)");
        var random = new Random(seed);
        string[] pieces =
        [
            "{%", "%}", "{{", "}}", "{#", "#}", "-", "(", ")", "[", "]", "{", "}", "'", "\"", "\\", "|", ".", ",", ":", "=", " if ", " else ",
            " not ", " in ", " is ", "~", "*", "**", "//", "-1", "1.5", "none", "loop", "{% endif %}", "{% endfor %}", "{% else %}", "{% break %}",
            "{% continue %}", "{% generation %}", "{% endgeneration %}", "{% for i in range(999999999) %}", "{{ 'a' * 999999999 }}",
            "{% macro r(n) %}{{ r(n) }}{% endmacro %}{{ r(1) }}", "{% set ns = namespace(x=ns) %}", "{{ messages|tojson(indent=99999) }}",
            "{% set s = s ~ s ~ s %}", "{{ range(10**9)|join }}", "{% call r() %}x{% endcall %}", "{% filter upper %}", "{% endfilter %}",
            "|tojson", "|join(", "[::-1]", ".strip()", "{%- ", " -%}", "\u2028", "🙂",
        ];
        var conversation = JinjaReference.Variables(JinjaChatTemplateTests.Named[5].Variables);
        var hostile = new Dictionary<string, object?>(conversation)
        {
            ["messages"] = JsonNode.Parse("[{\"role\":\"user\",\"content\":\"" + new string('x', 200_000) + "\"}," +
                string.Join(",", Enumerable.Repeat("{\"role\":\"assistant\",\"content\":{\"a\":[[[[[[1]]]]]]},\"tool_calls\":[1,\"x\",null]}", 300)) + "]"),
        };
        int rendered = 0, failed = 0;
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < iterations; i++)
        {
            var text = new StringBuilder(templates[random.Next(templates.Count)]);
            for (int m = random.Next(1, 6); m > 0 && text.Length > 0; m--)
            {
                int at = random.Next(text.Length), length = Math.Min(random.Next(1, 12), text.Length - at);
                switch (random.Next(4))
                {
                    case 0: text.Remove(at, length); break;
                    case 1: text.Insert(at, pieces[random.Next(pieces.Length)]); break;
                    case 2: text.Insert(random.Next(text.Length), text.ToString(at, length)); break;
                    default:
                        // Duplicate a whole tag somewhere else.
                        int open = text.ToString().IndexOf("{%", at, StringComparison.Ordinal), close = open < 0 ? -1 : text.ToString().IndexOf("%}", open, StringComparison.Ordinal);
                        if (close > 0) text.Insert(random.Next(text.Length), text.ToString(open, close + 2 - open));
                        break;
                }
            }
            var template = text.ToString();
            foreach (var variables in new[] { conversation, hostile })
            {
                if (Outcome(template, variables) is null) rendered++;
                else failed++;
            }
        }
        log.WriteLine($"{rendered} renders, {failed} JinjaExceptions in {watch.Elapsed.TotalSeconds:0.0} s");
    }

    /// <summary>The gguf templates of Ollama's map, read from the TypeScript file by a small string-literal reader.</summary>
    internal static List<string> BundledTemplates()
    {
        var ts = File.ReadAllText(Path.Combine(HfReference.Folder, "node_modules", "@huggingface", "ollama-utils", "src", "chat-template-automap.ts"));
        var templates = new List<string>();
        for (int at = ts.IndexOf("gguf:", StringComparison.Ordinal); at >= 0; at = ts.IndexOf("gguf:", at + 1, StringComparison.Ordinal))
        {
            int i = at + 5;
            while (char.IsWhiteSpace(ts[i])) i++;
            char quote = ts[i++];
            var literal = new StringBuilder();
            for (; ts[i] != quote; i++)
            {
                if (ts[i] != '\\') { literal.Append(ts[i]); continue; }
                char e = ts[++i];
                switch (e)
                {
                    case 'n': literal.Append('\n'); break;
                    case 't': literal.Append('\t'); break;
                    case 'r': literal.Append('\r'); break;
                    case 'b': literal.Append('\b'); break;
                    case 'f': literal.Append('\f'); break;
                    case 'v': literal.Append('\v'); break;
                    case '0': literal.Append('\0'); break;
                    case 'x': literal.Append((char)Convert.ToInt32(ts.Substring(i + 1, 2), 16)); i += 2; break;
                    case 'u': literal.Append((char)Convert.ToInt32(ts.Substring(i + 1, 4), 16)); i += 4; break;
                    default: literal.Append(e); break;
                }
            }
            templates.Add(literal.ToString());
        }
        return templates;
    }

    [Fact]
    public void The_string_reader_reads_the_templates_node_reads()
    {
        var read = BundledTemplates();
        var node = JinjaReference.Render(bundled: true, [], []).Where(t => t.Name.StartsWith("library/", StringComparison.Ordinal)).Select(t => t.Source).ToList();
        Assert.Equal(node, read);
    }
}
