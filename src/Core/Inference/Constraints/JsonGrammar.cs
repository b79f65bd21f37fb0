using System.Text;
using System.Text.Json;

namespace AdapterService.Core.Inference.Constraints;

/// <summary>A response format the service cannot honour: the schema keyword (or field) and why, for a 400 naming it.</summary>
public sealed class ResponseFormatException(string message) : Exception(message);

/// <summary>
/// A JSON Schema compiled to the grammar <see cref="JsonAutomaton"/> walks byte by byte: each node is one kind of JSON
/// value (an object with its properties in schema order, an array, a string, a number, a set of literal texts, a choice).
/// The supported subset is OpenAI's strict-mode one (docs/API.md); every other keyword is refused by name, and
/// everything that expands (nodes, enum values, nesting) is bounded before anything is allocated for it.
/// </summary>
public sealed class JsonGrammar
{
    /// <summary>Nested objects and arrays a generated value may have (recursive schemas and json_object stop here).</summary>
    public const int MaxDepth = 16;
    /// <summary>Schema nodes in one grammar (every schema object, $defs included, is one).</summary>
    public const int MaxNodes = 2048;
    /// <summary>Values of one enum, and bytes of all literal (enum, const, property name) texts together.</summary>
    public const int MaxEnumValues = 1024, MaxLiteralBytes = 64 << 10;
    /// <summary>Digits a generated number may have before its point, after it, and in its exponent (so a number ends).</summary>
    public const int MaxIntegerDigits = 15, MaxFractionDigits = 15, MaxExponentDigits = 3;

    public Node Root { get; }
    /// <summary>A stable text of the schema: equal schemas share compiled masks.</summary>
    public string Key { get; }

    JsonGrammar(Node root, string key) { Root = root; Key = key; }

    public enum Kind { Object, Array, String, Number, Integer, Literals, AnyOf }

    /// <summary>One kind of value. <see cref="MinHeight"/>: the fewest nested containers a finished value of it needs.</summary>
    public sealed class Node
    {
        public Kind Kind;
        public readonly int Id;
        public Node(int id) => Id = id;
        // Object: properties in schema order; null for json_object's free object (any keys, any values).
        public Property[]? Properties;
        /// <summary>Index j + 1: the first required property after property j (see <see cref="NextRequired"/>).</summary>
        public int[] NextRequiredAfter = [];
        public Node? FreeValue;
        // Array
        public Node? Items;
        public int MinItems, MaxItems = int.MaxValue;
        // String
        public int MinLength, MaxLength = int.MaxValue;
        // Literals: a byte trie of the texts (enum, const, true/false/null)
        public LiteralTrie? Literals;
        // AnyOf
        public Node[] Alternatives = [];
        public int MinHeight = int.MaxValue;

        /// <summary>The first required property index after <paramref name="j"/> (-1: before any), or Properties.Length when none.</summary>
        public int NextRequired(int j) => NextRequiredAfter[j + 1];
    }

    public sealed record Property(string Name, byte[] Key, Node Value, bool Required);

    /// <summary>The exact texts a value may be: children by byte, terminal where a text ends.</summary>
    public sealed class LiteralTrie
    {
        readonly List<Dictionary<byte, int>> children = [[]];
        readonly List<bool> terminal = [false];

        public void Add(byte[] text)
        {
            int node = 0;
            foreach (byte b in text)
            {
                if (!children[node].TryGetValue(b, out int next))
                {
                    children[node][b] = next = children.Count;
                    children.Add([]);
                    terminal.Add(false);
                }
                node = next;
            }
            terminal[node] = true;
        }

        public int Child(int node, byte b) => children[node].TryGetValue(b, out int next) ? next : -1;
        public bool IsTerminal(int node) => terminal[node];
        public bool Empty => children[0].Count == 0;
    }

    /// <summary>OpenAI's JSON mode: any JSON object (nesting up to <see cref="MaxDepth"/>).</summary>
    public static JsonGrammar JsonObject() => JsonMode.Value;

