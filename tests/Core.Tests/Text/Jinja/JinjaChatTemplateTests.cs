using System.Text;
using System.Text.Json.Nodes;
using AdapterService.Core.Tests.Text;
using AdapterService.Core.Text.Jinja;
using Xunit.Abstractions;

namespace AdapterService.Core.Tests.Text.Jinja;

/// <summary>Every real chat template installed in tests/hf-reference, rendered with @huggingface/jinja once for the
/// class (node runs once), and the reference's renders.</summary>
public sealed class BundledTemplateRenders
{
    public List<JinjaReference.Rendered> Templates { get; } = JinjaReference.Render(bundled: true, [], JinjaChatTemplateTests.Cases);
}

/// <summary>
/// The ~100 Hugging Face chat templates of Ollama's map and the tokenizer_config.json templates of Gemma 3, Qwen 3 and
/// Llama 3.1, with conversations of every shape the service sends: each must render to exactly the reference's text, or
/// fail where the reference fails.
/// </summary>
[Collection(TextReferences.Name)]
public sealed class JinjaChatTemplateTests(BundledTemplateRenders reference, ITestOutputHelper log) : IClassFixture<BundledTemplateRenders>
{
    const string Bos = "<s>", Eos = "</s>";

    static JsonObject Message(string role, string? content, JsonObject? extra = null)
    {
        var message = new JsonObject { ["role"] = role, ["content"] = content };
        foreach (var (key, value) in extra ?? []) message[key] = value?.DeepClone();
        return message;
    }

    static JsonObject ToolCall(string id, string name, bool argumentsAsString) => new()
    {
        ["id"] = id,
        ["type"] = "function",
        ["function"] = new JsonObject
        {
            ["name"] = name,
            ["arguments"] = argumentsAsString
                ? "{\"city\": \"Paris\", \"unit\": \"celsius\"}"
                : new JsonObject { ["city"] = "Paris", ["unit"] = "celsius" },
        },
    };

    static readonly JsonArray Tools =
    [
        new JsonObject
        {
            ["type"] = "function",
            ["function"] = new JsonObject
            {
                ["name"] = "get_weather",
                ["description"] = "Current weather for a city.",
                ["parameters"] = new JsonObject
                {
                    ["type"] = "object",
                    ["properties"] = new JsonObject
                    {
                        ["city"] = new JsonObject { ["type"] = "string", ["description"] = "The city's name" },
                        ["unit"] = new JsonObject { ["type"] = "string", ["enum"] = new JsonArray("celsius", "fahrenheit") },
                    },
                    ["required"] = new JsonArray("city"),
                },
            },
        },
    ];

