using System.Globalization;
using System.Text;

namespace AdapterService.Core.Text.Jinja;

/// <summary>
/// The reference's globals, tests, filters and methods, with its argument handling: namespace, range,
/// raise_exception, strftime_now; string, dict and list methods; the filters per operand type.
/// </summary>
static class Builtins
{
    public static void DeclareGlobals(Scope global, Budget budget)
    {
        global.Set("namespace", new FunctionValue("namespace", (args, _) => Namespace(args)));
        global.Set("false", BoolValue.False);
        global.Set("true", BoolValue.True);
        global.Set("none", NullValue.Instance);
        global.Set("False", BoolValue.False);
        global.Set("True", BoolValue.True);
        global.Set("None", NullValue.Instance);
        global.Set("raise_exception", new FunctionValue("raise_exception", (args, _) =>
            throw new JinjaException(args.Count == 0 ? "" : Values.Raw(args[0], budget), isRaisedByTemplate: true)));
        global.Set("range", new FunctionValue("range", (args, _) => Range(args, budget)));
        global.Set("strftime_now", new FunctionValue("strftime_now", (args, _) =>
            args.Count > 0 && args[0] is StringValue format
                ? new StringValue(Strftime(budget.Clock.GetLocalNow(), format.Value))
                : throw new JinjaException("strftime_now() takes a format string")));
    }

    static NamespaceValue Namespace(List<Value> args)
    {
        var positional = args.ToList();
        ObjectValue? kwargs = positional.Count > 0 && positional[^1] is ObjectValue { IsKeywordArguments: true } k ? k : null;
        if (kwargs is not null) positional.RemoveAt(positional.Count - 1);
        if (positional.Count > 1) throw new JinjaException($"namespace expected at most 1 argument, got {positional.Count}");
        var entries = new OrderedDictionary<string, Value>();
        if (positional.Count == 1)
        {
            switch (positional[0])
            {
                case ObjectValue o: foreach (var (key, value) in o.Map) entries[key] = value; break;
                case ArrayValue a:
                    foreach (var pair in a.Items)
                    {
                        var items = pair switch
                        {
                            ArrayValue p => p.Items,
                            StringValue s => Js.CodePoints(s.Value).Select(c => (Value)new StringValue(c)).ToList(),
                            _ => null,
                        };
                        if (items is not { Count: 2 }) throw new JinjaException("namespace expected an object or an iterable of [key, value] pairs");
                        if (items[0] is not StringValue key) throw new JinjaException("namespace keys must be strings");
                        entries[key.Value] = items[1];
                    }
                    break;
                default: throw new JinjaException($"'{positional[0].TypeName}' object is not iterable");
            }
        }
        if (kwargs is not null) foreach (var (key, value) in kwargs.Map) entries[key] = value;
        return new NamespaceValue(entries);
    }

    /// <summary>range(stop) or range(start, stop[, step]) on JavaScript numbers; its length is charged before it is built.</summary>
    static ArrayValue Range(List<Value> args, Budget budget)
    {
        double start = args.Count > 0 ? Values.ToNumber(args[0]) : double.NaN;
        double stop = args.Count > 1 && args[1] is not UndefinedValue ? Values.ToNumber(args[1]) : double.NaN;
        double step = args.Count > 2 && args[2] is not UndefinedValue ? Values.ToNumber(args[2]) : 1;
        if (args.Count < 2 || args[1] is UndefinedValue) (start, stop) = (0, start);
        if (step == 0) throw new JinjaException("range() step must not be zero");
        double count = step > 0 ? Math.Ceiling((stop - start) / step) : Math.Ceiling((start - stop) / -step);
        if (double.IsNaN(count) || count <= 0) return new ArrayValue([]);
        budget.CheckItems(count > int.MaxValue ? long.MaxValue : (long)count);
        var items = new List<Value>((int)count);
        for (double i = start; step > 0 ? i < stop : i > stop; i += step) items.Add(NumberValue.FromHost(i));
        return new ArrayValue(items);
    }

