using System.Globalization;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Core.Text.Jinja;

/// <summary>
/// A runtime value. The kinds and their conversions follow @huggingface/jinja, whose numbers are JavaScript doubles
/// tagged integer or float, whose strings print JavaScript's way and whose containers print as JSON.
/// </summary>
abstract class Value
{
    /// <summary>The reference's type name, which its error messages show.</summary>
    public abstract string TypeName { get; }
}

sealed class UndefinedValue : Value
{
    public static readonly UndefinedValue Instance = new();
    public override string TypeName => "UndefinedValue";
}

sealed class NullValue : Value
{
    public static readonly NullValue Instance = new();
    public override string TypeName => "NullValue";
}

sealed class BoolValue : Value
{
    public static readonly BoolValue True = new(true), False = new(false);
    BoolValue(bool value) => Value = value;
    public bool Value { get; }
    public static BoolValue Of(bool value) => value ? True : False;
    public override string TypeName => "BooleanValue";
}

/// <summary>A JavaScript number; <see cref="IsInteger"/> is the reference's IntegerValue/FloatValue split.</summary>
sealed class NumberValue(double value, bool isInteger) : Value
{
    public double Value { get; } = value;
    public bool IsInteger { get; } = isInteger;
    public static NumberValue Integer(double value) => new(value, true);
    public static NumberValue Float(double value) => new(value, false);
    /// <summary>How the reference converts a host number: integral values become integers.</summary>
    public static NumberValue FromHost(double value) => new(value, double.IsFinite(value) && Math.Floor(value) == value);
    public override string TypeName => IsInteger ? "IntegerValue" : "FloatValue";
}

sealed class StringValue(string value) : Value
{
    public static readonly StringValue Empty = new("");
    public string Value { get; } = value;
    public override string TypeName => "StringValue";
}

/// <summary>A list; tuples are lists that remember they were written as tuples (the reference's TupleValue).</summary>
sealed class ArrayValue(List<Value> items, bool isTuple = false) : Value
{
    public List<Value> Items { get; } = items;
    public bool IsTuple { get; } = isTuple;
    public override string TypeName => IsTuple ? "TupleValue" : "ArrayValue";
}

/// <summary>A mapping in insertion order; keyword arguments travel to functions as one of these, marked.</summary>
sealed class ObjectValue(OrderedDictionary<string, Value> map, bool isKeywordArguments = false) : Value
{
    public OrderedDictionary<string, Value> Map { get; } = map;
    public bool IsKeywordArguments { get; } = isKeywordArguments;
    public override string TypeName => IsKeywordArguments ? "KeywordArgumentsValue" : "ObjectValue";
}

/// <summary>namespace(): attributes can be assigned, but it is no mapping (no methods, no filters).</summary>
sealed class NamespaceValue(OrderedDictionary<string, Value> map) : Value
{
    public OrderedDictionary<string, Value> Map { get; } = map;
    public override string TypeName => "NamespaceValue";
}

/// <summary>A callable: a global, a bound method or a macro. It gets the arguments (keyword arguments last, as one
/// marked object) and the caller's scope, which macros see (the reference scopes macros dynamically).</summary>
sealed class FunctionValue(string name, Func<List<Value>, Scope, Value> call) : Value
{
    public string Name { get; } = name;
    public Func<List<Value>, Scope, Value> Call { get; } = call;
    public override string TypeName => "FunctionValue";
}

/// <summary>Conversions between values, text and JSON, as JavaScript performs them in the reference.</summary>
static class Values
{
    /// <summary>Containers nest at most this deep when printed or converted (a namespace can contain itself).</summary>
    public const int MaxDepth = 256;

    /// <summary>Python-like truthiness as the reference defines it.</summary>
    public static bool Truthy(Value v) => v switch
    {
        BoolValue b => b.Value,
        NumberValue n => n.Value != 0 && !double.IsNaN(n.Value),
        StringValue s => s.Value.Length > 0,
        ArrayValue a => a.Items.Count > 0,
        ObjectValue o => o.Map.Count > 0,
        NamespaceValue or FunctionValue => true,
        _ => false,
    };