    static JsonObject Case(JsonArray messages, bool addGenerationPrompt, Action<JsonObject>? more = null)
    {
        var variables = new JsonObject
        {
            ["messages"] = messages,
            ["bos_token"] = Bos,
            ["eos_token"] = Eos,
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        more?.Invoke(variables);
        return variables;
    }

    static JsonArray ToolConversation(bool argumentsAsString) =>
    [
        Message("system", "You are a helpful assistant."),
        Message("user", "What's the weather in Paris?"),
        Message("assistant", null, new JsonObject { ["tool_calls"] = new JsonArray(ToolCall("call_1", "get_weather", argumentsAsString)) }),
        Message("tool", "{\"temperature\": 18, \"condition\": \"sunny\"}", new JsonObject { ["tool_call_id"] = "call_1", ["name"] = "get_weather" }),
        Message("assistant", "It is 18 °C and sunny in Paris."),
        Message("user", "Thanks!"),
    ];

    /// <summary>The conversations: names for messages, variables as JSON.</summary>
    public static readonly (string Name, JsonObject Variables)[] Named =
    [
        ("system and user", Case([Message("system", "You are a helpful assistant."), Message("user", "Hello!")], true)),
        ("user only, no generation prompt", Case([Message("user", "Hello!")], false)),
        ("multi-turn", Case([Message("user", "Hi"), Message("assistant", "Hello! How can I help?"), Message("user", "Tell me a joke.")], true)),
        ("multi-turn ending with the assistant", Case([Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello.")], false)),
        ("tool call, arguments as a JSON string", Case(ToolConversation(argumentsAsString: true), true, v => v["tools"] = Tools.DeepClone())),
        ("tool call, arguments as an object", Case(ToolConversation(argumentsAsString: false), true, v => v["tools"] = Tools.DeepClone())),
        ("tools without calls", Case([Message("user", "What's the weather in Paris?")], true, v => v["tools"] = Tools.DeepClone())),
        ("reasoning, thinking enabled", Case(
            [Message("user", "2+2?"), Message("assistant", "<think>\nTwo plus two is four.\n</think>\n\n4"), Message("user", "And 3+3?")], true,
            v => v["enable_thinking"] = true)),
        ("reasoning, thinking disabled", Case(
            [Message("user", "2+2?"), Message("assistant", "<think>\nSimple.\n</think>\n\n4")], true, v => v["enable_thinking"] = false)),
        ("non-ASCII, quotes, backslashes, newlines", Case(
            [
                Message("system", "Réponds en français — «citations» et 日本語 🙂."),
                Message("user", "Say \"hi\" and 'bye'\\n\nwith a tab\tand a backslash \\ and {{ braces }} {% tags %}."),
                Message("assistant", "  Padded answer with trailing newline\n"),
                Message("user", "\u00e9\u0301 \u2028 end"),
            ], true)),
        ("parallel tool calls", Case(
            [
                Message("user", "Weather in Paris and Rome?"),
                Message("assistant", "", new JsonObject { ["tool_calls"] = new JsonArray(ToolCall("call_1", "get_weather", true), ToolCall("call_2", "get_weather", true)) }),
                Message("tool", "{\"temperature\": 18}", new JsonObject { ["tool_call_id"] = "call_1" }),
                Message("tool", "{\"temperature\": 24}", new JsonObject { ["tool_call_id"] = "call_2" }),
            ], true, v => v["tools"] = Tools.DeepClone())),
        ("builtin tools", Case(
            [Message("user", "Search the news."), Message("assistant", null, new JsonObject { ["tool_calls"] = new JsonArray(new JsonObject
            {
                ["id"] = "call_9", ["type"] = "function",
                ["function"] = new JsonObject { ["name"] = "brave_search", ["arguments"] = new JsonObject { ["query"] = "news" } },
            }) })], true, v =>
            {
                v["builtin_tools"] = new JsonArray("brave_search", "code_interpreter", "wolfram_alpha");
                v["tools"] = Tools.DeepClone();
            })),
        ("reasoning_content field", Case(
            [Message("user", "2+2?"), Message("assistant", "4", new JsonObject { ["reasoning_content"] = "Two plus two." }), Message("user", "3+3?")], true,
            v => v["enable_thinking"] = true)),
        ("documents", Case([Message("user", "Summarize the documents.")], true, v => v["documents"] = new JsonArray(
            new JsonObject { ["title"] = "Doc A", ["text"] = "Alpha text." }, new JsonObject { ["title"] = "Doc B", ["text"] = "Beta text." }))),
        ("content as parts", Case(
            [new JsonObject { ["role"] = "user", ["content"] = new JsonArray(new JsonObject { ["type"] = "text", ["text"] = "Describe this." }) }], true)),
        ("no messages", Case([], true)),
        ("two users in a row", Case([Message("user", "One"), Message("user", "Two")], true)),
    ];

    public static readonly IReadOnlyList<JsonObject> Cases = Named.Select(c => c.Variables).ToList();

    /// <summary>The cases whose messages all have string contents and no tool calls (which Llama 3.2 Vision handles otherwise).</summary>
    static readonly string[] StringContentCases = Named.Select(c => c.Name)
        .Where(n => n is not ("content as parts" or "no messages" or "parallel tool calls" or "builtin tools") && !n.StartsWith("tool call")).ToArray();

    /// <summary>
    /// Where the reference fails or renders what Python's Jinja (transformers' renderer) would not, and this engine
    /// follows Python: the template, the cases, and why. (Checked against Python's jinja2 3.1 with transformers'
    /// settings when written.)
    /// </summary>
    static readonly (string Template, string[] Cases, string Why)[] KnownDifferences =
    [
        ("library/llama3.2-vision:90b", StringContentCases,
            "the template loops over every message's content to look for images; Python iterates a string content's characters, the reference refuses to loop over a string"),
        ("library/llama3.2-vision:latest", StringContentCases,
            "the template loops over every message's content to look for images; Python iterates a string content's characters, the reference refuses to loop over a string"),
        ("library/qwen3-coder:30b", ["tool call, arguments as an object", "tools without calls", "builtin tools"],
            "the template renders tool parameters with `keys() | reject(\"in\", handled_keys)`; the reference has no reject filter"),
        ("library/llama3.1:8b", ["builtin tools"],
            "the template lists builtin_tools with `reject('equalto', 'code_interpreter')`; the reference has no reject filter"),
        ("library/nemotron:70b", ["builtin tools"],
            "the template lists builtin_tools with `reject('equalto', 'code_interpreter')`; the reference has no reject filter"),
        ("library/qwq:32b #2", ["non-ASCII, quotes, backslashes, newlines"],
            "the template strips an answer with lstrip('\\n'); the reference ignores the argument and also strips the answer's leading spaces"),
        ("library/qwq:32b #3", ["non-ASCII, quotes, backslashes, newlines"],
            "the template strips an answer with lstrip('\\n'); the reference ignores the argument and also strips the answer's leading spaces"),
    ];

    /// <summary>
    /// One more known difference, by rule rather than by name: where a template joins a string with + to a list or a
    /// dict (a content given as parts to a template that expects a string; tool-call arguments given as an object to
    /// DeepSeek's templates, which expect a JSON string), the reference renders the list as JSON or the dict as
    /// "[object Map]" into the prompt, while Python raises, and so does this engine. Affected renders are logged.
    /// </summary>
    static bool IsStringConcatenationError(string? error) => error?.StartsWith("can only concatenate str", StringComparison.Ordinal) == true;

    static readonly JinjaRenderOptions Options = new(Clock: new JinjaReference.FixedClock());

    [Fact]
    public void Every_bundled_template_renders_as_the_reference_does()
    {
        Assert.True(reference.Templates.Count >= 95, $"only {reference.Templates.Count} templates found");
        var failures = new List<string>();
        int identical = 0, bothRaise = 0, known = 0;
        var concatenations = new List<string>();
        var summary = new StringBuilder();
        foreach (var template in reference.Templates)
        {
            JinjaTemplate? parsed = null;
            string? parseError = null;
            try { parsed = JinjaTemplate.Parse(template.Source); }
            catch (JinjaException e) { parseError = e.Message; }
            var raised = new List<string>();
            for (int i = 0; i < Named.Length; i++)
            {
                var (text, error) = template.Renders[i];
                string? ours = null, ourError = parseError;
                if (parsed is not null)
                {
                    try { ours = parsed.Render(JinjaReference.Variables(Named[i].Variables), Options).Text; }
                    catch (JinjaException e) { ourError = e.Message; }
                }
                bool same = text is not null ? ours == text : ourError is not null;
                if (text is not null && IsStringConcatenationError(ourError))
                {
                    concatenations.Add($"{template.Name} / {Named[i].Name}");
                    continue;
                }
                if (KnownDifferences.FirstOrDefault(d => d.Template == template.Name && d.Cases.Contains(Named[i].Name)).Why is { } why)
                {
                    known++;
                    Assert.False(same, $"{template.Name} / {Named[i].Name} is listed as differing ({why}) but now agrees; drop it from the list");
                    continue;
                }
                if (!same) failures.Add(Describe(template.Name, Named[i].Name, text, error, ours, ourError));
                else if (text is null)
                {
                    bothRaise++;
                    raised.Add($"\n    {Named[i].Name}: reference \"{error}\", ours \"{ourError}\"");
                }
                else identical++;
            }
            summary.AppendLine($"{template.Name}: {(raised.Count == 0 ? "all cases render" : $"{raised.Count} of {Named.Length} cases raise in both:{string.Concat(raised)}")}");
        }
        log.WriteLine($"{reference.Templates.Count} templates × {Named.Length} cases: {identical} identical texts, {bothRaise} raise in both, {known + concatenations.Count} known differences (Python's behaviour), {failures.Count} differ");
        log.WriteLine(summary.ToString());
        log.WriteLine($"Raise where the reference joins a string with a list or dict ({concatenations.Count}):\n  {string.Join("\n  ", concatenations)}");
        Assert.True(failures.Count == 0, $"{failures.Count} renders differ from @huggingface/jinja:\n{string.Join("\n", failures.Take(15))}");
    }

    static string Describe(string template, string name, string? text, string? error, string? ours, string? ourError)
    {
        if (text is null) return $"- {template} / {name}: the reference raises ({error}) but this engine renders";
        if (ours is null) return $"- {template} / {name}: this engine raises ({ourError}) but the reference renders";
        int at = 0;
        while (at < text.Length && at < ours.Length && text[at] == ours[at]) at++;
        string Around(string s) => s.Substring(Math.Max(0, at - 40), Math.Min(s.Length - Math.Max(0, at - 40), 100)).ReplaceLineEndings("⏎");
        return $"- {template} / {name}: first difference at {at}:\n    reference: {Around(text)}\n    ours:      {Around(ours)}";
    }
}