    static readonly Lazy<JsonGrammar> JsonMode = new(() =>
    {
        var compiler = new Compiler();
        var root = compiler.FreeObject();
        compiler.Finish();
        return new(root, "json_object");
    });

    /// <summary>Compiles a JSON Schema; <see cref="ResponseFormatException"/> names the keyword (with its path) it cannot honour.</summary>
    public static JsonGrammar FromSchema(JsonElement schema)
    {
        string key = "schema:" + schema.GetRawText();
        lock (Compiled)
            if (Compiled.TryGetValue(key, out var known)) return known;
        var grammar = Compile(schema, key);
        lock (Compiled)
        {
            if (Compiled.Count >= 64) Compiled.Clear();
            return Compiled.TryAdd(key, grammar) ? grammar : Compiled[key];
        }
    }

    /// <summary>Recently compiled schemas by their text, so repeated requests share one grammar (and its masks).</summary>
    static readonly Dictionary<string, JsonGrammar> Compiled = [];

    static JsonGrammar Compile(JsonElement schema, string key)
    {
        var compiler = new Compiler { Root = schema };
        var root = compiler.Compile(schema, "schema");
        compiler.Finish();
        if (root.MinHeight > MaxDepth)
            throw new ResponseFormatException(root.MinHeight == int.MaxValue
                ? "schema: no finite JSON value satisfies it (a required property or item refers back to itself without end)"
                : $"schema: its values nest deeper than {MaxDepth} objects and arrays");
        return new JsonGrammar(root, key);
    }

    sealed class Compiler
    {
        public JsonElement Root;
        readonly List<Node> nodes = [];
        readonly Dictionary<string, Node> refs = [];
        int literalBytes;
        Node? anyValue, freeObject;

        Node New(Kind kind)
        {
            if (nodes.Count >= MaxNodes) throw new ResponseFormatException($"schema: more than {MaxNodes} schema objects");
            var node = new Node(nodes.Count) { Kind = kind };
            nodes.Add(node);
            return node;
        }

        static readonly HashSet<string> Annotations = ["title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly"];
        static readonly HashSet<string> Known = ["type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
            "minLength", "maxLength", "enum", "const", "anyOf", "$ref", "$defs", "definitions"];

        public Node Compile(JsonElement s, string path, int depth = 0)
        {
            if (depth > 64) throw new ResponseFormatException($"{path}: the schema nests deeper than 64 levels");
            if (s.ValueKind == JsonValueKind.True) return AnyValue();
            if (s.ValueKind != JsonValueKind.Object) throw new ResponseFormatException($"{path}: a schema must be a JSON object");
            foreach (var p in s.EnumerateObject())
                if (!Known.Contains(p.Name) && !Annotations.Contains(p.Name))
                    throw new ResponseFormatException($"{path}: the keyword '{p.Name}' is not supported (docs/API.md lists the supported JSON Schema subset)");
            foreach (var defs in new[] { "$defs", "definitions" })
                if (s.TryGetProperty(defs, out var d) && d.ValueKind != JsonValueKind.Object)
                    throw new ResponseFormatException($"{path}.{defs}: must be an object of schemas");

            if (s.TryGetProperty("$ref", out var r))
            {
                if (s.EnumerateObject().Any(p => Known.Contains(p.Name) && p.Name is not ("$ref" or "$defs" or "definitions")))
                    throw new ResponseFormatException($"{path}: '$ref' beside other keywords is not supported");
                return Ref(r, path, depth);
            }
            if (s.TryGetProperty("anyOf", out var anyOf))
            {
                if (anyOf.ValueKind != JsonValueKind.Array || anyOf.GetArrayLength() == 0)
                    throw new ResponseFormatException($"{path}.anyOf: must be a non-empty array of schemas");
                if (s.EnumerateObject().Any(p => Known.Contains(p.Name) && p.Name is not ("anyOf" or "$defs" or "definitions")))
                    throw new ResponseFormatException($"{path}: 'anyOf' beside other keywords is not supported (put them in each alternative)");
                var node = New(Kind.AnyOf);
                node.Alternatives = anyOf.EnumerateArray().Select((a, i) => Compile(a, $"{path}.anyOf[{i}]", depth + 1)).ToArray();
                return node;
            }

            var types = Types(s, path);
            if (s.TryGetProperty("enum", out var values) || s.TryGetProperty("const", out values))
                return Literals(s, values, types, path);
            var alternatives = types.Select(t => Typed(s, t, path, depth)).ToArray();
            if (alternatives.Length == 1) return alternatives[0];
            var choice = New(Kind.AnyOf);
            choice.Alternatives = alternatives;
            return choice;
        }