    /// <summary>How a value prints in the output (the reference's toString).</summary>
    public static string Display(Value v, Budget budget) => v switch
    {
        UndefinedValue => "undefined",
        NullValue => "null",
        BoolValue b => b.Value ? "true" : "false",
        NumberValue { IsInteger: true } n => FormatNumber(n.Value),
        NumberValue n => FormatFloat(n.Value),
        StringValue s => s.Value,
        ArrayValue or ObjectValue or NamespaceValue => ToJson(v, new JsonFormat(), budget, undefinedAsNull: false),
        FunctionValue f => $"function {f.Name}",
        _ => throw new InvalidOperationException(v.TypeName),
    };

    /// <summary>JavaScript's String() of the value's raw payload, used by <c>~</c>, <c>+</c> and <c>join</c>:
    /// numbers lose their float tag, lists join their items with commas, maps are "[object Map]".</summary>
    public static string Raw(Value v, Budget budget) => v switch
    {
        NumberValue n => FormatNumber(n.Value),
        ArrayValue a => Join(a.Items, ",", x => Display(x, budget), budget),
        ObjectValue or NamespaceValue => "[object Map]",
        _ => Display(v, budget),
    };

    /// <summary>Joins after checking the total length, so a huge list cannot build a huge string.</summary>
    public static string Join(IReadOnlyList<Value> items, string separator, Func<Value, string> text, Budget budget)
    {
        var parts = new string[items.Count];
        long length = (long)separator.Length * Math.Max(0, items.Count - 1);
        for (int i = 0; i < parts.Length; i++)
        {
            parts[i] = text(items[i]);
            length += parts[i].Length;
            budget.CheckLength(length);
        }
        return string.Join(separator, parts);
    }

    /// <summary>JavaScript's Number.prototype.toString: shortest round-trip digits, exponent outside 1e-7..1e21.</summary>
    public static string FormatNumber(double d)
    {
        if (double.IsNaN(d)) return "NaN";
        if (double.IsInfinity(d)) return d > 0 ? "Infinity" : "-Infinity";
        if (d == 0) return "0";
        string r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        int exponent = 0, e = r.IndexOf('E');
        string mantissa = r;
        if (e >= 0) { exponent = int.Parse(r[(e + 1)..], CultureInfo.InvariantCulture); mantissa = r[..e]; }
        int dot = mantissa.IndexOf('.');
        string digits = dot >= 0 ? mantissa.Remove(dot, 1) : mantissa;
        int integerDigits = dot >= 0 ? dot : mantissa.Length;
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') lead++;
        digits = digits[lead..].TrimEnd('0');
        int n = integerDigits - lead + exponent, k = digits.Length;
        string body =
            k <= n && n <= 21 ? digits + new string('0', n - k)
            : 0 < n && n <= 21 ? digits[..n] + "." + digits[n..]
            : -6 < n && n <= 0 ? "0." + new string('0', -n) + digits
            : digits[..1] + (k > 1 ? "." + digits[1..] : "") + "e" + (n - 1 >= 0 ? "+" : "-") + Math.Abs(n - 1);
        return d < 0 ? "-" + body : body;
    }

    /// <summary>The reference's FloatValue: integral values keep ".0" (toFixed(1), exact digits below 1e21).</summary>
    public static string FormatFloat(double d)
    {
        if (d == 0 && double.IsNegative(d)) return "-0.0";
        if (!double.IsFinite(d) || Math.Floor(d) != d) return FormatNumber(d);
        return Math.Abs(d) >= 1e21 ? FormatNumber(d) : new BigInteger(d).ToString(CultureInfo.InvariantCulture) + ".0";
    }

    /// <summary>tojson's options: Python's json.dumps arguments as the reference reads them.</summary>
    public sealed record JsonFormat(int Indent = 0, bool EnsureAscii = false, (string Item, string Key)? Separators = null, bool SortKeys = false);

