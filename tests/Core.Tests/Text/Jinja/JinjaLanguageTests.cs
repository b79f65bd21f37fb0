using System.Text.Json.Nodes;
using AdapterService.Core.Tests.Text;
using AdapterService.Core.Text.Jinja;

namespace AdapterService.Core.Tests.Text.Jinja;

/// <summary>The language snippets of <see cref="JinjaLanguageTests"/>, rendered by @huggingface/jinja in one node run.</summary>
public sealed class SnippetRenders
{
    public Dictionary<string, (string? Text, string? Error)> Reference { get; } =
        JinjaReference.Render(bundled: false, JinjaLanguageTests.Snippets.Select((s, i) => ($"snippet {i}", s)), [JinjaLanguageTests.Variables])
            .ToDictionary(r => r.Source, r => r.Renders[0]);
}

/// <summary>
/// The language, feature by feature: each snippet renders as the reference renders it (or fails where it fails);
/// the facts worth stating (and the places this engine follows Python instead) are pinned with their expected text.
/// </summary>
[Collection(TextReferences.Name)]
public sealed class JinjaLanguageTests(SnippetRenders reference) : IClassFixture<SnippetRenders>
{
    public static readonly JsonObject Variables = JsonNode.Parse("""
        {
          "s": "Hello World", "n": 3, "f": 1.5, "whole": 2.0, "l": [3, 1, 2], "d": {"b": 1, "a": 2}, "t": true, "z": null,
          "u8": "héllo 日本 🙂", "nested": {"x": {"y": [1, {"z": "deep"}]}},
          "objs": [{"name": "b", "v": 2, "on": true}, {"name": "a", "v": 1, "on": false}],
          "msgs": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]
        }
        """)!.AsObject();

