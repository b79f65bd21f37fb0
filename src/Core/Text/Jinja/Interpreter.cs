using System.Runtime.CompilerServices;
using System.Text;

namespace AdapterService.Core.Text.Jinja;

/// <summary>Variables of one block: for loops and macro calls open a scope; if and set do not.</summary>
sealed class Scope(Scope? parent)
{
    readonly Scope? parent = parent;
    readonly Dictionary<string, Value> variables = [];

    public Value Lookup(string name)
    {
        for (var scope = this; scope is not null; scope = scope.parent)
            if (scope.variables.TryGetValue(name, out var value)) return value;
        return UndefinedValue.Instance;
    }

    public void Set(string name, Value value) => variables[name] = value;
}

/// <summary>
/// Evaluates the tree as the reference's runtime.ts does, writing the output as it goes. Where the reference plainly
/// departs from Python's Jinja in ways real templates meet, this follows Python: what an iteration printed before
/// {% break %} or {% continue %} stays (the reference drops it); a for loop's else block runs only when there was
/// nothing to iterate (the reference also runs it when every iteration ended in break or continue); for loops iterate
/// strings; + refuses to join a string with anything but a string; strip/lstrip/rstrip honour their chars argument;
/// select and reject filters exist (see Builtins). Host variables may replace globals.
/// </summary>
sealed class Interpreter
{
    enum Flow { Normal, Break, Continue }

    readonly Budget budget;
    readonly StringBuilder root = new();
    /// <summary>Where output goes now: the final text, or the buffer of a macro, set or filter block.</summary>
    StringBuilder output;
    /// <summary>The characters in the buffers that captures have set aside, which count against the output limit.</summary>
    long setAside;
    readonly List<JinjaSpan> spans = [];
    int? generationStart;

    public Interpreter(Budget budget) => (this.budget, output) = (budget, root);

    public Budget Budget => budget;

    public JinjaOutput Run(List<Node> body, IReadOnlyDictionary<string, object?> variables)
    {
        var global = new Scope(null);
        Builtins.DeclareGlobals(global, budget);
        foreach (var (name, value) in variables) global.Set(name, Values.FromHost(value));
        if (Execute(body, global) != Flow.Normal) throw new JinjaException("break or continue outside of a for loop");
        if (generationStart is { } start) spans.Add(new JinjaSpan(start, root.Length - start));
        return new JinjaOutput(root.ToString(), spans);
    }