        static readonly string[] AllTypes = ["object", "array", "string", "number", "integer", "boolean", "null"];

        static List<string> Types(JsonElement s, string path)
        {
            if (!s.TryGetProperty("type", out var t))
            {
                if (s.TryGetProperty("properties", out _) || s.TryGetProperty("required", out _)) return ["object"];
                if (s.TryGetProperty("items", out _)) return ["array"];
                if (s.TryGetProperty("enum", out _) || s.TryGetProperty("const", out _)) return [.. AllTypes];
                return ["any"];
            }
            var list = t.ValueKind switch
            {
                JsonValueKind.String => [t.GetString()!],
                JsonValueKind.Array when t.GetArrayLength() > 0 && t.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String) =>
                    t.EnumerateArray().Select(e => e.GetString()!).Distinct().ToList(),
                _ => throw new ResponseFormatException($"{path}.type: must be a type name or a non-empty array of them"),
            };
            foreach (var name in list)
                if (!AllTypes.Contains(name)) throw new ResponseFormatException($"{path}.type: '{name}' is not a JSON Schema type");
            if (list.Contains("number")) list.Remove("integer");   // every integer is a number
            return list;
        }

        Node Typed(JsonElement s, string type, string path, int depth)
        {
            switch (type)
            {
                case "any": return AnyValue();
                case "object": return Object(s, path, depth);
                case "array":
                {
                    var node = New(Kind.Array);
                    node.Items = s.TryGetProperty("items", out var items) ? Compile(items, $"{path}.items", depth + 1) : AnyValue();
                    node.MinItems = Count(s, "minItems", path) ?? 0;
                    node.MaxItems = Count(s, "maxItems", path) ?? int.MaxValue;
                    if (node.MinItems > node.MaxItems) throw new ResponseFormatException($"{path}: minItems is above maxItems");
                    return node;
                }
                case "string":
                {
                    var node = New(Kind.String);
                    node.MinLength = Count(s, "minLength", path) ?? 0;
                    node.MaxLength = Count(s, "maxLength", path) ?? int.MaxValue;
                    if (node.MinLength > node.MaxLength) throw new ResponseFormatException($"{path}: minLength is above maxLength");
                    return node;
                }
                case "number": return New(Kind.Number);
                case "integer": return New(Kind.Integer);
                case "boolean": return Texts(["true", "false"]);
                default: return Texts(["null"]);
            }
        }