    public static readonly string[] Snippets =
    [
        // Printing values.
        "{{ s }}|{{ n }}|{{ f }}|{{ whole }}|{{ t }}|{{ z }}|{{ undefined_var }}|{{ l }}|{{ d }}|{{ nested }}",
        "{{ 0.1 + 0.2 }} {{ 1 / 3 }} {{ 100000000000000000000000 }} {{ 2 ** 70 }} {{ 10 ** 21 }} {{ 0.000001 }} {{ 0.0000001 }} {{ -0.0 }} {{ 1 / 0 }} {{ 5.0 // 2 }} {{ 4 / 2 }}",
        // Operators.
        "{{ 1 + 2 }} {{ 1.0 + 2 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 3 ** 2 }} {{ 2 * 3 + 4 }} {{ (2 + 3) * 4 }}",
        "{{ 'a' ~ 1 ~ 1.0 ~ f ~ true ~ [1, 'x'] ~ d }}|{{ 'a' + 'b' }}|{{ l + [4] }}",
        "{{ 1 < 2 }} {{ 2 <= 1 }} {{ 1 == 1.0 }} {{ '1' == 1 }} {{ none == undefined_var }} {{ [1] == [1] }} {{ l == l }} {{ s != 'x' }} {{ t == 1 }}",
        "{{ 'a' in 'abc' }} {{ 2 in l }} {{ 'b' in d }} {{ 'x' not in d }} {{ 1 in undefined_var }} {{ 1 not in undefined_var }} {{ 'o' not in s }}",
        "{{ t and 'yes' }}|{{ z or 'fallback' }}|{{ not z }}|{{ [] or 'empty list' }}|{{ {} and 'x' }}|{{ 0 or '' }}",
        "{{ 'y' if t else 'n' }}|{{ 'y' if z }}|{{ 'a' if false else 'b' if false else 'c' }}|{{ -1 }}|{{ - n }}|{{ -f }}|{{ +t }}",
        // Tests.
        "{{ n is odd }} {{ n is even }} {{ s is string }} {{ n is number }} {{ f is integer }} {{ whole is integer }} {{ d is mapping }} {{ l is iterable }} {{ (1, 2) is iterable }} {{ l is sequence }} {{ z is none }} {{ x is defined }} {{ s is not defined }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ t is true }} {{ t is false }} {{ t is boolean }} {{ range is callable }} {{ x is undefined }}",
        // String methods.
        "{{ '  x  '.strip() }}|{{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}|{{ s.upper() }}|{{ s.lower() }}|{{ 'hello world-foo o\\'neil'.title() }}|{{ 'hello World'.capitalize() }}|{{ s.startswith('He') }}|{{ s.endswith(('x', 'ld')) }}",
        "{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b c'.split(' ', 1) }}|{{ ' a  b c '.split(none, 1) }}|{{ s.replace('l', 'L') }}|{{ s.replace('l', 'L', 2) }}|{{ 'ab'.replace('', '-') }}|{{ s.length }}",
        "{{ s[0] }}|{{ s[-1] }}|{{ s[1:3] }}|{{ s[::-1] }}|{{ u8[::-1] }}|{{ u8[1:4] }}|{{ l[1:] }}|{{ l[:-1] }}|{{ l[::2] }}|{{ l[5] }}|{{ l[-1] }}",
        // Filters.
        "{{ s|upper }}|{{ s|lower }}|{{ s|title }}|{{ s|capitalize }}|{{ s|length }}|{{ l|length }}|{{ d|length }}|{{ l|first }}|{{ l|last }}|{{ l|sort }}|{{ l|reverse }}|{{ l|list }}",
        "{{ l|join(', ') }}|{{ l|join }}|{{ s|join('-') }}|{{ ['b', 'A', 'a']|sort }}|{{ ['b', 'A', 'a']|sort(case_sensitive=true) }}|{{ l|sort(reverse=true) }}|{{ [1, 2, 1, '1', 1.0]|unique }}",
        "{{ '  t '|trim }}|{{ 'a\nb\n\nc'|indent }}|{{ 'a\nb'|indent(2, true) }}|{{ 'a\n\nb'|indent(width=1, blank=true) }}", "{{ 'x\ny'|indent('  ') }}",
        "{{ '42abc'|int }}|{{ 'x'|int }}|{{ 'x'|int(7) }}|{{ '3.5e2x'|float }}|{{ f|int }}|{{ -3|abs }}|{{ -f|abs }}|{{ n|float }}|{{ n|string }}|{{ f|string }}|{{ t|int }}|{{ t|string }}|{{ l|string }}",
        "{{ undefined_var|default('dflt') }}|{{ ''|default('e', true) }}|{{ z|default('nn') }}|{{ s|default('no') }}|{{ 'x'|safe }}|{{ d|items }}|{{ d|dictsort }}|{{ d|dictsort(reverse=true) }}|{{ d|dictsort(by='value') }}",
        "{{ objs|selectattr('on')|map(attribute='name')|join(',') }}|{{ objs|rejectattr('on')|map(attribute='name')|list }}|{{ objs|selectattr('name', 'equalto', 'a')|list|length }}|{{ objs|sort(attribute='name')|map(attribute='v')|join }}|{{ objs|map(attribute='missing', default='?')|join }}|{{ [nested]|map(attribute='x.y.1.z')|first }}",
        "{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ l|tojson(indent=2) }}|{{ nested|tojson(indent=1) }}|{{ u8|tojson }}|{{ u8|tojson(ensure_ascii=true) }}|{{ d|tojson(sort_keys=true) }}|{{ d|tojson(separators=(',', ':')) }}",
        "{{ []|tojson(indent=2) }}|{{ {}|tojson(indent=2) }}|{{ 'q\"\\\\\n\t\u0001'|tojson }}|{{ f|tojson }}|{{ whole|tojson }}|{{ none|tojson }}|{{ undefined_var|tojson }}|{{ [undefined_var] }}|{{ objs|tojson }}",
        "{% filter upper %}shout {{ s }}{% endfilter %}|{% filter replace('o', '0') %}foo{% endfilter %}",
        // Dicts, members, subscripts.
        "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{{ d.keys() }}{{ d.values() }}{{ d.get('a') }}{{ d.get('q', 'def') }}{{ d.get('q') }}{{ d.a }}{{ d['b'] }}{{ d.missing }}{{ d.missing.deeper }}{{ z.x }}",
        "{{ nested.x.y[1].z }}{{ nested['x']['y'][0] }}{{ nested.x.y.0 }}{{ msgs[0]['role'] }}{{ msgs[-1].content }}{{ msgs|length }}",
        // Loops.
        "{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}",
        "{% for x in l if x > 1 %}{{ x }}{{ loop.index }}{% else %}none{% endfor %}|{% for x in [] %}{{ x }}{% else %}empty{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}",
        "{% for x in range(10) %}{% if x == 5 %}{% break %}{% endif %}{% if x is odd %}{% continue %}{% endif %}{{ x }}{% endfor %}|{% for i in range(2, 8, 3) %}{{ i }}{% endfor %}|{% for i in range(3, 0, -1) %}{{ i }}{% endfor %}",
        // Assignment and scopes.
        "{% set x = 1 %}{% for i in l %}{% set x = i %}{% endfor %}{{ x }}|{% set ns = namespace(c=0) %}{% for i in l %}{% set ns.c = ns.c + i %}{% endfor %}{{ ns.c }}|{% set a, b = 1, 2 %}{{ a }}{{ b }}|{% set blk %}in {{ s }}{% endset %}{{ blk }}|{{ ns }}|{% if t %}{% set y = 5 %}{% endif %}{{ y }}",
        "{% set ns = namespace(d) %}{{ ns.a }}{% set ns2 = namespace([['k', 'v']], more=1) %}{{ ns2 }}",
        // Macros and calls.
        "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C') }} {{ greet(punct='.', name='D') }}",
        "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, x=4) }}",
        "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}",
        "{% macro count(n) %}{{ n }}{% if n > 0 %},{{ count(n - 1) }}{% endif %}{% endmacro %}{{ count(5) }}",
        "{% macro show() %}{{ s }}{{ outer }}{% endmacro %}{% for outer in [1] %}{{ show() }}{% endfor %}",
        "{% macro wrap() %}[{{ caller() }}]{% endmacro %}{% call wrap() %}inner {{ s }}{% endcall %}|{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(x) each(l) %}<{{ x }}>{% endcall %}",
        "{% macro greet(name, punct) %}{{ name }}{{ punct }}{% endmacro %}{{ greet(*['a'], **{'punct': '?'}) }}",
        // Literals.
        "{{ (1, 2) }}", "{{ [1, 'two', 3.0, true, none, [4], {'k': 'v'}] }}|{{ (1, 2)|length }}|{{ {'a': 1, 'b': [2]} }}|{{ \"esc\\n\\t\\\\ \\x41\\u00e9\" }}|{{ 'adj' 'acent' }}|{{ True }}{{ False }}{{ None }}|{{ [1 2] }}",
        // Whitespace control and comments.
        "a  {{- s -}}  b\n  {%- if t %}\n    yes\n  {%- endif %}\n{# c #}\n  {#- c2 -#}  z",
        "line1\n    {% if t %}\n    inner\n    {% endif %}\nline2\n{% for i in l %}\n  {{ i }}\n{% endfor %}\n  {# note #}\nend\n",
        "a{# comment {{ x }} #}b\n\t{%- set q = 1 -%}\n\tc {{ '{{' }} {{ {'a': {'b': 1}} }}",
        "{% for m in msgs %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}",
        "x  {%- generation -%}  y  {% endgeneration %}  z {% generation %}\n  w",
        // Globals.
        "{{ strftime_now('%Y-%m-%d %H:%M %b %B %% %A') }}",
        "{{ raise_exception('Bad role: ' ~ s) }}",
        // Errors.
        "{% if %}", "{{ 1 + }}", "{% for x in 5 %}{% endfor %}", "{{ 'a' * 3 }}", "{{ undefined_var + 1 }}", "{{ l.append(1) }}",
        "{% endif %}", "{{ x|nosuchfilter }}", "{{ n is divisibleby(3) }}", "{{ l|reject('x') }}", "{{ 'unterminated }}", "{% if t %}no end",
        "{{ s.nosuch() }}", "{% for a, b in l %}{% endfor %}", "{{ z + 1 }}", "{{ d[1] }}", "{{ 1 < 'a' }}", "{{ 'a' < 'b' }}",
    ];

