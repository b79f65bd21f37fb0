namespace AdapterService.Core.Text.Jinja;

/// <summary>A node of the syntax tree (the reference's ast.ts). <see cref="Depth"/> bounds the interpreter's recursion.</summary>
abstract record Node
{
    public virtual int Depth => 1;
    protected static int Deepest(params IEnumerable<Node?>[] groups) =>
        1 + groups.SelectMany(g => g).Select(n => n?.Depth ?? 0).DefaultIfEmpty(0).Max();
}

// Statements. Expressions in the body are printed; text is a string literal.
sealed record IfNode(Node Test, List<Node> Body, List<Node> Else) : Node
{ public override int Depth { get; } = Deepest([Test], Body, Else); }

sealed record ForNode(Node Target, Node Iterable, List<Node> Body, List<Node> Else) : Node
{ public override int Depth { get; } = Deepest([Target, Iterable], Body, Else); }

sealed record BreakNode : Node;
sealed record ContinueNode : Node;
sealed record CommentNode : Node;

/// <summary>{% set target = value %}, or the block form with <see cref="Value"/> null.</summary>
sealed record SetNode(Node Target, Node? Value, List<Node> Body) : Node
{ public override int Depth { get; } = Deepest([Target, Value], Body); }

/// <summary>Parameters are identifiers or keyword arguments (a default value).</summary>
sealed record MacroNode(string Name, List<Node> Parameters, List<Node> Body) : Node
{ public override int Depth { get; } = Deepest(Parameters, Body); }

sealed record CallBlockNode(CallNode Call, List<Node>? CallerParameters, List<Node> Body) : Node
{ public override int Depth { get; } = Deepest([Call], CallerParameters ?? [], Body); }

/// <summary>The filter is an identifier or a call.</summary>
sealed record FilterBlockNode(Node Filter, List<Node> Body) : Node
{ public override int Depth { get; } = Deepest([Filter], Body); }

/// <summary>Where {% generation %} (<see cref="Start"/>) or {% endgeneration %} stood.</summary>
sealed record GenerationNode(bool Start) : Node;

// Expressions.
sealed record LiteralNode(Value Value) : Node;
sealed record IdentifierNode(string Name) : Node;

sealed record ArrayNode(List<Node> Items, bool IsTuple) : Node
{ public override int Depth { get; } = Deepest(Items); }

sealed record ObjectNode(List<(Node Key, Node Value)> Entries) : Node
{ public override int Depth { get; } = Deepest(Entries.Select(e => e.Key), Entries.Select(e => e.Value)); }

/// <summary>object.property or object[property]; a non-computed property is an identifier or an integer.</summary>
sealed record MemberNode(Node Object, Node Property, bool Computed) : Node
{ public override int Depth { get; } = Deepest([Object, Property]); }

sealed record SliceNode(Node? Start, Node? Stop, Node? Step) : Node
{ public override int Depth { get; } = Deepest([Start, Stop, Step]); }

sealed record CallNode(Node Callee, List<Node> Arguments) : Node
{ public override int Depth { get; } = Deepest([Callee], Arguments); }

sealed record KeywordArgumentNode(string Key, Node Value) : Node
{ public override int Depth { get; } = Deepest([Value]); }

/// <summary>*args in a call.</summary>
sealed record SpreadNode(Node Argument) : Node
{ public override int Depth { get; } = Deepest([Argument]); }

/// <summary>**kwargs in a call.</summary>
sealed record KeywordSpreadNode(Node Argument) : Node
{ public override int Depth { get; } = Deepest([Argument]); }

sealed record UnaryNode(string Operator, Node Argument) : Node
{ public override int Depth { get; } = Deepest([Argument]); }

sealed record BinaryNode(string Operator, Node Left, Node Right) : Node
{ public override int Depth { get; } = Deepest([Left, Right]); }

/// <summary>operand | filter, the filter an identifier or a call.</summary>
sealed record FilterNode(Node Operand, Node Filter) : Node
{ public override int Depth { get; } = Deepest([Operand, Filter]); }

sealed record TestNode(Node Operand, bool Negate, string Test) : Node
{ public override int Depth { get; } = Deepest([Operand]); }

/// <summary>value if test, without else: undefined when the test fails (and a for loop's filter).</summary>
sealed record SelectNode(Node Value, Node Test) : Node
{ public override int Depth { get; } = Deepest([Value, Test]); }

sealed record TernaryNode(Node Condition, Node IfTrue, Node IfFalse) : Node
{ public override int Depth { get; } = Deepest([Condition, IfTrue, IfFalse]); }
