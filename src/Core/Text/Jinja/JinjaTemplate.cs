namespace AdapterService.Core.Text.Jinja;

/// <summary>
/// A Jinja template as Hugging Face chat templates use them, rendered as @huggingface/jinja (the engine of
/// transformers.js) renders them: its lexer with trim_blocks and lstrip_blocks, its operators, filters, tests and
/// methods, its printing of values. Where that engine plainly departs from Python's Jinja in a way templates meet, this
/// one follows Python (see <see cref="Interpreter"/>). Every failure, hostile templates and variables included, is a
/// <see cref="JinjaException"/>: parsing is bounded by <see cref="JinjaLimits"/>, rendering by <see cref="JinjaRenderOptions"/>.
/// </summary>
public sealed class JinjaTemplate
{
    readonly List<Node> body;

    JinjaTemplate(List<Node> body) => this.body = body;

    /// <summary>Parses <paramref name="source"/>; a syntax error's message says where (line and column).</summary>
    public static JinjaTemplate Parse(string source, JinjaLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        limits ??= new JinjaLimits();
        if (source.Length > limits.MaxSourceChars)
            throw new JinjaException($"template is {source.Length} characters long, more than the {limits.MaxSourceChars} allowed");
        return Guarded(() => new JinjaTemplate(new Parser(Lexer.Tokenize(source), source, limits.MaxNestingDepth).ParseTemplate()));
    }

    /// <summary>Renders with <paramref name="variables"/> (null, bool, numbers, strings, JsonNode, lists and
    /// dictionaries of those); also returns where each <c>{% generation %}</c> block's output lies in the text.</summary>
    public JinjaOutput Render(IReadOnlyDictionary<string, object?> variables, JinjaRenderOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(variables);
        var budget = new Budget(options ?? new JinjaRenderOptions());
        return Guarded(() => new Interpreter(budget).Run(body, variables));
    }

    /// <summary>The final guard: every failure is a JinjaException by design; should a bug slip through as one of
    /// .NET's own exceptions, the caller still gets a JinjaException.</summary>
    static T Guarded<T>(Func<T> run)
    {
        try { return run(); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or InvalidCastException or IndexOutOfRangeException
            or FormatException or OverflowException or NullReferenceException or KeyNotFoundException)
        {
            throw new JinjaException($"template failed: {e.Message}");
        }
    }
}

/// <summary>The rendered text and the spans of it that <c>{% generation %}</c> blocks produced, in order.</summary>
public sealed record JinjaOutput(string Text, IReadOnlyList<JinjaSpan> Generation);

/// <summary>A span of the rendered text: the start index and the length, in UTF-16 code units.</summary>
public readonly record struct JinjaSpan(int Start, int Length);

/// <summary>A template's syntax error, a failed render, or (<see cref="IsRaisedByTemplate"/>) the template's own
/// raise_exception, whose message is exactly the template's.</summary>
public sealed class JinjaException(string message, bool isRaisedByTemplate = false) : Exception(message)
{
    public bool IsRaisedByTemplate { get; } = isRaisedByTemplate;
}

/// <summary>Bounds on parsing: the source's length and how deep blocks and expressions may nest.</summary>
public sealed record JinjaLimits(int MaxSourceChars = 1 << 20, int MaxNestingDepth = 100);

/// <summary>Bounds on rendering and its clock. <paramref name="MaxSteps"/> counts loop iterations, calls, filter
/// applications and items of built lists; <paramref name="MaxOutputChars"/> bounds the output and every string built;
/// <paramref name="MaxCallDepth"/> bounds macro recursion. <paramref name="Clock"/> is strftime_now's (local time).</summary>
public sealed record JinjaRenderOptions(
    TimeProvider? Clock = null,
    int MaxOutputChars = 4 << 20,
    long MaxSteps = 2_000_000,
    TimeSpan? Timeout = null,
    int MaxCallDepth = 100);