    [Fact]
    public void Every_snippet_renders_as_the_reference_does()
    {
        var options = new JinjaRenderOptions(Clock: new JinjaReference.FixedClock());
        var failures = new List<string>();
        foreach (var snippet in Snippets)
        {
            var (text, error) = reference.Reference[snippet];
            string? ours = null, ourError = null;
            try { ours = JinjaTemplate.Parse(snippet).Render(JinjaReference.Variables(Variables), options).Text; }
            catch (JinjaException e) { ourError = e.Message; }
            if (text is not null ? ours != text : ourError is null)
                failures.Add($"{snippet}\n  reference: {text ?? "raises " + error}\n  ours:      {ours ?? "raises " + ourError}");
        }
        Assert.True(failures.Count == 0, $"{failures.Count} snippets differ:\n{string.Join("\n", failures)}");
        var raising = reference.Reference.Where(r => r.Value.Text is null).Select(r => $"{r.Key} => {r.Value.Error}").ToList();
        Assert.True(raising.Count <= 23, $"most snippets should render, not fail; these fail:\n{string.Join("\n", raising)}");
    }

    static string Render(string template, object? variables = null, JinjaRenderOptions? options = null) =>
        JinjaTemplate.Parse(template).Render(variables as IReadOnlyDictionary<string, object?> ?? new Dictionary<string, object?>(), options).Text;

