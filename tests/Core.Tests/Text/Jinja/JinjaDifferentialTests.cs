using System.Text;
using AdapterService.Core.Tests.Text;
using AdapterService.Core.Text.Jinja;
using Xunit.Abstractions;

namespace AdapterService.Core.Tests.Text.Jinja;

/// <summary>Mutations of the real templates (JINJA_DIFF_TEMPLATES of them, 300 by default, from JINJA_DIFF_SEED),
/// rendered by @huggingface/jinja in one node run.</summary>
public sealed class MutatedTemplateRenders
{
    public static readonly int Seed = int.TryParse(Environment.GetEnvironmentVariable("JINJA_DIFF_SEED"), out var s) ? s : 1;

    public List<JinjaReference.Rendered> Templates { get; }

    public MutatedTemplateRenders()
    {
        int count = int.TryParse(Environment.GetEnvironmentVariable("JINJA_DIFF_TEMPLATES"), out var n) ? n : 300;
        var sources = JinjaHostileTests.BundledTemplates();
        var random = new Random(Seed);
        string[] pieces =
        [
            "{%", "%}", "{{", "}}", "{#", "#}", "-", "(", ")", "[", "]", "{", "}", "'", "\"", "\\", "|", ".", ",", ":", "=", " if ",
            " else ", " not ", " in ", " is ", "~", "*", "**", "//", "-1", "1.5", "none", "loop", "{% endif %}", "{% endfor %}",
            "{% else %}", "\n", "  ", "\t", "{%- ", " -%}", "{{- ", " -}}", "{% generation %}", "{% endgeneration %}",
        ];
        var mutated = new List<(string, string)>();
        for (int i = 0; i < count; i++)
        {
            var text = new StringBuilder(sources[random.Next(sources.Count)]);
            for (int m = random.Next(1, 4); m > 0 && text.Length > 0; m--)
            {
                int at = random.Next(text.Length), length = Math.Min(random.Next(1, 6), text.Length - at);
                switch (random.Next(3))
                {
                    case 0: text.Remove(at, length); break;
                    case 1: text.Insert(at, pieces[random.Next(pieces.Length)]); break;
                    default: text.Insert(random.Next(text.Length), text.ToString(at, length)); break;
                }
            }
            mutated.Add(($"mutation {i}", text.ToString()));
        }
        Templates = JinjaReference.Render(bundled: false, mutated, JinjaDifferentialTests.Cases.Select(c => c.Variables).ToList());
    }
}

/// <summary>
/// Mutated real templates (characters and tags deleted, inserted, duplicated) parse and render as the reference does,
/// or fail where it fails: the lexer's and parser's corners (stray '-', unclosed tags, odd whitespace control) included.
/// </summary>
[Collection(TextReferences.Name)]
public sealed class JinjaDifferentialTests(MutatedTemplateRenders reference, ITestOutputHelper log) : IClassFixture<MutatedTemplateRenders>
{
    public static readonly (string Name, System.Text.Json.Nodes.JsonObject Variables)[] Cases =
        [JinjaChatTemplateTests.Named[0], JinjaChatTemplateTests.Named[5]];

    /// <summary>The departures from the reference that JinjaChatTemplateTests lists, recognised by their messages.</summary>
    static string? KnownDifference(string? referenceError, string? ourError) =>
        ourError?.StartsWith("can only concatenate str", StringComparison.Ordinal) == true ? "+ joins strings only"
        : referenceError == "Expected iterable or object type in for loop: got StringValue" ? "for loops iterate strings"
        : referenceError is "Unknown ArrayValue filter: reject" or "Unknown ArrayValue filter: select" ? "select and reject exist"
        : null;

    [Fact]
    public void Mutated_templates_render_as_the_reference_does()
    {
        var options = new JinjaRenderOptions(Clock: new JinjaReference.FixedClock());
        var failures = new List<string>();
        var known = new Dictionary<string, int>();
        int same = 0;
        foreach (var template in reference.Templates)
        {
            for (int c = 0; c < Cases.Length; c++)
            {
                var (text, error) = template.Renders[c];
                string? ours = null, ourError = null;
                try { ours = JinjaTemplate.Parse(template.Source).Render(JinjaReference.Variables(Cases[c].Variables), options).Text; }
                catch (JinjaException e) { ourError = e.Message; }
                if (text is not null ? ours == text : ourError is not null) { same++; continue; }
                if (KnownDifference(error, ourError) is { } why) { known[why] = known.GetValueOrDefault(why) + 1; continue; }
                failures.Add($"{template.Name} / {Cases[c].Name}: reference {(text is null ? $"raises {error}" : "renders")}, " +
                    $"ours {(ours is null ? $"raises {ourError}" : "renders")}\n{template.Source}");
            }
        }
        log.WriteLine($"seed {MutatedTemplateRenders.Seed}: {same} renders agree, known differences {string.Join(", ", known.Select(k => $"{k.Key}: {k.Value}"))}, {failures.Count} differ");
        Assert.True(failures.Count == 0, $"{failures.Count} renders differ:\n{string.Join("\n\n", failures.Take(5))}");
    }
}