    Flow Execute(List<Node> body, Scope scope)
    {
        foreach (var node in body)
        {
            var flow = Execute(node, scope);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    Flow Execute(Node node, Scope scope)
    {
        switch (node)
        {
            case IfNode n:
                return Execute(Values.Truthy(Evaluate(n.Test, scope)) ? n.Body : n.Else, scope);
            case ForNode n: ExecuteFor(n, scope); return Flow.Normal;
            case BreakNode: return Flow.Break;
            case ContinueNode: return Flow.Continue;
            case CommentNode: return Flow.Normal;
            case SetNode n: return ExecuteSet(n, scope);
            case MacroNode n: DefineMacro(n, scope); return Flow.Normal;
            case CallBlockNode n: Write(CallBlock(n, scope)); return Flow.Normal;
            case FilterBlockNode n:
                var (text, flow) = Capture(n.Body, scope);
                if (flow != Flow.Normal) return flow;
                Write(Builtins.ApplyFilter(this, new StringValue(text), n.Filter, scope));
                return Flow.Normal;
            case GenerationNode n:
                // Spans are positions in the final text, so only tags rendered straight into it count.
                if (output != root) return Flow.Normal;
                if (n.Start) generationStart ??= root.Length;
                else if (generationStart is { } start)
                {
                    spans.Add(new JinjaSpan(start, root.Length - start));
                    generationStart = null;
                }
                return Flow.Normal;
            default:
                Write(Evaluate(node, scope));
                return Flow.Normal;
        }
    }

    void Write(Value value)
    {
        if (value is NullValue or UndefinedValue) return;
        string text = Values.Display(value, budget);
        budget.CheckLength(setAside + output.Length + text.Length);
        output.Append(text);
    }

    /// <summary>Renders a block into a string of its own (set blocks, filter blocks, macro bodies).</summary>
    (string Text, Flow Flow) Capture(List<Node> body, Scope scope)
    {
        var saved = output;
        setAside += saved.Length;
        output = new StringBuilder();
        try
        {
            var flow = Execute(body, scope);
            return (output.ToString(), flow);
        }
        finally
        {
            output = saved;
            setAside -= saved.Length;
        }
    }

    void ExecuteFor(ForNode node, Scope outer)
    {
        var scope = new Scope(outer);
        var (iterableNode, test) = node.Iterable is SelectNode s ? (s.Value, s.Test) : (node.Iterable, null);
        var iterable = Evaluate(iterableNode, scope);
        List<Value> all = iterable switch
        {
            ArrayValue a => a.Items,
            ObjectValue o => o.Map.Keys.Select(k => (Value)new StringValue(k)).ToList(),
            // Python iterates a string's characters (Llama 3.2 Vision's template loops over string contents);
            // the reference refuses.
            StringValue text => Js.CodePoints(text.Value).Select(c => (Value)new StringValue(c)).ToList(),
            _ => throw new JinjaException($"Expected iterable or object type in for loop: got {iterable.TypeName}"),
        };
        var items = new List<Value>(all.Count);
        foreach (var item in all)
        {
            if (test is not null)
            {
                budget.Step();
                var itemScope = new Scope(scope);
                Bind(node.Target, item, itemScope);
                if (!Values.Truthy(Evaluate(test, itemScope))) continue;
            }
            else if (node.Target is ArrayNode) CheckUnpack(node.Target, item);
            items.Add(item);
        }

        for (int i = 0; i < items.Count; i++)
        {
            budget.Step();
            var loop = new OrderedDictionary<string, Value>
            {
                ["index"] = NumberValue.Integer(i + 1),
                ["index0"] = NumberValue.Integer(i),
                ["revindex"] = NumberValue.Integer(items.Count - i),
                ["revindex0"] = NumberValue.Integer(items.Count - i - 1),
                ["first"] = BoolValue.Of(i == 0),
                ["last"] = BoolValue.Of(i == items.Count - 1),
                ["length"] = NumberValue.Integer(items.Count),
                ["previtem"] = i > 0 ? items[i - 1] : UndefinedValue.Instance,
                ["nextitem"] = i < items.Count - 1 ? items[i + 1] : UndefinedValue.Instance,
            };
            scope.Set("loop", new ObjectValue(loop));
            Bind(node.Target, items[i], scope);
            if (Execute(node.Body, scope) == Flow.Break) break;
        }
        if (items.Count == 0 && Execute(node.Else, scope) != Flow.Normal)
            throw new JinjaException("break or continue outside of a for loop");
    }

    static void CheckUnpack(Node target, Value item)
    {
        var names = ((ArrayNode)target).Items;
        if (item is not ArrayValue { IsTuple: false } array) throw new JinjaException($"Cannot unpack non-iterable type: {item.TypeName}");
        if (names.Count != array.Items.Count) throw new JinjaException($"Too {(names.Count > array.Items.Count ? "few" : "many")} items to unpack");
    }

    static void Bind(Node target, Value item, Scope scope)
    {
        if (target is IdentifierNode id) { scope.Set(id.Name, item); return; }
        CheckUnpack(target, item);
        var names = ((ArrayNode)target).Items;
        var values = ((ArrayValue)item).Items;
        for (int j = 0; j < names.Count; j++)
        {
            if (names[j] is not IdentifierNode name) throw new JinjaException($"Cannot unpack non-identifier type: {names[j].GetType().Name}");
            scope.Set(name.Name, values[j]);
        }
    }

    Flow ExecuteSet(SetNode node, Scope scope)
    {
        Value value;
        if (node.Value is not null) value = Evaluate(node.Value, scope);
        else
        {
            var (text, flow) = Capture(node.Body, scope);
            if (flow != Flow.Normal) return flow;
            value = new StringValue(text);
        }
        switch (node.Target)
        {
            case IdentifierNode id:
                scope.Set(id.Name, value);
                break;
            case ArrayNode { IsTuple: true } tuple:
                if (value is not ArrayValue array) throw new JinjaException($"Cannot unpack non-iterable type in set: {value.TypeName}");
                if (array.Items.Count != tuple.Items.Count)
                    throw new JinjaException($"Too {(tuple.Items.Count > array.Items.Count ? "few" : "many")} items to unpack in set");
                for (int i = 0; i < tuple.Items.Count; i++)
                {
                    if (tuple.Items[i] is not IdentifierNode name) throw new JinjaException("Cannot unpack to non-identifier in set");
                    scope.Set(name.Name, array.Items[i]);
                }
                break;
            case MemberNode member:
                if (Evaluate(member.Object, scope) is not NamespaceValue ns) throw new JinjaException("cannot assign attribute on non-namespace object");
                if (member.Computed || member.Property is not IdentifierNode property)
                    throw new JinjaException("Cannot assign to member with non-identifier property");
                ns.Map[property.Name] = value;
                break;
            default:
                throw new JinjaException("Invalid left-hand side of an assignment");
        }
        return Flow.Normal;
    }

    void DefineMacro(MacroNode node, Scope scope)
    {
        var special = SpecialArguments.Accessed(node.Parameters, node.Body);
        string display = $"'{node.Name}'";
        scope.Set(node.Name, new FunctionValue(node.Name, (args, callerScope) =>
        {
            var macroScope = new Scope(callerScope);
            BindArguments(display, node.Parameters, special, args, macroScope);
            return new StringValue(RenderBody(node.Body, macroScope));
        }));
    }

    /// <summary>A macro or caller body, as a string; a break inside it has no loop to leave.</summary>
    string RenderBody(List<Node> body, Scope scope)
    {
        budget.Enter();
        try
        {
            var (text, flow) = Capture(body, scope);
            return flow == Flow.Normal ? text : throw new JinjaException("break or continue outside of a for loop");
        }
        finally { budget.Leave(); }
    }

    /// <summary>Binds every parameter before evaluating defaults, as the reference does; extra arguments are an
    /// error unless the body reads varargs or kwargs.</summary>
    void BindArguments(string display, List<Node> parameters, (bool Kwargs, bool Varargs) special, List<Value> args, Scope scope)
    {
        var positional = args.ToList();
        var keywords = new OrderedDictionary<string, Value>();
        if (positional.Count > 0 && positional[^1] is ObjectValue { IsKeywordArguments: true } kw)
        {
            positional.RemoveAt(positional.Count - 1);
            foreach (var (k, v) in kw.Map) keywords[k] = v;
        }
        var pending = new List<(string, Node)>();
        for (int i = 0; i < parameters.Count; i++)
        {
            var (name, fallback) = parameters[i] switch
            {
                IdentifierNode id => (id.Name, (Node?)null),
                KeywordArgumentNode k => (k.Key, k.Value),
                _ => throw new JinjaException("invalid macro parameter"),
            };
            Value? value = i < positional.Count ? positional[i] : null;
            if (value is null && keywords.Remove(name, out var byName)) value = byName;
            if (value is null && fallback is not null) pending.Add((name, fallback));
            scope.Set(name, value ?? UndefinedValue.Instance);
        }
        if (special.Kwargs) scope.Set("kwargs", new ObjectValue(keywords));
        else if (keywords.Count > 0) throw new JinjaException($"macro {display} takes no keyword argument '{keywords.GetAt(0).Key}'");
        if (special.Varargs) scope.Set("varargs", new ArrayValue(positional.Skip(parameters.Count).ToList()));
        else if (positional.Count > parameters.Count) throw new JinjaException($"macro {display} takes not more than {parameters.Count} argument(s)");
        foreach (var (name, fallback) in pending) scope.Set(name, Evaluate(fallback, scope));
    }

    Value CallBlock(CallBlockNode node, Scope scope)
    {
        var parameters = node.CallerParameters ?? [];
        var special = SpecialArguments.Accessed(parameters, node.Body);
        var caller = new FunctionValue("caller", (args, _) =>
        {
            var callerScope = new Scope(scope);
            BindArguments("None", parameters, special, args, callerScope);
            return new StringValue(RenderBody(node.Body, callerScope));
        });
        var (args, kwargs) = EvaluateArguments(node.Call.Arguments, scope);
        args.Add(new ObjectValue(kwargs, isKeywordArguments: true));
        var callee = Evaluate(node.Call.Callee, scope);
        if (callee is not FunctionValue function) throw new JinjaException($"Cannot call something that is not a function: got {callee.TypeName}");
        var callScope = new Scope(scope);
        callScope.Set("caller", caller);
        return Invoke(function, args, callScope);
    }

    public Value Invoke(FunctionValue function, List<Value> args, Scope scope)
    {
        budget.Step();
        return function.Call(args, scope);
    }

    public (List<Value> Positional, OrderedDictionary<string, Value> Keywords) EvaluateArguments(List<Node> arguments, Scope scope)
    {
        var positional = new List<Value>();
        var keywords = new OrderedDictionary<string, Value>();
        void AddKeyword(string key, Value value)
        {
            if (!keywords.TryAdd(key, value)) throw new JinjaException($"Got multiple values for keyword argument '{key}'");
        }
        foreach (var argument in arguments)
        {
            if (argument is SpreadNode spread)
            {
                if (Evaluate(spread.Argument, scope) is not ArrayValue array)
                    throw new JinjaException("Cannot unpack non-iterable type");
                positional.AddRange(array.Items);
            }
            else if (argument is not (KeywordArgumentNode or KeywordSpreadNode)) positional.Add(Evaluate(argument, scope));
        }
        foreach (var argument in arguments)
        {
            if (argument is KeywordArgumentNode keyword) AddKeyword(keyword.Key, Evaluate(keyword.Value, scope));
            else if (argument is KeywordSpreadNode spread)
            {
                if (Evaluate(spread.Argument, scope) is not ObjectValue map)
                    throw new JinjaException("Argument after ** must be a mapping");
                foreach (var (k, v) in map.Map) AddKeyword(k, v);
            }
        }
        return (positional, keywords);
    }

    public Value Evaluate(Node node, Scope scope)
    {
        if (!RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw new JinjaException("template recursion too deep");
        switch (node)
        {
            case LiteralNode n: return n.Value;
            case IdentifierNode n: return scope.Lookup(n.Name);
            case ArrayNode n:
                budget.CheckItems(n.Items.Count);
                return new ArrayValue(n.Items.Select(x => Evaluate(x, scope)).ToList(), n.IsTuple);
            case ObjectNode n:
                var map = new OrderedDictionary<string, Value>();
                foreach (var (keyNode, valueNode) in n.Entries)
                {
                    if (Evaluate(keyNode, scope) is not StringValue key) throw new JinjaException("Object keys must be strings");
                    map[key.Value] = Evaluate(valueNode, scope);
                }
                return new ObjectValue(map);
            case CallNode n:
            {
                var (args, kwargs) = EvaluateArguments(n.Arguments, scope);
                if (kwargs.Count > 0) args.Add(new ObjectValue(kwargs, isKeywordArguments: true));
                var callee = Evaluate(n.Callee, scope);
                if (callee is not FunctionValue function) throw new JinjaException($"Cannot call something that is not a function: got {callee.TypeName}");
                return Invoke(function, args, scope);
            }
            case MemberNode n: return EvaluateMember(n, scope);
            case UnaryNode n: return EvaluateUnary(n, scope);
            case BinaryNode n: return EvaluateBinary(n, scope);
            case FilterNode n: return Builtins.ApplyFilter(this, Evaluate(n.Operand, scope), n.Filter, scope);
            case TestNode n:
                bool result = Builtins.Test(n.Test, [Evaluate(n.Operand, scope)], budget);
                return BoolValue.Of(n.Negate ? !result : result);
            case SelectNode n:
                return Values.Truthy(Evaluate(n.Test, scope)) ? Evaluate(n.Value, scope) : UndefinedValue.Instance;
            case TernaryNode n:
                return Evaluate(Values.Truthy(Evaluate(n.Condition, scope)) ? n.IfTrue : n.IfFalse, scope);
            case IfNode or ForNode or SetNode or MacroNode or CallBlockNode or FilterBlockNode or BreakNode or ContinueNode or CommentNode or GenerationNode:
                throw new JinjaException("a statement cannot be used as a value");
            default:
                throw new JinjaException($"Unknown node type: {node.GetType().Name}");
        }
    }

    Value EvaluateMember(MemberNode node, Scope scope)
    {
        var target = Evaluate(node.Object, scope);
        Value property;
        if (node.Computed)
        {
            if (node.Property is SliceNode slice) return EvaluateSlice(target, slice, scope);
            property = Evaluate(node.Property, scope);
        }
        else property = node.Property is IdentifierNode id ? new StringValue(id.Name) : ((LiteralNode)node.Property).Value;

        switch (target)
        {
            case ObjectValue or NamespaceValue:
                if (property is not StringValue key) throw new JinjaException($"Cannot access property with non-string: got {property.TypeName}");
                var map = target is ObjectValue o ? o.Map : ((NamespaceValue)target).Map;
                return map.TryGetValue(key.Value, out var value) ? value
                    : target is ObjectValue obj ? Builtins.Member(budget, obj, key.Value) : UndefinedValue.Instance;
            case ArrayValue or StringValue:
                if (property is NumberValue { IsInteger: true } index)
                {
                    int count = target is ArrayValue a ? a.Items.Count : ((StringValue)target).Value.Length;
                    double i = Math.Truncate(index.Value);
                    if (i < 0) i += count;
                    if (i < 0 || i >= count) return UndefinedValue.Instance;
                    return target is ArrayValue array ? array.Items[(int)i] : new StringValue(((StringValue)target).Value[(int)i].ToString());
                }
                if (property is StringValue name) return Builtins.Member(budget, target, name.Value);
                throw new JinjaException($"Cannot access property with non-string/non-number: got {property.TypeName}");
            default:
                if (property is not StringValue) throw new JinjaException($"Cannot access property with non-string: got {property.TypeName}");
                return UndefinedValue.Instance;
        }
    }

    Value EvaluateSlice(Value target, SliceNode node, Scope scope)
    {
        if (target is not (ArrayValue or StringValue)) throw new JinjaException("Slice object must be an array or string");
        double? Part(Node? part, string name) => (part is null ? UndefinedValue.Instance : Evaluate(part, scope)) switch
        {
            UndefinedValue => null,
            NumberValue { IsInteger: true } n => n.Value,
            _ => throw new JinjaException($"Slice {name} must be numeric or undefined"),
        };
        double? start = Part(node.Start, "start"), stop = Part(node.Stop, "stop"), step = Part(node.Step, "step");
        if (target is ArrayValue array) return new ArrayValue(Slice(array.Items, start, stop, step ?? 1));
        var points = Js.CodePoints(((StringValue)target).Value).Select(p => (Value)new StringValue(p)).ToList();
        return new StringValue(string.Concat(Slice(points, start, stop, step ?? 1).Select(p => ((StringValue)p).Value)));
    }

    /// <summary>Python's slicing as utils.ts's slice() computes it.</summary>
    List<Value> Slice(List<Value> items, double? start, double? stop, double step)
    {
        int n = items.Count, direction = Math.Sign(step);
        double from, to;
        if (direction >= 0)
        {
            from = start ?? 0;
            to = stop ?? n;
            from = from < 0 ? Math.Max(n + from, 0) : Math.Min(from, n);
            to = to < 0 ? Math.Max(n + to, 0) : Math.Min(to, n);
        }
        else
        {
            from = start ?? n - 1;
            to = stop ?? -1;
            from = from < 0 ? Math.Max(n + from, -1) : Math.Min(from, n - 1);
            to = to < -1 ? Math.Max(n + to, -1) : Math.Min(to, n - 1);
        }
        var result = new List<Value>();
        if (direction == 0) return result;
        for (double i = from; direction * i < direction * to; i += step)
        {
            budget.Step();
            result.Add(items[(int)i]);
        }
        return result;
    }

    Value EvaluateUnary(UnaryNode node, Scope scope)
    {
        var argument = Evaluate(node.Argument, scope);
        if (node.Operator == "not") return BoolValue.Of(!Values.Truthy(argument));
        int sign = node.Operator == "-" ? -1 : 1;
        return argument switch
        {
            NumberValue n => new NumberValue(sign * n.Value, n.IsInteger),
            BoolValue b => NumberValue.Integer(sign * (b.Value ? 1 : 0)),
            _ => throw new JinjaException($"Unknown operator \"{node.Operator}\" for {argument.TypeName}"),
        };
    }

    Value EvaluateBinary(BinaryNode node, Scope scope)
    {
        var left = Evaluate(node.Left, scope);
        string op = node.Operator;
        if (op == "and") return Values.Truthy(left) ? Evaluate(node.Right, scope) : left;
        if (op == "or") return Values.Truthy(left) ? left : Evaluate(node.Right, scope);
        var right = Evaluate(node.Right, scope);
        if (op == "==") return BoolValue.Of(Values.LooseEquals(left, right, budget));
        if (op == "!=") return BoolValue.Of(!Values.LooseEquals(left, right, budget));

        if (left is UndefinedValue || right is UndefinedValue)
        {
            // `x in undefined` is false and `x not in undefined` true.
            if (right is UndefinedValue && op is "in" or "not in") return BoolValue.Of(op == "not in");
            throw new JinjaException($"Cannot perform operation {op} on undefined values");
        }
        if (left is NullValue || right is NullValue) throw new JinjaException("Cannot perform operation on null values");
        if (op == "~") return Concat(Values.Raw(left, budget), Values.Raw(right, budget));
        if (op == "**" && IsNumeric(left) && IsNumeric(right))
        {
            double a = Values.ToNumber(left), b = Values.ToNumber(right);
            if (a == 0 && b < 0) throw new JinjaException("0.0 cannot be raised to a negative power");
            double power = Math.Pow(a, b);
            if (!double.IsFinite(power)) throw new JinjaException("Exponentiation result is not a finite real number");
            return new NumberValue(power, !(left is NumberValue { IsInteger: false } || right is NumberValue { IsInteger: false } || b < 0));
        }
        if (left is NumberValue x && right is NumberValue y)
        {
            bool integer = x.IsInteger && y.IsInteger;
            double a = x.Value, b = y.Value;
            switch (op)
            {
                case "+": return new NumberValue(a + b, integer);
                case "-": return new NumberValue(a - b, integer);
                case "*": return new NumberValue(a * b, integer);
                case "/": return NumberValue.Float(a / b);
                case "//": return new NumberValue(Math.Floor(a / b), integer);
                case "%": return new NumberValue(a % b, integer);
                case "<": return BoolValue.Of(a < b);
                case ">": return BoolValue.Of(a > b);
                case ">=": return BoolValue.Of(a >= b);
                case "<=": return BoolValue.Of(a <= b);
            }
        }
        else if (left is ArrayValue la && right is ArrayValue ra)
        {
            if (op == "+")
            {
                budget.CheckItems((long)la.Items.Count + ra.Items.Count);
                return new ArrayValue([.. la.Items, .. ra.Items]);
            }
        }
        else if (right is ArrayValue list && op is "in" or "not in")
        {
            bool member = list.Items.Any(item => Values.StrictEquals(item, left));
            return BoolValue.Of(member == (op == "in"));
        }

        if (op == "+" && (left is StringValue || right is StringValue))
        {
            // The reference joins a string with anything (a dict as "[object Map]", a list as JSON); Python refuses,
            // and a prompt with a tool call's arguments rendered as "[object Map]" is worse than an error.
            if (left is StringValue a && right is StringValue b) return Concat(a.Value, b.Value);
            var other = left is StringValue ? right : left;
            throw new JinjaException($"can only concatenate str (not \"{PythonTypeName(other)}\") to str");
        }
        if (op is "in" or "not in")
        {
            if (left is StringValue needle && right is StringValue haystack)
                return BoolValue.Of(haystack.Value.Contains(needle.Value, StringComparison.Ordinal) == (op == "in"));
            if (left is StringValue key && right is ObjectValue map)
                return BoolValue.Of(map.Map.ContainsKey(key.Value) == (op == "in"));
        }
        throw new JinjaException($"Unknown operator \"{op}\" between {left.TypeName} and {right.TypeName}");
    }

    static string PythonTypeName(Value v) => v switch
    {
        ObjectValue => "dict",
        ArrayValue { IsTuple: true } => "tuple",
        ArrayValue => "list",
        NumberValue { IsInteger: true } => "int",
        NumberValue => "float",
        BoolValue => "bool",
        NamespaceValue => "Namespace",
        _ => "function",
    };

    static bool IsNumeric(Value v) => v is NumberValue or BoolValue;

    public StringValue Concat(string a, string b)
    {
        budget.CheckLength((long)a.Length + b.Length);
        return new StringValue(a + b);
    }
}

/// <summary>
/// Whether a macro's body reads kwargs or varargs before declaring them, in Jinja's visiting order (the reference's
/// findAccessedSpecialMacroArguments): only then may a call pass extra keyword or positional arguments.
/// </summary>
static class SpecialArguments
{
    public static (bool Kwargs, bool Varargs) Accessed(List<Node> parameters, List<Node> body)
    {
        var declared = new HashSet<string>();
        var accessed = new HashSet<string>();
        void Declare(string name) { if (name is "kwargs" or "varargs") declared.Add(name); }
        void DeclareTarget(Node target)
        {
            if (target is IdentifierNode id) Declare(id.Name);
            else if (target is ArrayNode { IsTuple: true } tuple) foreach (var item in tuple.Items) DeclareTarget(item);
        }
        string ParameterName(Node p) => p is KeywordArgumentNode k ? k.Key : p is IdentifierNode i ? i.Name : "";
        void Defaults(IEnumerable<Node> ps) { foreach (var p in ps) if (p is KeywordArgumentNode k) Visit(k.Value); }
        void VisitAll(IEnumerable<Node?> nodes) { foreach (var n in nodes) Visit(n); }
        void Visit(Node? node)
        {
            switch (node)
            {
                case null: return;
                case ForNode n:
                    DeclareTarget(n.Target);
                    if (n.Iterable is SelectNode select) { Visit(select.Value); VisitAll(n.Body); VisitAll(n.Else); Visit(select.Test); }
                    else { Visit(n.Iterable); VisitAll(n.Body); VisitAll(n.Else); }
                    return;
                case SetNode n: DeclareTarget(n.Target); Visit(n.Value); VisitAll(n.Body); return;
                case MacroNode n: foreach (var p in n.Parameters) Declare(ParameterName(p)); Defaults(n.Parameters); VisitAll(n.Body); return;
                case CallBlockNode n:
                    Visit(n.Call);
                    foreach (var p in n.CallerParameters ?? []) Declare(ParameterName(p));
                    Defaults(n.CallerParameters ?? []);
                    VisitAll(n.Body);
                    return;
                case FilterBlockNode n: VisitAll(n.Body); if (n.Filter is CallNode fc) VisitAll(fc.Arguments); return;
                case IdentifierNode n: if (n.Name is "kwargs" or "varargs" && !declared.Contains(n.Name)) accessed.Add(n.Name); return;
                case MemberNode n: Visit(n.Object); if (n.Computed) Visit(n.Property); return;
                case FilterNode n: Visit(n.Operand); if (n.Filter is CallNode c) VisitAll(c.Arguments); return;
                case TestNode n: Visit(n.Operand); return;
                case SelectNode n: Visit(n.Test); Visit(n.Value); return;
                case KeywordArgumentNode n: Visit(n.Value); return;
                case IfNode n: Visit(n.Test); VisitAll(n.Body); VisitAll(n.Else); return;
                case ArrayNode n: VisitAll(n.Items); return;
                case ObjectNode n: foreach (var (k, v) in n.Entries) { Visit(k); Visit(v); } return;
                case SliceNode n: Visit(n.Start); Visit(n.Stop); Visit(n.Step); return;
                case CallNode n: Visit(n.Callee); VisitAll(n.Arguments); return;
                case SpreadNode n: Visit(n.Argument); return;
                case KeywordSpreadNode n: Visit(n.Argument); return;
                case UnaryNode n: Visit(n.Argument); return;
                case BinaryNode n: Visit(n.Left); Visit(n.Right); return;
                case TernaryNode n: Visit(n.Condition); Visit(n.IfTrue); Visit(n.IfFalse); return;
                default: return;
            }
        }
        foreach (var p in parameters) Declare(ParameterName(p));
        VisitAll(body);
        return (accessed.Contains("kwargs"), accessed.Contains("varargs"));
    }
}
