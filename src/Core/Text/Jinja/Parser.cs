using System.Globalization;

namespace AdapterService.Core.Text.Jinja;

/// <summary>
/// The reference's recursive-descent parser (parser.ts), with its precedence (lowest first): ternary/select, or, and,
/// not, comparisons and membership, + - ~, * / // %, **, is-tests, filters, unary signs, calls and members. Like the
/// reference it accepts lists, dicts and arguments without commas. Nesting is bounded: recursion by a counter, trees
/// built by loops (a + b + c …) by each node's depth.
/// </summary>
sealed class Parser(List<Token> tokens, string source, int maxDepth)
{
    int current, nesting;

    public List<Node> ParseTemplate()
    {
        var body = new List<Node>();
        while (current < tokens.Count) body.Add(ParseAny());
        return body;
    }

    /// <summary>"message at line L, column C" for an offset in the original source.</summary>
    public static string Locate(string source, int offset, string message)
    {
        offset = Math.Clamp(offset, 0, source.Length);
        int line = 1, lineStart = 0;
        for (int i = 0; i < offset; i++)
            if (source[i] == '\n') { line++; lineStart = i + 1; }
        return $"{message} (line {line}, column {offset - lineStart + 1})";
    }

    Token? Peek(int ahead = 0) => current + ahead < tokens.Count ? tokens[current + ahead] : null;

    JinjaException Error(string message) =>
        new(Locate(source, Peek()?.Position ?? (tokens.Count > 0 ? tokens[^1].Position : 0), Peek() is null ? $"{message} (unexpected end of template)" : message));

    Token Next() => current < tokens.Count ? tokens[current++] : throw Error("Unexpected end of template");

    Token Expect(TokenType type, string error)
    {
        var token = Peek();
        if (token is null || token.Type != type) throw Error($"{error}; got {token?.Type.ToString() ?? "the end"}");
        current++;
        return token;
    }

    void ExpectIdentifier(string name)
    {
        if (!IsIdentifier(name)) throw Error($"Expected {name}");
        current++;
    }

    bool Is(TokenType type) => Peek()?.Type == type;
    bool IsIdentifier(string name) => Peek() is { Type: TokenType.Identifier } t && t.Value == name;
    bool IsIdentifiers(string a, string b) => IsIdentifier(a) && Peek(1) is { Type: TokenType.Identifier } t && t.Value == b;

    bool IsStatement(params string[] names) =>
        Peek() is { Type: TokenType.OpenStatement } && Peek(1) is { Type: TokenType.Identifier } t && names.Contains(t.Value);

    /// <summary>Runs a nested parse, refusing templates nested deeper than the limit.</summary>
    T Nested<T>(Func<T> parse) where T : Node
    {
        if (++nesting > maxDepth) throw Error($"template nested more than {maxDepth} levels deep");
        var node = parse();
        nesting--;
        return Bounded(node);
    }

    T Bounded<T>(T node) where T : Node =>
        node.Depth > maxDepth ? throw Error($"expression nested more than {maxDepth} levels deep") : node;

    List<Node> ParseUntil(params string[] names)
    {
        var body = new List<Node>();
        while (!IsStatement(names))
        {
            if (Peek() is null) throw Error($"Expected {{% {string.Join(" %} or {% ", names)} %}}");
            body.Add(ParseAny());
        }
        return body;
    }

    Node ParseAny()
    {
        var token = Peek()!;
        switch (token.Type)
        {
            case TokenType.Comment: current++; return new CommentNode();
            case TokenType.Text: current++; return new LiteralNode(new StringValue(token.Value));
            case TokenType.Generation: current++; return new GenerationNode(token.Value == "start");
            case TokenType.OpenStatement: return Nested(ParseStatement);
            case TokenType.OpenExpression:
                current++;
                var expression = ParseExpression();
                Expect(TokenType.CloseExpression, "Expected closing expression token");
                return expression;
            default: throw Error($"Unexpected token type: {token.Type}");
        }
    }