        static int? Count(JsonElement s, string keyword, string path)
        {
            if (!s.TryGetProperty(keyword, out var v)) return null;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long n) && n >= 0) return (int)Math.Min(n, int.MaxValue);
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d >= 0 && d == Math.Floor(d)) return (int)Math.Min(d, int.MaxValue);
            throw new ResponseFormatException($"{path}.{keyword}: must be a non-negative integer");
        }

        Node Object(JsonElement s, string path, int depth)
        {
            if (s.TryGetProperty("additionalProperties", out var extra) && extra.ValueKind is not (JsonValueKind.False or JsonValueKind.True))
                throw new ResponseFormatException($"{path}.additionalProperties: only false (or true, which generates no extra properties) is supported");
            if (!s.TryGetProperty("properties", out var props))
            {
                if (s.TryGetProperty("required", out var names) && names.ValueKind == JsonValueKind.Array && names.GetArrayLength() > 0)
                    throw new ResponseFormatException($"{path}.required: names properties that 'properties' does not define");
                // No properties: {} when extra ones are forbidden, else any object.
                return extra.ValueKind == JsonValueKind.False ? ObjectOf([], path) : FreeObject();
            }
            if (props.ValueKind != JsonValueKind.Object) throw new ResponseFormatException($"{path}.properties: must be an object of schemas");
            var required = new HashSet<string>(StringComparer.Ordinal);
            if (s.TryGetProperty("required", out var req))
            {
                if (req.ValueKind != JsonValueKind.Array || req.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
                    throw new ResponseFormatException($"{path}.required: must be an array of property names");
                foreach (var name in req.EnumerateArray().Select(e => e.GetString()!))
                {
                    if (!props.TryGetProperty(name, out _))
                        throw new ResponseFormatException($"{path}.required: '{name}' is not one of the properties (extra properties are not generated)");
                    required.Add(name);
                }
            }
            var list = new List<(string, JsonElement, bool)>();
            foreach (var p in props.EnumerateObject()) list.Add((p.Name, p.Value, required.Contains(p.Name)));
            if (list.Select(p => p.Item1).Distinct().Count() != list.Count) throw new ResponseFormatException($"{path}.properties: a property name repeats");
            var node = ObjectOf([], path);
            node.Properties = list.Select(p => new Property(p.Item1, Literal(JsonString(p.Item1)), Compile(p.Item2, $"{path}.properties.{p.Item1}", depth + 1), p.Item3)).ToArray();
            SetRequired(node);
            return node;
        }

        Node ObjectOf(Property[] properties, string path)
        {
            var node = New(Kind.Object);
            node.Properties = properties;
            SetRequired(node);
            return node;
        }

        static void SetRequired(Node node)
        {
            var props = node.Properties!;
            node.NextRequiredAfter = new int[props.Length + 1];
            int next = props.Length;
            for (int j = props.Length - 1; j >= -1; j--)
            {
                node.NextRequiredAfter[j + 1] = next;
                if (j >= 0 && props[j].Required) next = j;
            }
        }

        Node Ref(JsonElement r, string path, int depth)
        {
            string target = r.ValueKind == JsonValueKind.String ? r.GetString()! : throw new ResponseFormatException($"{path}.$ref: must be a string");
            if (refs.TryGetValue(target, out var known)) return known;
            JsonElement schema;
            if (target == "#") schema = Root;
            else if (target.StartsWith("#/$defs/", StringComparison.Ordinal) || target.StartsWith("#/definitions/", StringComparison.Ordinal))
            {
                string defs = target[2..target.IndexOf('/', 2)], name = target[(target.IndexOf('/', 2) + 1)..].Replace("~1", "/").Replace("~0", "~");
                if (Root.ValueKind != JsonValueKind.Object || !Root.TryGetProperty(defs, out var all) || all.ValueKind != JsonValueKind.Object
                    || !all.TryGetProperty(name, out schema))
                    throw new ResponseFormatException($"{path}.$ref: '{target}' is not defined in the schema's {defs}");
            }
            else throw new ResponseFormatException($"{path}.$ref: '{target}' is not supported (only '#', '#/$defs/…' and '#/definitions/…' are)");
            // A placeholder first, so a recursive reference resolves to the node being compiled.
            var node = New(Kind.AnyOf);
            refs[target] = node;
            node.Alternatives = [Compile(schema, target, depth + 1)];
            return node;
        }

        Node Literals(JsonElement s, JsonElement values, List<string> types, string path)
        {
            bool isConst = !s.TryGetProperty("enum", out _);
            if (!isConst && (values.ValueKind != JsonValueKind.Array || values.GetArrayLength() == 0))
                throw new ResponseFormatException($"{path}.enum: must be a non-empty array");
            var list = isConst ? [values] : values.EnumerateArray().ToList();
            if (list.Count > MaxEnumValues) throw new ResponseFormatException($"{path}.enum: more than {MaxEnumValues} values");
            int? minLength = Count(s, "minLength", path), maxLength = Count(s, "maxLength", path);
            var texts = list.Where(v => Fits(v, types, minLength, maxLength)).Select(Compact).Distinct().ToList();
            if (texts.Count == 0) throw new ResponseFormatException($"{path}.{(isConst ? "const" : "enum")}: no value has the schema's type");
            return Texts(texts);
        }

        static bool Fits(JsonElement v, List<string> types, int? minLength, int? maxLength)
        {
            string type = v.ValueKind switch
            {
                JsonValueKind.Object => "object", JsonValueKind.Array => "array", JsonValueKind.String => "string",
                JsonValueKind.True or JsonValueKind.False => "boolean", JsonValueKind.Null => "null",
                _ => v.TryGetDouble(out double d) && d == Math.Floor(d) && !double.IsInfinity(d) ? "integer" : "number",
            };
            bool typed = types.Contains("any") || types.Contains(type) || (type == "integer" && types.Contains("number"));
            if (!typed || type != "string") return typed;
            int length = v.GetString()!.EnumerateRunes().Count();
            return length >= (minLength ?? 0) && length <= (maxLength ?? int.MaxValue);
        }

        Node Texts(IEnumerable<string> texts)
        {
            var node = New(Kind.Literals);
            node.Literals = new LiteralTrie();
            foreach (var t in texts) node.Literals.Add(Literal(t));
            return node;
        }

        byte[] Literal(string text)
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            if ((literalBytes += bytes.Length) > MaxLiteralBytes) throw new ResponseFormatException($"schema: more than {MaxLiteralBytes} bytes of enum, const and property names");
            return bytes;
        }

        /// <summary>Any JSON value: json_object's insides and a schema's <c>{}</c>.</summary>
        public Node AnyValue()
        {
            if (anyValue is not null) return anyValue;
            anyValue = New(Kind.AnyOf);
            var array = New(Kind.Array);
            array.Items = anyValue;
            anyValue.Alternatives = [FreeObject(), array, New(Kind.String), New(Kind.Number), Texts(["true", "false", "null"])];
            return anyValue;
        }

        /// <summary>An object with any keys and any values.</summary>
        public Node FreeObject()
        {
            if (freeObject is not null) return freeObject;
            freeObject = New(Kind.Object);
            freeObject.Properties = null;
            freeObject.FreeValue = AnyValue();
            return freeObject;
        }

        /// <summary>Each node's fewest nested containers, to a fixed point (recursive references make it a least solution).</summary>
        public void Finish()
        {
            for (bool changed = true; changed;)
            {
                changed = false;
                foreach (var n in nodes)
                {
                    int h = n.Kind switch
                    {
                        Kind.Object => n.Properties is null ? 1 : Add1(n.Properties.Where(p => p.Required).Select(p => p.Value.MinHeight).DefaultIfEmpty(0).Max()),
                        Kind.Array => Add1(n.MinItems > 0 ? n.Items!.MinHeight : 0),
                        Kind.AnyOf => n.Alternatives.Length == 0 ? int.MaxValue : n.Alternatives.Min(a => a.MinHeight),
                        _ => 0,
                    };
                    if (h < n.MinHeight) { n.MinHeight = h; changed = true; }
                }
            }
        }

        static int Add1(int h) => h == int.MaxValue ? h : h + 1;
    }

    /// <summary>A string as JSON writes it: quotes, the escapes JSON requires, everything else as UTF-8.</summary>
    public static string JsonString(string s)
    {
        var b = new StringBuilder("\"");
        foreach (char c in s)
            b.Append(c switch
            {
                '"' => "\\\"", '\\' => "\\\\", '\n' => "\\n", '\r' => "\\r", '\t' => "\\t", '\b' => "\\b", '\f' => "\\f",
                < ' ' => $"\\u{(int)c:x4}",
                _ => c.ToString(),
            });
        return b.Append('"').ToString();
    }

    /// <summary>A JSON value without whitespace (numbers as written), the one spelling a literal is generated in.</summary>
    public static string Compact(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.Object => "{" + string.Join(",", v.EnumerateObject().Select(p => JsonString(p.Name) + ":" + Compact(p.Value))) + "}",
        JsonValueKind.Array => "[" + string.Join(",", v.EnumerateArray().Select(Compact)) + "]",
        JsonValueKind.String => JsonString(v.GetString()!),
        _ => v.GetRawText(),
    };
}