    /// <summary>The reference's strftime: %Y %m %d %b %B %H %M %% (English month names); other directives stay as written.</summary>
    static string Strftime(DateTimeOffset now, string format)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length || "YmdbBHM%".IndexOf(format[i + 1]) < 0) { sb.Append(format[i]); continue; }
            var culture = CultureInfo.GetCultureInfo("en-US");
            sb.Append(format[++i] switch
            {
                'Y' => now.Year.ToString(CultureInfo.InvariantCulture),
                'm' => now.Month.ToString("00", CultureInfo.InvariantCulture),
                'd' => now.Day.ToString("00", CultureInfo.InvariantCulture),
                'b' => now.ToString("MMM", culture),
                'B' => now.ToString("MMMM", culture),
                'H' => now.Hour.ToString("00", CultureInfo.InvariantCulture),
                'M' => now.Minute.ToString("00", CultureInfo.InvariantCulture),
                _ => "%",
            });
        }
        return sb.ToString();
    }

    /// <summary>The tests of `is` (and of selectattr/rejectattr, which pass a second value).</summary>
    public static bool Test(string name, List<Value> args, Budget budget)
    {
        var operand = args[0];
        Value Second() => args.Count > 1 ? args[1] : throw new JinjaException($"the {name} test needs a value to compare with");
        return name switch
        {
            "boolean" => operand is BoolValue,
            "callable" => operand is FunctionValue,
            "odd" => operand is NumberValue { IsInteger: true } n ? n.Value % 2 != 0 : throw new JinjaException($"cannot odd on {operand.TypeName}"),
            "even" => operand is NumberValue { IsInteger: true } m ? m.Value % 2 == 0 : throw new JinjaException($"cannot even on {operand.TypeName}"),
            "false" => operand is BoolValue { Value: false },
            "true" => operand is BoolValue { Value: true },
            "none" => operand is NullValue,
            "string" => operand is StringValue,
            "number" => operand is NumberValue,
            "integer" => operand is NumberValue { IsInteger: true },
            // The reference checks the exact type names here: a tuple is not "iterable".
            "iterable" => operand is ArrayValue { IsTuple: false } or StringValue,
            "mapping" => operand is ObjectValue,
            "sequence" => operand is ArrayValue or ObjectValue or StringValue,
            "lower" => operand is StringValue s && s.Value == Js.Lower(s.Value),
            "upper" => operand is StringValue u && u.Value == Js.Upper(u.Value),
            "defined" => operand is not UndefinedValue,
            "undefined" => operand is UndefinedValue,
            "equalto" or "eq" => Values.StrictEquals(operand, Second()) || SameMissing(operand, Second()),
            // Python's tests that select and reject take (the reference has none of them).
            "ne" => !(Values.StrictEquals(operand, Second()) || SameMissing(operand, Second())),
            "in" => Second() switch
            {
                ArrayValue list => list.Items.Any(item => Values.StrictEquals(item, operand)),
                StringValue text when operand is StringValue part => text.Value.Contains(part.Value, StringComparison.Ordinal),
                ObjectValue map when operand is StringValue key => map.Map.ContainsKey(key.Value),
                var other => throw new JinjaException($"the in test cannot look in {other.TypeName}"),
            },
            "divisibleby" => operand is NumberValue a && Second() is NumberValue b ? b.Value != 0 && a.Value % b.Value == 0
                : throw new JinjaException("divisibleby needs two numbers"),
            "gt" or "ge" or "lt" or "le" => operand is NumberValue x && Second() is NumberValue y
                ? name switch { "gt" => x.Value > y.Value, "ge" => x.Value >= y.Value, "lt" => x.Value < y.Value, _ => x.Value <= y.Value }
                : throw new JinjaException($"the {name} test needs two numbers"),
            _ => throw new JinjaException($"Unknown test: {name}"),
        };
    }

    /// <summary>The reference compares raw payloads with ===, where null and undefined payloads differ from each other only.</summary>
    static bool SameMissing(Value a, Value b) => a is NullValue && b is NullValue || a is UndefinedValue && b is UndefinedValue;

    /// <summary>obj.name for what is not a stored attribute: the methods of strings, lists and dicts.</summary>
    public static Value Member(Budget budget, Value target, string name) => target switch
    {
        StringValue s => StringMember(s.Value, name, budget),
        ArrayValue a => name == "length" ? NumberValue.Integer(a.Items.Count) : UndefinedValue.Instance,
        ObjectValue o => ObjectMember(o, name),
        _ => UndefinedValue.Instance,
    };

    static FunctionValue Method(string name, Func<List<Value>, Value> call) => new(name, (args, _) => call(args));

    static Value StringMember(string s, string name, Budget budget) => name switch
    {
        "upper" => Method(name, _ => new StringValue(Js.Upper(s))),
        "lower" => Method(name, _ => new StringValue(Js.Lower(s))),
        "strip" => Method(name, args => new StringValue(Strip(s, args, start: true, end: true))),
        "lstrip" => Method(name, args => new StringValue(Strip(s, args, start: true, end: false))),
        "rstrip" => Method(name, args => new StringValue(Strip(s, args, start: false, end: true))),
        "title" => Method(name, _ => new StringValue(Js.Title(s))),
        "capitalize" => Method(name, _ => new StringValue(Capitalize(s))),
        "length" => NumberValue.Integer(s.Length),
        "startswith" => Method(name, args => BoolValue.Of(Affix(name, s, args, (x, p) => x.StartsWith(p, StringComparison.Ordinal)))),
        "endswith" => Method(name, args => BoolValue.Of(Affix(name, s, args, (x, p) => x.EndsWith(p, StringComparison.Ordinal)))),
        "split" => Method(name, args => Split(s, args)),
        "replace" => Method(name, args => Replace(s, args, budget)),
        _ => UndefinedValue.Instance,
    };

    /// <summary>Python's strip([chars]). The reference ignores chars and always strips whitespace, which turns
    /// templates' content.lstrip('\n') into a strip of leading spaces too; with chars given, this follows Python.</summary>
    static string Strip(string s, List<Value> args, bool start, bool end)
    {
        if (args.Count == 0 || args[0] is NullValue or UndefinedValue)
            return start && end ? Js.Trim(s) : start ? Js.TrimStart(s) : Js.TrimEnd(s);
        if (args[0] is not StringValue chars) throw new JinjaException("strip arg must be None or str");
        return start && end ? s.Trim(chars.Value.ToCharArray()) : start ? s.TrimStart(chars.Value.ToCharArray()) : s.TrimEnd(chars.Value.ToCharArray());
    }

    static string Capitalize(string s) => s.Length == 0 ? s : Js.Upper(s[..1]) + s[1..];

    static bool Affix(string name, string s, List<Value> args, Func<string, string, bool> test) => args.Count == 0
        ? throw new JinjaException($"{name}() requires at least one argument")
        : args[0] switch
        {
            StringValue p => test(s, p.Value),
            ArrayValue a => a.Items.Any(item => item is StringValue p ? test(s, p.Value) : throw new JinjaException($"{name}() tuple elements must be strings")),
            _ => throw new JinjaException($"{name}() argument must be a string or tuple of strings"),
        };

    /// <summary>Python's str.split(sep=None, maxsplit=-1) as the reference implements it.</summary>
    static ArrayValue Split(string s, List<Value> args)
    {
        var sep = args.Count > 0 ? args[0] : NullValue.Instance;
        if (sep is not (StringValue or NullValue)) throw new JinjaException("sep argument must be a string or null");
        var maxValue = args.Count > 1 ? args[1] : NumberValue.Integer(-1);
        if (maxValue is not NumberValue { IsInteger: true } max) throw new JinjaException("maxsplit argument must be a number");
        var result = new List<string>();
        if (sep is NullValue)
        {
            string text = Js.TrimStart(s);
            for (int i = 0; i < text.Length;)
            {
                if (Js.IsWhiteSpace(text[i])) { i++; continue; }
                if (max.Value != -1 && result.Count >= max.Value) { result.Add(text[i..]); break; }
                int end = i;
                while (end < text.Length && !Js.IsWhiteSpace(text[end])) end++;
                result.Add(text[i..end]);
                i = end;
            }
        }
        else
        {
            string separator = ((StringValue)sep).Value;
            if (separator.Length == 0) throw new JinjaException("empty separator");
            result.AddRange(s.Split(separator));
            if (max.Value != -1 && result.Count > max.Value)
            {
                int from = max.Value < 0 ? Math.Max(result.Count + (int)Math.Max(max.Value, int.MinValue / 2), 0) : (int)Math.Min(max.Value, result.Count);
                string rest = string.Join(separator, result.Skip(from));
                result.RemoveRange(from, result.Count - from);
                result.Add(rest);
            }
        }
        return new ArrayValue(result.Select(x => (Value)new StringValue(x)).ToList());
    }

    /// <summary>str.replace(old, new[, count]); an empty old string inserts between code points.</summary>
    static StringValue Replace(string s, List<Value> args, Budget budget)
    {
        if (args.Count < 2) throw new JinjaException("replace() requires at least two arguments");
        if (args[0] is not StringValue oldValue || args[1] is not StringValue newValue) throw new JinjaException("replace() arguments must be strings");
        Value count = args.Count > 2
            ? args[2] is ObjectValue { IsKeywordArguments: true } kw ? kw.Map.GetValueOrDefault("count") ?? NullValue.Instance : args[2]
            : NullValue.Instance;
        if (count is not (NumberValue { IsInteger: true } or NullValue)) throw new JinjaException("replace() count argument must be a number or null");
        double remaining = count is NumberValue n ? (n.Value < 0 ? double.PositiveInfinity : n.Value) : double.PositiveInfinity;
        if (remaining == 0) return new StringValue(s);
        var sb = new StringBuilder();
        // Every replacement is checked, so replacing "" in a long string with a long one cannot run away.
        void Append(string text)
        {
            budget.CheckLength((long)sb.Length + text.Length);
            sb.Append(text);
        }
        if (oldValue.Value.Length == 0)
        {
            foreach (var point in Js.CodePoints(s))
            {
                if (remaining-- > 0) Append(newValue.Value);
                sb.Append(point);
            }
            if (remaining > 0) Append(newValue.Value);
            return new StringValue(sb.ToString());
        }
        int at = 0;
        while (remaining > 0)
        {
            int found = s.IndexOf(oldValue.Value, at, StringComparison.Ordinal);
            if (found < 0) break;
            sb.Append(s, at, found - at);
            Append(newValue.Value);
            at = found + oldValue.Value.Length;
            remaining--;
        }
        return new StringValue(sb.Append(s, at, s.Length - at).ToString());
    }

    static Value ObjectMember(ObjectValue o, string name) => name switch
    {
        "get" => Method(name, args => args.Count > 0 && args[0] is StringValue key
            ? o.Map.GetValueOrDefault(key.Value) ?? (args.Count > 1 ? args[1] : NullValue.Instance)
            : throw new JinjaException($"Object key must be a string: got {(args.Count > 0 ? args[0].TypeName : "nothing")}")),
        "items" => Method(name, _ => Items(o)),
        "keys" => Method(name, _ => new ArrayValue(o.Map.Keys.Select(k => (Value)new StringValue(k)).ToList())),
        "values" => Method(name, _ => new ArrayValue(o.Map.Values.ToList())),
        "dictsort" => Method(name, args => DictSort(o, args)),
        _ => UndefinedValue.Instance,
    };

    static ArrayValue Items(ObjectValue o) =>
        new(o.Map.Select(p => (Value)new ArrayValue([new StringValue(p.Key), p.Value])).ToList());

    static (List<Value> Positional, OrderedDictionary<string, Value> Keywords) SplitKeywords(List<Value> args)
    {
        var keywords = new OrderedDictionary<string, Value>();
        var positional = new List<Value>();
        foreach (var arg in args)
            if (arg is ObjectValue { IsKeywordArguments: true } kw) keywords = kw.Map;
            else positional.Add(arg);
        return (positional, keywords);
    }

    static Value Argument(List<Value> positional, int index, OrderedDictionary<string, Value> keywords, string name, Value fallback) =>
        index < positional.Count ? positional[index] : keywords.GetValueOrDefault(name) ?? fallback;

    static ArrayValue DictSort(ObjectValue o, List<Value> args)
    {
        var (positional, keywords) = SplitKeywords(args);
        if (Argument(positional, 0, keywords, "case_sensitive", BoolValue.False) is not BoolValue caseSensitive)
            throw new JinjaException("case_sensitive must be a boolean");
        if (Argument(positional, 1, keywords, "by", new StringValue("key")) is not StringValue { Value: "key" or "value" } by)
            throw new JinjaException("by must be either 'key' or 'value'");
        if (Argument(positional, 2, keywords, "reverse", BoolValue.False) is not BoolValue reverse)
            throw new JinjaException("reverse must be a boolean");
        int index = by.Value == "key" ? 0 : 1;
        var items = Items(o).Items;
        return new ArrayValue(StableSort(items, (a, b) =>
            Compare(((ArrayValue)a).Items[index], ((ArrayValue)b).Items[index], caseSensitive.Value) * (reverse.Value ? -1 : 1)));
    }

    static List<Value> StableSort(List<Value> items, Comparison<Value> compare) =>
        items.Select((v, i) => (V: v, I: i)).Order(Comparer<(Value V, int I)>.Create((x, y) => compare(x.V, y.V) is var c && c != 0 ? c : x.I.CompareTo(y.I)))
            .Select(p => p.V).ToList();

    /// <summary>The reference's compareRuntimeValues: numbers and booleans together, strings (case-folded unless
    /// case-sensitive) by code unit, null with null, undefined with undefined; anything else is an error.</summary>
    static int Compare(Value a, Value b, bool caseSensitive)
    {
        if (a is NullValue && b is NullValue || a is UndefinedValue && b is UndefinedValue) return 0;
        if (a is NullValue or UndefinedValue || b is NullValue or UndefinedValue) throw new JinjaException($"Cannot compare {a.TypeName} with {b.TypeName}");
        if (a is NumberValue or BoolValue && b is NumberValue or BoolValue) return Values.ToNumber(a).CompareTo(Values.ToNumber(b)) is var c ? Math.Sign(c) : 0;
        if (a is StringValue x && b is StringValue y)
            return Math.Sign(string.CompareOrdinal(caseSensitive ? x.Value : Js.Lower(x.Value), caseSensitive ? y.Value : Js.Lower(y.Value)));
        throw new JinjaException(a.TypeName != b.TypeName ? $"Cannot compare different types: {a.TypeName} and {b.TypeName}" : $"Cannot compare type: {a.TypeName}");
    }

    /// <summary>getAttributeValue: a dotted path through mappings and list indices.</summary>
    static Value Attribute(Value item, string path)
    {
        foreach (var part in path.Split('.'))
        {
            item = item switch
            {
                ObjectValue o => o.Map.GetValueOrDefault(part) ?? UndefinedValue.Instance,
                NamespaceValue n => n.Map.GetValueOrDefault(part) ?? UndefinedValue.Instance,
                ArrayValue a when Js.ParseInt(part) is var i && !double.IsNaN(i) && i >= 0 && i < a.Items.Count => a.Items[(int)i],
                _ => UndefinedValue.Instance,
            };
            if (item is UndefinedValue) return item;
        }
        return item;
    }

    /// <summary>operand | filter, where filter is a name or a call; dispatched as the reference's applyFilter.</summary>
    public static Value ApplyFilter(Interpreter interpreter, Value operand, Node filter, Scope scope)
    {
        var budget = interpreter.Budget;
        budget.Step();
        if (filter is IdentifierNode { Name: var name })
        {
            if (name == "safe") return operand;
            if (name == "tojson") return new StringValue(Values.ToJson(operand, new Values.JsonFormat(), budget));
            return operand switch
            {
                ArrayValue a => name switch
                {
                    "list" => a,
                    "first" => a.Items.Count > 0 ? a.Items[0] : UndefinedValue.Instance,
                    "last" => a.Items.Count > 0 ? a.Items[^1] : UndefinedValue.Instance,
                    "length" => NumberValue.Integer(a.Items.Count),
                    "reverse" => new ArrayValue(Enumerable.Reverse(a.Items).ToList()),
                    "sort" => new ArrayValue(StableSort(a.Items, (x, y) => Compare(x, y, false))),
                    "join" => new StringValue(Values.Join(a.Items, "", x => JoinPart(x, budget), budget)),
                    "string" => new StringValue(Values.ToJson(a, new Values.JsonFormat(), budget, undefinedAsNull: false)),
                    "unique" => Unique(a),
                    "select" or "reject" => new ArrayValue(a.Items.Where(item => Values.Truthy(item) == (name == "select")).ToList()),
                    _ => throw new JinjaException($"Unknown ArrayValue filter: {name}"),
                },
                StringValue s => name switch
                {
                    "length" or "upper" or "lower" or "title" or "capitalize" => StringMember(s.Value, name, budget) switch
                    {
                        FunctionValue f => f.Call([], scope),
                        var v => v,
                    },
                    "trim" => new StringValue(Js.Trim(s.Value)),
                    "indent" => new StringValue(Indent(s.Value, 4, first: false, blank: false, budget)),
                    "join" or "string" => s,
                    "int" => NumberValue.Integer(Js.ParseInt(s.Value) is var i && double.IsNaN(i) ? 0 : i),
                    "float" => NumberValue.Float(Js.ParseFloat(s.Value) is var f && double.IsNaN(f) ? 0 : f),
                    _ => throw new JinjaException($"Unknown StringValue filter: {name}"),
                },
                NumberValue n => name switch
                {
                    "abs" => new NumberValue(Math.Abs(n.Value), n.IsInteger),
                    "int" => NumberValue.Integer(Math.Floor(n.Value)),
                    "float" => NumberValue.Float(n.Value),
                    "string" => new StringValue(Values.Display(n, budget)),
                    _ => throw new JinjaException($"Unknown NumericValue filter: {name}"),
                },
                ObjectValue o => name switch
                {
                    "items" => Items(o),
                    "length" => NumberValue.Integer(o.Map.Count),
                    _ => ObjectMember(o, name) switch
                    {
                        FunctionValue f => f.Call([], scope),
                        UndefinedValue => throw new JinjaException($"Unknown ObjectValue filter: {name}"),
                        var v => v,
                    },
                },
                BoolValue b => name switch
                {
                    "bool" => b,
                    "int" => NumberValue.Integer(b.Value ? 1 : 0),
                    "float" => NumberValue.Float(b.Value ? 1 : 0),
                    "string" => new StringValue(b.Value ? "true" : "false"),
                    _ => throw new JinjaException($"Unknown BooleanValue filter: {name}"),
                },
                _ => throw new JinjaException($"Cannot apply filter \"{name}\" to type: {operand.TypeName}"),
            };
        }
        if (filter is not CallNode { Callee: IdentifierNode { Name: var filterName } } call)
            throw new JinjaException("Unknown filter: expected a name or a call of one");
        var (args, kwargs) = interpreter.EvaluateArguments(call.Arguments, scope);
        switch (filterName)
        {
            case "tojson":
                return new StringValue(Values.ToJson(operand, JsonFormat(kwargs, budget), budget));
            case "join":
                var parts = operand switch
                {
                    StringValue s => Js.CodePoints(s.Value).Select(p => (Value)new StringValue(p)).ToList(),
                    ArrayValue a => a.Items,
                    _ => throw new JinjaException($"Cannot apply filter \"{filterName}\" to type: {operand.TypeName}"),
                };
                if (Argument(args, 0, kwargs, "separator", StringValue.Empty) is not StringValue separator)
                    throw new JinjaException("separator must be a string");
                return new StringValue(Values.Join(parts, separator.Value, x => JoinPart(x, budget), budget));
            case "int" or "float":
                var fallback = Argument(args, 0, kwargs, "default", filterName == "int" ? NumberValue.Integer(0) : NumberValue.Float(0));
                return operand switch
                {
                    StringValue s => (filterName == "int" ? Js.ParseInt(s.Value) : Js.ParseFloat(s.Value)) is var v && double.IsNaN(v)
                        ? fallback : new NumberValue(v, filterName == "int"),
                    NumberValue => operand,
                    BoolValue b => new NumberValue(b.Value ? 1 : 0, filterName == "int"),
                    _ => throw new JinjaException($"Cannot apply filter \"{filterName}\" to type: {operand.TypeName}"),
                };
            case "default":
                var defaultValue = args.Count > 0 ? args[0] : StringValue.Empty;
                if ((args.Count > 1 ? args[1] : kwargs.GetValueOrDefault("boolean") ?? BoolValue.False) is not BoolValue boolean)
                    throw new JinjaException("`default` filter flag must be a boolean");
                return operand is UndefinedValue || boolean.Value && !Values.Truthy(operand) ? defaultValue : operand;
        }
        switch (operand)
        {
            case ArrayValue a when filterName == "sort":
                if (Argument(args, 0, kwargs, "reverse", BoolValue.False) is not BoolValue reverse) throw new JinjaException("reverse must be a boolean");
                if (Argument(args, 1, kwargs, "case_sensitive", BoolValue.False) is not BoolValue caseSensitive)
                    throw new JinjaException("case_sensitive must be a boolean");
                var attribute = Argument(args, 2, kwargs, "attribute", NullValue.Instance);
                if (attribute is not (StringValue or NumberValue { IsInteger: true } or NullValue))
                    throw new JinjaException("attribute must be a string, integer, or null");
                Value Key(Value item) => attribute is NullValue ? item : Attribute(item, Values.Raw(attribute, budget));
                return new ArrayValue(StableSort(a.Items, (x, y) => Compare(Key(x), Key(y), caseSensitive.Value) * (reverse.Value ? -1 : 1)));
            case ArrayValue a when filterName is "selectattr" or "rejectattr":
                if (a.Items.Any(item => item is not (ObjectValue or NamespaceValue)))
                    throw new JinjaException($"`{filterName}` can only be applied to array of objects");
                if (call.Arguments.Any(x => x is not LiteralNode { Value: StringValue }))
                    throw new JinjaException($"arguments of `{filterName}` must be strings");
                if (args.Count == 0) throw new JinjaException($"`{filterName}` needs an attribute name");
                string attr = ((StringValue)args[0]).Value;
                bool select = filterName == "selectattr";
                return new ArrayValue(a.Items.Where(item =>
                {
                    budget.Step();
                    var map = item is ObjectValue o ? o.Map : ((NamespaceValue)item).Map;
                    bool result = map.TryGetValue(attr, out var value) && (args.Count > 1
                        ? Test(((StringValue)args[1]).Value, [value, .. args.Skip(2)], budget)
                        : Values.Truthy(value));
                    return result == select;
                }).ToList());
            case ArrayValue a when filterName is "select" or "reject":
                // Python's select/reject, which the reference lacks (Llama 3.1's builtin_tools, Qwen3-Coder's tools use them).
                if (args.Count > 0 && args[0] is not StringValue) throw new JinjaException($"the test of `{filterName}` must be a name");
                bool keep = filterName == "select";
                return new ArrayValue(a.Items.Where(item =>
                {
                    budget.Step();
                    bool result = args.Count > 0 ? Test(((StringValue)args[0]).Value, [item, .. args.Skip(1)], budget) : Values.Truthy(item);
                    return result == keep;
                }).ToList());
            case ArrayValue a when filterName == "map":
                if (!kwargs.TryGetValue("attribute", out var mapped)) throw new JinjaException("`map` expressions without `attribute` set are not currently supported.");
                if (mapped is not StringValue path) throw new JinjaException("attribute must be a string");
                budget.CheckItems(a.Items.Count);
                return new ArrayValue(a.Items.Select(item => item is ObjectValue or NamespaceValue
                    ? Attribute(item, path.Value) is UndefinedValue ? kwargs.GetValueOrDefault("default") ?? UndefinedValue.Instance : Attribute(item, path.Value)
                    : throw new JinjaException("items in map must be an object")).ToList());
            case ArrayValue:
                throw new JinjaException($"Unknown ArrayValue filter: {filterName}");
            case StringValue s when filterName == "indent":
                if (Argument(args, 0, kwargs, "width", NumberValue.Integer(4)) is not NumberValue { IsInteger: true } width)
                    throw new JinjaException("width must be a number");
                bool first = Values.Truthy(Argument(args, 1, kwargs, "first", BoolValue.False));
                bool blank = Values.Truthy(Argument(args, 2, kwargs, "blank", BoolValue.False));
                return new StringValue(Indent(s.Value, width.Value, first, blank, budget));
            case StringValue s when filterName == "replace":
                return Replace(s.Value, [.. args, new ObjectValue(kwargs, isKeywordArguments: true)], budget);
            case StringValue:
                throw new JinjaException($"Unknown StringValue filter: {filterName}");
            case ObjectValue o when ObjectMember(o, filterName) is FunctionValue method:
                if (kwargs.Count > 0) args.Add(new ObjectValue(kwargs, isKeywordArguments: true));
                return method.Call(args, scope);
            case ObjectValue:
                throw new JinjaException($"Unknown ObjectValue filter: {filterName}");
            default:
                throw new JinjaException($"Cannot apply filter \"{filterName}\" to type: {operand.TypeName}");
        }
    }

    /// <summary>Array.prototype.join's view of an item: null and undefined are empty, others their raw String().</summary>
    static string JoinPart(Value v, Budget budget) => v is NullValue or UndefinedValue ? "" : Values.Raw(v, budget);

    /// <summary>The first of each distinct payload, as a JavaScript Set sees them (SameValueZero; containers by identity).</summary>
    static ArrayValue Unique(ArrayValue a)
    {
        var seen = new HashSet<object>();
        return new ArrayValue(a.Items.Where(item => seen.Add(item switch
        {
            NumberValue n => n.Value == 0 ? 0.0 : n.Value,
            StringValue s => ("string", s.Value),
            BoolValue b => b.Value,
            _ => item,
        })).ToList());
    }

    static string Indent(string s, double width, bool first, bool blank, Budget budget)
    {
        if (width < 0) throw new JinjaException("Invalid count value: indent width must not be negative");
        var lines = s.Split('\n');
        budget.CheckLength(s.Length + (long)Math.Min(width, int.MaxValue) * lines.Length);
        string indent = new(' ', (int)width);
        return string.Join("\n", lines.Select((line, i) => !first && i == 0 || !blank && line.Length == 0 ? line : indent + line));
    }

    static Values.JsonFormat JsonFormat(OrderedDictionary<string, Value> kwargs, Budget budget)
    {
        var indent = kwargs.GetValueOrDefault("indent") ?? NullValue.Instance;
        if (indent is not (NumberValue { IsInteger: true } or NullValue)) throw new JinjaException("If set, indent must be a number");
        if ((kwargs.GetValueOrDefault("ensure_ascii") ?? BoolValue.False) is not BoolValue ensureAscii)
            throw new JinjaException("If set, ensure_ascii must be a boolean");
        if ((kwargs.GetValueOrDefault("sort_keys") ?? BoolValue.False) is not BoolValue sortKeys)
            throw new JinjaException("If set, sort_keys must be a boolean");
        (string, string)? separators = (kwargs.GetValueOrDefault("separators") ?? NullValue.Instance) switch
        {
            NullValue => null,
            ArrayValue { Items: [StringValue item, StringValue key] } => (item.Value, key.Value),
            _ => throw new JinjaException("separators must be a tuple of two strings"),
        };
        double width = indent is NumberValue n ? n.Value : 0;
        if (width < 0) throw new JinjaException("Invalid count value: indent must not be negative");
        budget.CheckLength((long)Math.Min(width, int.MaxValue));
        return new Values.JsonFormat((int)width, ensureAscii.Value, separators, sortKeys.Value);
    }
}