    Node ParseStatement()
    {
        Expect(TokenType.OpenStatement, "Expected opening statement token");
        if (Peek() is not { Type: TokenType.Identifier } name) throw Error($"Unknown statement, got {Peek()?.Type}");
        current++;
        switch (name.Value)
        {
            case "set": return ParseSet();
            case "if":
                var ifNode = ParseIf();
                EndTag("endif");
                return ifNode;
            case "macro":
                var macro = ParseMacro();
                EndTag("endmacro");
                return macro;
            case "for":
                var forNode = ParseFor();
                EndTag("endfor");
                return forNode;
            case "call":
            {
                var callerParameters = Is(TokenType.OpenParen) ? ParseArguments(parameters: true) : null;
                var callee = ParsePrimary();
                if (callee is not IdentifierNode) throw Error("Expected identifier following call statement");
                var arguments = ParseArguments(parameters: false);
                Expect(TokenType.CloseStatement, "Expected closing statement token");
                var body = ParseUntil("endcall");
                EndTag("endcall");
                return new CallBlockNode(new CallNode(callee, arguments), callerParameters, body);
            }
            case "break":
                Expect(TokenType.CloseStatement, "Expected closing statement token");
                return new BreakNode();
            case "continue":
                Expect(TokenType.CloseStatement, "Expected closing statement token");
                return new ContinueNode();
            case "filter":
            {
                var filter = ParsePrimary();
                if (filter is IdentifierNode && Is(TokenType.OpenParen)) filter = ParseCall(filter);
                Expect(TokenType.CloseStatement, "Expected closing statement token");
                var body = ParseUntil("endfilter");
                EndTag("endfilter");
                return new FilterBlockNode(filter, body);
            }
            default:
                current--;
                throw Error($"Unknown statement type: {name.Value}");
        }
    }

    void EndTag(string name)
    {
        Expect(TokenType.OpenStatement, "Expected {% token");
        ExpectIdentifier(name);
        Expect(TokenType.CloseStatement, "Expected %} token");
    }

    Node ParseSet()
    {
        var target = ParseExpressionSequence(primary: false);
        Node? value = null;
        List<Node> body = [];
        if (Is(TokenType.Equals))
        {
            current++;
            value = ParseExpressionSequence(primary: false);
        }
        else
        {
            Expect(TokenType.CloseStatement, "Expected %} token");
            body = ParseUntil("endset");
            Expect(TokenType.OpenStatement, "Expected {% token");
            ExpectIdentifier("endset");
        }
        Expect(TokenType.CloseStatement, "Expected closing statement token");
        return new SetNode(target, value, body);
    }

    IfNode ParseIf()
    {
        var test = ParseExpression();
        Expect(TokenType.CloseStatement, "Expected closing statement token");
        var body = ParseUntil("elif", "else", "endif");
        List<Node> alternate = [];
        if (IsStatement("elif"))
        {
            current += 2;
            alternate.Add(Nested(ParseIf));
        }
        else if (IsStatement("else"))
        {
            current += 2;
            Expect(TokenType.CloseStatement, "Expected closing statement token");
            alternate = ParseUntil("endif");
        }
        return new IfNode(test, body, alternate);
    }

    MacroNode ParseMacro()
    {
        if (ParsePrimary() is not IdentifierNode name) throw Error("Expected identifier following macro statement");
        var parameters = ParseArguments(parameters: true);
        Expect(TokenType.CloseStatement, "Expected closing statement token");
        return new MacroNode(name.Name, parameters, ParseUntil("endmacro"));
    }

    ForNode ParseFor()
    {
        var target = ParseExpressionSequence(primary: true);
        if (target is not (IdentifierNode or ArrayNode { IsTuple: true }))
            throw Error("Expected identifier/tuple for the loop variable");
        if (!IsIdentifier("in")) throw Error("Expected `in` keyword following loop variable");
        current++;
        var iterable = ParseExpression();
        Expect(TokenType.CloseStatement, "Expected closing statement token");
        var body = ParseUntil("endfor", "else");
        List<Node> alternate = [];
        if (IsStatement("else"))
        {
            current += 2;
            Expect(TokenType.CloseStatement, "Expected closing statement token");
            alternate = ParseUntil("endfor");
        }
        return new ForNode(target, iterable, body, alternate);
    }

    Node ParseExpressionSequence(bool primary)
    {
        Func<Node> parse = primary ? ParsePrimary : ParseExpression;
        var first = parse();
        if (!Is(TokenType.Comma)) return first;
        var items = new List<Node> { first };
        while (Is(TokenType.Comma))
        {
            current++;
            items.Add(parse());
        }
        return Bounded(new ArrayNode(items, IsTuple: true));
    }

    Node ParseExpression() => Nested(ParseIfExpression);

    Node ParseIfExpression()
    {
        var a = ParseOr();
        if (!IsIdentifier("if")) return a;
        current++;
        var test = ParseOr();
        if (!IsIdentifier("else")) return new SelectNode(a, test);
        current++;
        return new TernaryNode(test, a, Nested(ParseIfExpression));
    }

    Node ParseOr()
    {
        var left = ParseAnd();
        while (IsIdentifier("or"))
        {
            current++;
            left = Bounded(new BinaryNode("or", left, ParseAnd()));
        }
        return left;
    }