    [Fact]
    public void Values_print_as_the_reference_prints_them()
    {
        var vars = new Dictionary<string, object?>
        {
            ["i"] = 1, ["f"] = 1.5, ["whole"] = JsonNode.Parse("2.0"), ["big"] = 1L << 40, ["b"] = false,
            ["list"] = new List<object?> { "a", 1, null }, ["map"] = new Dictionary<string, object?> { ["k"] = "v" },
        };
        Assert.Equal("1|1.5|2|1099511627776|false|[\"a\", 1, null]|{\"k\": \"v\"}|", Render("{{ i }}|{{ f }}|{{ whole }}|{{ big }}|{{ b }}|{{ list }}|{{ map }}|{{ none }}", vars));
        Assert.Equal("3.0|0.5|1.0", Render("{{ 1.5 * 2 }}|{{ 1 / 2 }}|{{ 1.0 }}"));
    }

    [Fact]
    public void Generation_blocks_report_their_spans_of_the_output()
    {
        var vars = JinjaReference.Variables(Variables);
        var output = JinjaTemplate.Parse(Snippets.Single(s => s.StartsWith("{% for m in msgs %}{% if m.role == 'assistant' %}"))).Render(vars);
        Assert.Equal("HiHello!ByeSee you.", output.Text); // trim_blocks ate the newlines after {% endif %}
        Assert.Equal(["Hello!", "See you."], output.Generation.Select(g => output.Text.Substring(g.Start, g.Length)));

        // The tags' '-' trims as it would around any tag; the span is what the block printed.
        var trimmed = JinjaTemplate.Parse("x  {%- generation -%}  y  {% endgeneration %}  z").Render(vars);
        Assert.Equal("xy    z", trimmed.Text);
        Assert.Equal([new JinjaSpan(1, 3)], trimmed.Generation);

        // An unclosed block runs to the end; tags inside a macro body or a set block mark nothing.
        Assert.Equal([new JinjaSpan(1, 2)], JinjaTemplate.Parse("a{% generation %}bc").Render(vars).Generation);
        Assert.Empty(JinjaTemplate.Parse("{% set x %}{% generation %}a{% endgeneration %}{% endset %}{{ x }}").Render(vars).Generation);
    }

    [Fact]
    public void Break_and_continue_keep_what_the_iteration_printed_as_Python_does()
    {
        // @huggingface/jinja drops an iteration's output when it ends in break or continue ("10" and "0" here), and
        // runs the else block when every iteration continued; Python's Jinja does neither.
        Assert.Equal("012", Render("{% for i in range(5) %}{{ i }}{% if i == 2 %}{% break %}{% endif %}{% endfor %}"));
        Assert.Equal("ab", Render("{% for i in ['a', 'b'] %}{{ i }}{% continue %}x{% endfor %}"));
        Assert.Equal("", Render("{% for i in [1] %}{% continue %}{% else %}else{% endfor %}"));
    }