    /// <summary>The reference's toJSON: key order kept, ", " and ": " (or "," with an indent), non-ASCII kept.</summary>
    public static string ToJson(Value v, JsonFormat format, Budget budget, bool undefinedAsNull = true)
    {
        var sb = new StringBuilder();
        WriteJson(sb, v, format, 0, undefinedAsNull, budget);
        return sb.ToString();
    }

    static void WriteJson(StringBuilder sb, Value v, JsonFormat f, int depth, bool undefinedAsNull, Budget budget)
    {
        if (depth > MaxDepth || !RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw new JinjaException($"value nested more than {MaxDepth} levels deep (or containing itself)");
        budget.CheckLength(sb.Length);
        var (item, key) = f.Separators ?? (f.Indent > 0 ? (",", ": ") : (", ", ": "));
        string Padding(int level)
        {
            budget.CheckLength(sb.Length + (long)f.Indent * level);
            return "\n" + new string(' ', f.Indent * level);
        }
        switch (v)
        {
            case NullValue: sb.Append("null"); break;
            case UndefinedValue: sb.Append(undefinedAsNull ? "null" : "undefined"); break;
            case BoolValue b: sb.Append(b.Value ? "true" : "false"); break;
            case NumberValue n: sb.Append(double.IsFinite(n.Value) ? FormatNumber(n.Value) : "null"); break;
            case StringValue s: WriteJsonString(sb, s.Value, f.EnsureAscii); break;
            case ArrayValue { IsTuple: true }:
                // The reference serializes lists, not tuples (so printing a tuple fails there too).
                throw new JinjaException("Cannot convert to JSON: TupleValue");
            case ArrayValue a:
                sb.Append('[');
                for (int i = 0; i < a.Items.Count; i++)
                {
                    if (i > 0) sb.Append(item);
                    if (f.Indent > 0) sb.Append(Padding(depth + 1));
                    WriteJson(sb, a.Items[i], f, depth + 1, undefinedAsNull, budget);
                }
                if (f.Indent > 0 && a.Items.Count > 0) sb.Append(Padding(depth));
                sb.Append(']');
                break;
            case ObjectValue or NamespaceValue:
                var map = v is ObjectValue o ? o.Map : ((NamespaceValue)v).Map;
                IEnumerable<KeyValuePair<string, Value>> entries = f.SortKeys
                    ? map.OrderBy(p => p.Key, StringComparer.Create(CultureInfo.InvariantCulture, false)) : map;
                sb.Append('{');
                bool first = true;
                foreach (var (k, value) in entries)
                {
                    if (!first) sb.Append(item);
                    first = false;
                    if (f.Indent > 0) sb.Append(Padding(depth + 1));
                    WriteJsonString(sb, k, f.EnsureAscii);
                    sb.Append(key);
                    WriteJson(sb, value, f, depth + 1, undefinedAsNull, budget);
                }
                if (f.Indent > 0 && map.Count > 0) sb.Append(Padding(depth));
                sb.Append('}');
                break;
            default: throw new JinjaException($"Cannot convert to JSON: {v.TypeName}");
        }
    }

    /// <summary>JSON.stringify of a string (control characters and lone surrogates as \u escapes); ensure_ascii then
    /// escapes every character from U+007F up, as the reference does.</summary>
    static void WriteJsonString(StringBuilder sb, string s, bool ensureAscii)
    {
        sb.Append('"');
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    bool lone = char.IsHighSurrogate(c) ? i + 1 >= s.Length || !char.IsLowSurrogate(s[i + 1])
                        : char.IsLowSurrogate(c) && (i == 0 || !char.IsHighSurrogate(s[i - 1]));
                    if (c < 0x20 || lone || (ensureAscii && c >= 0x7f)) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }

    /// <summary>A host value as the reference's convertToRuntimeValues would see it after JSON.parse.</summary>
    public static Value FromHost(object? value, int depth = 0)
    {
        if (depth > MaxDepth) throw new JinjaException($"variables nested more than {MaxDepth} levels deep");
        switch (value)
        {
            case null: return NullValue.Instance;
            case bool b: return BoolValue.Of(b);
            case int i: return NumberValue.Integer(i);
            case long l: return NumberValue.Integer(l);
            case double d: return NumberValue.FromHost(d);
            case float f: return NumberValue.FromHost(f);
            case string s: return new StringValue(s);
            case JsonObject o:
                var map = new OrderedDictionary<string, Value>(o.Count);
                foreach (var (k, v) in o) map[k] = FromHost(v, depth + 1);
                return new ObjectValue(map);
            case JsonArray a: return new ArrayValue(a.Select(x => FromHost(x, depth + 1)).ToList());
            case JsonValue j:
                return j.GetValueKind() switch
                {
                    JsonValueKind.String => new StringValue(j.GetValue<string>()),
                    JsonValueKind.Number => NumberValue.FromHost(double.Parse(j.ToJsonString(), CultureInfo.InvariantCulture)),
                    JsonValueKind.True => BoolValue.True,
                    JsonValueKind.False => BoolValue.False,
                    _ => NullValue.Instance,
                };
            case IReadOnlyDictionary<string, object?> d:
                var entries = new OrderedDictionary<string, Value>(d.Count);
                foreach (var (k, v) in d) entries[k] = FromHost(v, depth + 1);
                return new ObjectValue(entries);
            case IReadOnlyList<object?> list: return new ArrayValue(list.Select(x => FromHost(x, depth + 1)).ToList());
            default: throw new JinjaException($"variables of type {value.GetType().Name} are not supported");
        }
    }

    /// <summary>JavaScript's == on the raw payloads (1 == "1", null == undefined); containers by identity.</summary>
    public static bool LooseEquals(Value a, Value b, Budget budget)
    {
        if (a is UndefinedValue or NullValue || b is UndefinedValue or NullValue)
            return a is UndefinedValue or NullValue && b is UndefinedValue or NullValue;
        if (a is ArrayValue or ObjectValue or NamespaceValue or FunctionValue && b is ArrayValue or ObjectValue or NamespaceValue or FunctionValue)
            return ReferenceEquals(a, b);
        if (a is ArrayValue or ObjectValue or NamespaceValue or FunctionValue) a = new StringValue(Raw(a, budget));
        if (b is ArrayValue or ObjectValue or NamespaceValue or FunctionValue) b = new StringValue(Raw(b, budget));
        if (a is StringValue sa && b is StringValue sb) return string.Equals(sa.Value, sb.Value, StringComparison.Ordinal);
        return ToNumber(a) == ToNumber(b);
    }

    /// <summary>JavaScript's === on the raw payloads (used by <c>in</c> on lists and by <c>unique</c>).</summary>
    public static bool StrictEquals(Value a, Value b) => (a, b) switch
    {
        (NumberValue x, NumberValue y) => x.Value == y.Value,
        (StringValue x, StringValue y) => string.Equals(x.Value, y.Value, StringComparison.Ordinal),
        (BoolValue x, BoolValue y) => x.Value == y.Value,
        (NullValue, NullValue) or (UndefinedValue, UndefinedValue) => true,
        _ => ReferenceEquals(a, b),
    };

    /// <summary>JavaScript's ToNumber of a primitive payload.</summary>
    public static double ToNumber(Value v) => v switch
    {
        NumberValue n => n.Value,
        BoolValue b => b.Value ? 1 : 0,
        NullValue => 0,
        StringValue s => StringToNumber(s.Value),
        _ => double.NaN,
    };

    static double StringToNumber(string s)
    {
        s = Js.Trim(s);
        if (s.Length == 0) return 0;
        if (s.Length > 2 && s[0] == '0' && s[1] is 'x' or 'X')
            return ulong.TryParse(s[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var hex) ? hex : double.NaN;
        if (s is "Infinity" or "+Infinity") return double.PositiveInfinity;
        if (s is "-Infinity") return double.NegativeInfinity;
        return s.All(c => char.IsAsciiDigit(c) || c is '.' or 'e' or 'E' or '+' or '-')
            && double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : double.NaN;
    }
}

/// <summary>JavaScript's string primitives where .NET's differ: its whitespace set, and parseInt/parseFloat prefixes.</summary>
static class Js
{
    /// <summary>JavaScript's \s and trim() set (no U+0085; U+FEFF included).</summary>
    public static bool IsWhiteSpace(char c) => c is ' ' or '\t' or '\n' or '\v' or '\f' or '\r' or '\u00a0' or '\u1680'
        or (>= '\u2000' and <= '\u200a') or '\u2028' or '\u2029' or '\u202f' or '\u205f' or '\u3000' or '\ufeff';

    public static string Trim(string s) => TrimEnd(TrimStart(s));
    public static string TrimStart(string s) { int i = 0; while (i < s.Length && IsWhiteSpace(s[i])) i++; return s[i..]; }
    public static string TrimEnd(string s) { int i = s.Length; while (i > 0 && IsWhiteSpace(s[i - 1])) i--; return s[..i]; }

    /// <summary>parseInt(s, 10): leading whitespace, a sign, then the longest run of digits; NaN without digits.</summary>
    public static double ParseInt(string s)
    {
        s = TrimStart(s);
        int i = s.Length > 0 && s[0] is '+' or '-' ? 1 : 0, start = i;
        while (i < s.Length && char.IsAsciiDigit(s[i])) i++;
        if (i == start) return double.NaN;
        double value = double.Parse(s[start..i], CultureInfo.InvariantCulture);
        return s[0] == '-' ? -value : value;
    }

    /// <summary>parseFloat(s): the longest prefix that is a decimal literal (or Infinity); NaN without one.</summary>
    public static double ParseFloat(string s)
    {
        s = TrimStart(s);
        int i = s.Length > 0 && s[0] is '+' or '-' ? 1 : 0;
        if (string.CompareOrdinal(s, i, "Infinity", 0, 8) == 0) return s[0] == '-' ? double.NegativeInfinity : double.PositiveInfinity;
        int digits = 0;
        while (i < s.Length && char.IsAsciiDigit(s[i])) { i++; digits++; }
        if (i < s.Length && s[i] == '.') { i++; while (i < s.Length && char.IsAsciiDigit(s[i])) { i++; digits++; } }
        if (digits == 0) return double.NaN;
        if (i < s.Length && s[i] is 'e' or 'E')
        {
            int j = i + 1;
            if (j < s.Length && s[j] is '+' or '-') j++;
            int expStart = j;
            while (j < s.Length && char.IsAsciiDigit(s[j])) j++;
            if (j > expStart) i = j;
        }
        return double.Parse(s[..i], NumberStyles.Float, CultureInfo.InvariantCulture);
    }

    /// <summary>String.prototype.toUpperCase/toLowerCase, locale-independent.</summary>
    public static string Upper(string s) => s.ToUpperInvariant();
    public static string Lower(string s) => s.ToLowerInvariant();

    /// <summary>The reference's title(): upper-case each ASCII word character that follows a non-word one (\b\w).</summary>
    public static string Title(string s)
    {
        var chars = s.ToCharArray();
        for (int i = 0; i < chars.Length; i++)
            if (IsWord(chars[i]) && (i == 0 || !IsWord(chars[i - 1]))) chars[i] = char.ToUpperInvariant(chars[i]);
        return new string(chars);
    }

    public static bool IsWord(char c) => char.IsAsciiLetterOrDigit(c) || c == '_';

    /// <summary>Array.from(s): the string's code points.</summary>
    public static List<string> CodePoints(string s)
    {
        var points = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
            points.Add(char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? s.Substring(i++, 2) : s[i].ToString());
        return points;
    }
}