    Node ParseAnd()
    {
        var left = ParseNot();
        while (IsIdentifier("and"))
        {
            current++;
            left = Bounded(new BinaryNode("and", left, ParseNot()));
        }
        return left;
    }

    /// <summary>As the reference loops, `not a not b` is `not b` (the first operand is parsed, then dropped).</summary>
    Node ParseNot()
    {
        Node? negation = null;
        while (IsIdentifier("not"))
        {
            current++;
            negation = Nested(() => new UnaryNode("not", ParseNot()));
        }
        return negation ?? ParseComparison();
    }

    Node ParseComparison()
    {
        var left = ParseAdditive();
        while (true)
        {
            string op;
            if (IsIdentifiers("not", "in")) { op = "not in"; current += 2; }
            else if (IsIdentifier("in")) { op = "in"; current++; }
            else if (Is(TokenType.ComparisonBinaryOperator)) op = Next().Value;
            else return left;
            left = Bounded(new BinaryNode(op, left, ParseAdditive()));
        }
    }

    Node ParseAdditive()
    {
        var left = ParseMultiplicative();
        while (Is(TokenType.AdditiveBinaryOperator))
        {
            string op = Next().Value;
            left = Bounded(new BinaryNode(op, left, ParseMultiplicative()));
        }
        return left;
    }

    Node ParseMultiplicative()
    {
        var left = ParsePower();
        while (Is(TokenType.MultiplicativeBinaryOperator))
        {
            string op = Next().Value;
            left = Bounded(new BinaryNode(op, left, ParsePower()));
        }
        return left;
    }

    /// <summary>Like Jinja (unlike Python) ** is left-associative.</summary>
    Node ParsePower()
    {
        var left = ParseTest();
        while (Is(TokenType.ExponentiationBinaryOperator))
        {
            current++;
            left = Bounded(new BinaryNode("**", left, ParseTest()));
        }
        return left;
    }

    Node ParseTest()
    {
        var operand = ParseFilter();
        while (IsIdentifier("is"))
        {
            current++;
            bool negate = IsIdentifier("not");
            if (negate) current++;
            if (ParsePrimary() is not IdentifierNode test) throw Error("Expected identifier for the test");
            operand = Bounded(new TestNode(operand, negate, test.Name));
        }
        return operand;
    }

    Node ParseFilter()
    {
        var operand = ParseUnarySign();
        while (Is(TokenType.Pipe))
        {
            current++;
            var filter = ParsePrimary();
            if (filter is not IdentifierNode) throw Error("Expected identifier for the filter");
            if (Is(TokenType.OpenParen)) filter = ParseCall(filter);
            operand = Bounded(new FilterNode(operand, filter));
        }
        return operand;
    }

    Node ParseUnarySign()
    {
        if (Peek() is { Type: TokenType.UnaryOperator or TokenType.AdditiveBinaryOperator, Value: "-" or "+" } sign)
        {
            current++;
            return Nested(() => new UnaryNode(sign.Value, ParseUnarySign()));
        }
        return ParseCallMember();
    }

    Node ParseCallMember()
    {
        var member = ParseMember(ParsePrimary());
        return Is(TokenType.OpenParen) ? ParseCall(member) : member;
    }

    Node ParseCall(Node callee)
    {
        while (true)
        {
            callee = ParseMember(Bounded(new CallNode(callee, ParseArguments(parameters: false))));
            if (!Is(TokenType.OpenParen)) return callee;
        }
    }

