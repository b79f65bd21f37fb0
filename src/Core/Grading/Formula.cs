using System.Globalization;

namespace AdapterService.Core.Grading;

/// <summary>
/// A multi grader's <c>calculate_output</c>: numbers, the sub-graders' names, + − * / ^ (power, right-associative),
/// unary minus, parentheses, and the functions OpenAI's guide lists: min, max (any number of arguments), abs, floor, ceil,
/// exp, sqrt, log (natural). Parsed once by recursive descent into a closure; nothing else is evaluated (no code runs).
/// </summary>
public sealed class Formula
{
    static readonly Dictionary<string, (int MinArgs, int MaxArgs, Func<double[], double> Apply)> Functions = new()
    {
        ["min"] = (1, int.MaxValue, a => a.Min()),
        ["max"] = (1, int.MaxValue, a => a.Max()),
        ["abs"] = (1, 1, a => Math.Abs(a[0])),
        ["floor"] = (1, 1, a => Math.Floor(a[0])),
        ["ceil"] = (1, 1, a => Math.Ceiling(a[0])),
        ["exp"] = (1, 1, a => Math.Exp(a[0])),
        ["sqrt"] = (1, 1, a => Math.Sqrt(a[0])),
        ["log"] = (1, 1, a => Math.Log(a[0])),
    };

    readonly Func<IReadOnlyDictionary<string, double>, double> evaluate;
    public string Source { get; }
    public string Param { get; }

    Formula(string source, string param, Func<IReadOnlyDictionary<string, double>, double> evaluate) => (Source, Param, this.evaluate) = (source, param, evaluate);

    public double Evaluate(IReadOnlyDictionary<string, double> values) => evaluate(values);

    /// <summary>Parses <paramref name="source"/>; a name outside <paramref name="names"/> or a syntax error is a <see cref="GraderException"/> naming <paramref name="param"/>.</summary>
    public static Formula Parse(string source, IReadOnlySet<string> names, string param)
    {
        var parser = new Parser(source, names, param);
        var root = parser.Expression();
        if (parser.Peek() is { } extra) throw parser.Error($"unexpected '{extra}'");
        return new Formula(source, param, root);
    }

    sealed class Parser(string source, IReadOnlySet<string> names, string param)
    {
        int at;

        public GraderException Error(string what) =>
            new($"calculate_output '{source}': {what} at character {at + 1}; a formula has numbers, the graders' names ({string.Join(", ", names)}), + - * / ^, parentheses and {string.Join(", ", Functions.Keys)}.", param);

        /// <summary>The next token's text without taking it, or null at the end.</summary>
        public string? Peek()
        {
            while (at < source.Length && char.IsWhiteSpace(source[at])) at++;
            if (at >= source.Length) return null;
            int end = at;
            if (char.IsDigit(source[at]) || source[at] == '.')
            {
                while (end < source.Length && (char.IsDigit(source[end]) || source[end] == '.')) end++;
                if (end < source.Length && source[end] is 'e' or 'E')
                {
                    int exponent = end + 1;
                    if (exponent < source.Length && source[exponent] is '+' or '-') exponent++;
                    if (exponent < source.Length && char.IsDigit(source[exponent]))
                        for (end = exponent; end < source.Length && char.IsDigit(source[end]);) end++;
                }
            }
            else if (char.IsLetter(source[at]) || source[at] == '_')
                while (end < source.Length && (char.IsLetterOrDigit(source[end]) || source[end] == '_')) end++;   // '-' is minus: names with it cannot be used
            else end++;
            return source[at..end];
        }

        string Take() { var token = Peek()!; at += token.Length; return token; }

        bool TakeIf(string token)
        {
            if (Peek() != token) return false;
            at += token.Length;
            return true;
        }

        public Func<IReadOnlyDictionary<string, double>, double> Expression()
        {
            var left = Term();
            while (Peek() is "+" or "-")
            {
                var (op, l, r) = (Take(), left, Term());
                left = op == "+" ? v => l(v) + r(v) : v => l(v) - r(v);
            }
            return left;
        }

        Func<IReadOnlyDictionary<string, double>, double> Term()
        {
            var left = Unary();
            while (Peek() is "*" or "/")
            {
                var (op, l, r) = (Take(), left, Unary());
                left = op == "*" ? v => l(v) * r(v) : v => l(v) / r(v);
            }
            return left;
        }

        Func<IReadOnlyDictionary<string, double>, double> Unary()
        {
            if (TakeIf("-")) { var inner = Unary(); return v => -inner(v); }
            if (TakeIf("+")) return Unary();
            var power = Primary();
            if (!TakeIf("^")) return power;
            var exponent = Unary();
            return v => Math.Pow(power(v), exponent(v));
        }

        Func<IReadOnlyDictionary<string, double>, double> Primary()
        {
            var token = Peek() ?? throw Error("the formula ends where a value is expected");
            if (char.IsDigit(token[0]) || token[0] == '.')
            {
                if (!double.TryParse(token, NumberStyles.Float, CultureInfo.InvariantCulture, out double number)) throw Error($"'{token}' is not a number");
                Take();
                return _ => number;
            }
            if (TakeIf("("))
            {
                var inner = Expression();
                if (!TakeIf(")")) throw Error("a ')' is missing");
                return inner;
            }
            if (char.IsLetter(token[0]) || token[0] == '_')
            {
                Take();
                if (Functions.TryGetValue(token, out var function) && Peek() == "(")
                {
                    Take();
                    var args = new List<Func<IReadOnlyDictionary<string, double>, double>> { Expression() };
                    while (TakeIf(",")) args.Add(Expression());
                    if (!TakeIf(")")) throw Error($"a ')' is missing after {token}'s arguments");
                    if (args.Count < function.MinArgs || args.Count > function.MaxArgs) throw Error($"{token} takes {function.MinArgs} argument{(function.MinArgs == 1 ? "" : "s")}, not {args.Count}");
                    var apply = function.Apply;
                    return v => apply(args.Select(a => a(v)).ToArray());
                }
                if (!names.Contains(token)) throw Error($"'{token}' is not one of the graders");
                return v => v[token];
            }
            throw Error($"unexpected '{token}'");
        }
    }
}