    [Fact]
    public void Where_the_reference_departs_from_Python_real_templates_get_Python()
    {
        // Llama 3.2 Vision loops over each message's content; Python iterates a string's characters.
        Assert.Equal("h|é|🙂|", Render("{% for c in s %}{{ c }}|{% endfor %}", new Dictionary<string, object?> { ["s"] = "hé🙂" }));
        // QwQ and Qwen 3 strip answers with lstrip('\n'): only newlines go.
        Assert.Equal("  answer|x\n|\nx|answer", Render("{{ '\n\n  answer'.lstrip('\n') }}|{{ '\nx\n'.lstrip('\n') }}|{{ '\nx\n'.rstrip('\n') }}|{{ '  answer  '.strip() }}"));
        Assert.Equal("c", Render("{{ 'abcab'.strip('ab') }}"));
        // Qwen3-Coder rejects handled keys; Llama 3.1 rejects code_interpreter from builtin_tools.
        Assert.Equal("enum,x", Render("{{ ['type', 'enum', 'x', 'description']|reject('in', ['type', 'description'])|join(',') }}"));
        Assert.Equal("brave_search, wolfram_alpha", Render("{{ ['brave_search', 'code_interpreter', 'wolfram_alpha']|reject('equalto', 'code_interpreter')|join(', ') }}"));
        Assert.Equal("[1, 3]|[2]|[1, 2]", Render("{{ [1, 2, 3]|select('odd') }}|{{ [1, 2, 3]|reject('odd') }}|{{ [0, 1, none, 2]|select }}"));
        // + joins strings only (the reference would print "a1" and a dict as "[object Map]"); ~ converts, as in both.
        Assert.Equal("can only concatenate str (not \"dict\") to str", Assert.Throws<JinjaException>(() => Render("{{ 'args: ' + {'a': 1} }}")).Message);
        Assert.Equal("can only concatenate str (not \"int\") to str", Assert.Throws<JinjaException>(() => Render("{{ 1 + 'a' }}")).Message);
        Assert.Equal("a1", Render("{{ 'a' ~ 1 }}"));
        // A dict keeps its keys' order (JavaScript would move integer-like keys such as "2" first).
        Assert.Equal("{\"b\": 1, \"2\": 2}|b2", Render("{{ d|tojson }}|{% for k in d %}{{ k }}{% endfor %}",
            new Dictionary<string, object?> { ["d"] = JsonNode.Parse("{\"b\": 1, \"2\": 2}") }));
    }

    [Fact]
    public void Raise_exception_reaches_the_caller_with_exactly_the_templates_message()
    {
        var e = Assert.Throws<JinjaException>(() => Render("{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"));
        Assert.True(e.IsRaisedByTemplate);
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", e.Message);
        Assert.False(Assert.Throws<JinjaException>(() => Render("{{ 'a' * 2 }}")).IsRaisedByTemplate);
    }

    [Fact]
    public void Syntax_errors_say_where()
    {
        var e = Assert.Throws<JinjaException>(() => JinjaTemplate.Parse("line one\n{% if x %}\n  {{ 1 + }}\n{% endif %}"));
        Assert.Contains("(line 3, column 10)", e.Message);
        Assert.Contains("line 2", Assert.Throws<JinjaException>(() => JinjaTemplate.Parse("a\n {% foo %}")).Message);
        Assert.Contains("unexpected end", Assert.Throws<JinjaException>(() => JinjaTemplate.Parse("{% if x %}no end")).Message);
    }

    [Fact]
    public void Strftime_now_reads_the_injected_clock_in_its_local_time()
    {
        var clock = new JinjaReference.FixedClock();
        Assert.Equal("07 Mar 2026, March 09:05", Render("{{ strftime_now('%d %b %Y, %B %H:%M') }}", null, new JinjaRenderOptions(Clock: clock)));
    }

    [Fact]
    public void Host_variables_replace_globals()
    {
        Assert.Equal("mine", Render("{{ range }}", new Dictionary<string, object?> { ["range"] = "mine" }));
    }
}