    /// <summary>A call's arguments or a macro's parameters, with the reference's checks on their order.</summary>
    List<Node> ParseArguments(bool parameters)
    {
        Expect(TokenType.OpenParen, "Expected opening parenthesis for arguments list");
        var args = new List<Node>();
        var names = new HashSet<string>();
        bool sawKeyword = false, sawSpread = false;
        while (!Is(TokenType.CloseParen))
        {
            if (Peek() is null) throw Error("Expected closing parenthesis for arguments list");
            bool keywordSpread = Is(TokenType.ExponentiationBinaryOperator);
            bool spread = Is(TokenType.MultiplicativeBinaryOperator) && Peek()!.Value == "*";
            if (parameters && (keywordSpread || spread)) throw Error("Argument unpacking is not allowed in parameter declarations");
            if (keywordSpread)
            {
                current++;
                args.Add(new KeywordSpreadNode(ParseExpression()));
                if (Is(TokenType.Comma)) current++;
                if (!Is(TokenType.CloseParen)) throw Error("Expected closing parenthesis: `**` must be applied to the final argument");
                break;
            }
            Node argument;
            if (spread)
            {
                if (sawSpread) throw Error("Only one `*` argument unpacking is allowed");
                sawSpread = true;
                current++;
                argument = new SpreadNode(ParseExpression());
            }
            else
            {
                argument = ParseExpression();
                if (Is(TokenType.Equals))
                {
                    current++;
                    if (argument is not IdentifierNode key)
                        throw Error(parameters ? "Expected identifier for parameter declaration" : "Expected identifier for keyword argument");
                    argument = new KeywordArgumentNode(key.Name, ParseExpression());
                }
                if (parameters)
                {
                    string name = argument switch
                    {
                        IdentifierNode i => i.Name,
                        KeywordArgumentNode k => k.Key,
                        _ => throw Error("Expected identifier for parameter declaration"),
                    };
                    if (!names.Add(name)) throw Error($"Duplicate parameter name: {name}");
                }
                if (argument is KeywordArgumentNode) sawKeyword = true;
                else if (sawKeyword)
                    throw Error(parameters ? "Non-default argument follows default argument" : "Positional arguments must come before keyword arguments");
                else if (sawSpread) throw Error("Positional arguments must not follow `*` argument unpacking");
            }
            args.Add(argument);
            if (Is(TokenType.Comma)) current++;
        }
        Expect(TokenType.CloseParen, "Expected closing parenthesis for arguments list");
        return args;
    }

    /// <summary>What is inside [ ]: an index, or a slice of up to three colon-separated parts.</summary>
    Node ParseSubscript()
    {
        var parts = new List<Node?>();
        bool isSlice = false;
        while (!Is(TokenType.CloseSquareBracket))
        {
            if (Peek() is null) throw Error("Expected closing square bracket");
            if (Is(TokenType.Colon))
            {
                parts.Add(null);
                current++;
                isSlice = true;
            }
            else
            {
                parts.Add(ParseExpression());
                if (Is(TokenType.Colon)) { current++; isSlice = true; }
            }
        }
        if (parts.Count == 0) throw Error("Expected at least one argument for member/slice expression");
        if (!isSlice) return parts[0]!;
        if (parts.Count > 3) throw Error("Expected 0-3 arguments for slice expression");
        return new SliceNode(parts[0], parts.ElementAtOrDefault(1), parts.ElementAtOrDefault(2));
    }

    Node ParseMember(Node target)
    {
        while (Is(TokenType.Dot) || Is(TokenType.OpenSquareBracket))
        {
            bool computed = Next().Type == TokenType.OpenSquareBracket;
            Node property;
            if (computed)
            {
                property = ParseSubscript();
                Expect(TokenType.CloseSquareBracket, "Expected closing square bracket");
            }
            else
            {
                property = ParsePrimary();
                if (property is not (IdentifierNode or LiteralNode { Value: NumberValue { IsInteger: true } }))
                    throw Error("Expected identifier or integer following dot operator");
            }
            target = Bounded(new MemberNode(target, property, computed));
        }
        return target;
    }

    Node ParsePrimary()
    {
        var token = Next();
        switch (token.Type)
        {
            case TokenType.NumericLiteral:
                double number = double.Parse(token.Value, NumberStyles.AllowLeadingSign | NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture);
                return new LiteralNode(new NumberValue(number, !token.Value.Contains('.')));
            case TokenType.StringLiteral:
                string value = token.Value;
                while (Is(TokenType.StringLiteral)) value += Next().Value;
                return new LiteralNode(new StringValue(value));
            case TokenType.Identifier:
                return new IdentifierNode(token.Value);
            case TokenType.OpenParen:
                var inner = Nested(() => ParseExpressionSequence(primary: false));
                Expect(TokenType.CloseParen, "Expected closing parenthesis");
                return inner;
            case TokenType.OpenSquareBracket:
            {
                var items = new List<Node>();
                while (!Is(TokenType.CloseSquareBracket))
                {
                    if (Peek() is null) throw Error("Expected closing square bracket");
                    items.Add(ParseExpression());
                    if (Is(TokenType.Comma)) current++;
                }
                current++;
                return Bounded(new ArrayNode(items, IsTuple: false));
            }
            case TokenType.OpenCurlyBracket:
            {
                var entries = new List<(Node, Node)>();
                while (!Is(TokenType.CloseCurlyBracket))
                {
                    if (Peek() is null) throw Error("Expected closing curly bracket");
                    var key = ParseExpression();
                    Expect(TokenType.Colon, "Expected colon between key and value in object literal");
                    entries.Add((key, ParseExpression()));
                    if (Is(TokenType.Comma)) current++;
                }
                current++;
                return Bounded(new ObjectNode(entries));
            }
            default:
                current--;
                throw Error($"Unexpected token: {token.Type}");
        }
    }
}
