using System.Text;
using System.Text.Json;
using AdapterService.Core.Inference;
using AdapterService.Core.Inference.Constraints;
using AdapterService.Core.Models;
using AdapterService.Core.Tests.Text;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Inference;

/// <summary>
/// Constrained JSON decoding: the byte automaton against hand-written valid and invalid documents, the token masks
/// against a token-by-token check of the whole vocabulary, and random decoding over real tokenizers (Qwen 3, Llama 3.1)
/// whose outputs parse and validate against their schema (a naive validator of the supported subset).
/// </summary>
public sealed class JsonConstraintTests
{
    public JsonConstraintTests() => TorchRuntime.EnsureReady();

    static readonly Dictionary<string, HfTokenizer> Tokenizers = [];

    /// <summary>A real tokenizer from the reference package (its tokenizer.json and tokenizer_config.json beside an empty config.json).</summary>
    internal static HfTokenizer Tokenizer(string name)
    {
        lock (Tokenizers)
        {
            if (Tokenizers.TryGetValue(name, out var known)) return known;
            var folder = Directory.CreateTempSubdirectory("json-constraint-").FullName;
            try
            {
                File.WriteAllText(Path.Combine(folder, "config.json"), "{}");
                foreach (var file in new[] { HfTokenizer.TokenizerFile, HfTokenizer.ConfigFile })
                    File.Copy(Path.Combine(HfReference.RealFiles(name), file), Path.Combine(folder, file));
                return Tokenizers[name] = HfTokenizer.Load(folder);
            }
            finally { Directory.Delete(folder, recursive: true); }
        }
    }

    internal static int[] Eos(HfTokenizer tokenizer) => [tokenizer.SpecialTokens[tokenizer.EosToken!]];

    static JsonElement Schema(string json) => JsonDocument.Parse(json).RootElement.Clone();

    const string Person = """
        {"type":"object","properties":{
          "name":{"type":"string","maxLength":12},
          "age":{"type":"integer"},
          "score":{"type":["number","null"]},
          "tags":{"type":"array","items":{"type":"string","enum":["a","b c","ü\"é"]},"maxItems":3},
          "kind":{"const":"person"},
          "ok":{"type":"boolean"},
          "note":{"type":"string","minLength":2,"maxLength":5}
        },"required":["name","age","score","tags","kind","ok"],"additionalProperties":false}
        """;

    const string Tree = """
        {"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":2}},
          "required":["v","kids"],"additionalProperties":false}},
         "type":"object","properties":{"root":{"$ref":"#/$defs/node"},"choice":{"anyOf":[{"type":"string","maxLength":3},{"type":"object","properties":{"x":{"type":"null"}},"required":["x"]}]}},
         "required":["root","choice"]}
        """;

    static bool Accepts(JsonGrammar grammar, string text, out bool complete)
    {
        List<JsonAutomaton.Frame> state = [JsonAutomaton.Start(grammar)], next = [];
        foreach (byte b in Encoding.UTF8.GetBytes(text))
        {
            JsonAutomaton.Advance(state, b, next);
            if (next.Count == 0) { complete = false; return false; }
            (state, next) = (next, state);
        }
        complete = state.Any(JsonAutomaton.IsComplete);
        return true;
    }

    [Theory]
    [InlineData("""{"name":"Ann","age":3,"score":null,"tags":[],"kind":"person","ok":true}""", true)]
    [InlineData("""{ "name" : "Ann", "age": -0, "score": 1.5e+3, "tags": ["a", "b c", "ü\"é"], "kind": "person", "ok": false, "note": "\u00e9\n"}""", true)]
    [InlineData("""{"name":"Ann","age":3,"score":null,"tags":[],"kind":"person"}""", false)]            // ok missing
    [InlineData("""{"age":3,"name":"Ann","score":null,"tags":[],"kind":"person","ok":true}""", false)]  // out of schema order
    [InlineData("""{"name":"Ann","age":3.5,"score":null,"tags":[],"kind":"person","ok":true}""", false)] // integer
    [InlineData("""{"name":"Ann","age":03,"score":null,"tags":[],"kind":"person","ok":true}""", false)]  // leading zero
    [InlineData("""{"name":"Ann","age":3,"score":null,"tags":["a","a","a","a"],"kind":"person","ok":true}""", false)]  // maxItems
    [InlineData("""{"name":"Ann","age":3,"score":null,"tags":["d"],"kind":"person","ok":true}""", false)]  // enum
    [InlineData("""{"name":"Ann","age":3,"score":null,"tags":[],"kind":"human","ok":true}""", false)]  // const
    [InlineData("""{"name":"Ann","age":3,"score":null,"tags":[],"kind":"person","ok":true,"note":"x"}""", false)]   // minLength
    [InlineData("""{"name":"Ann","age":3,"score":null,"tags":[],"kind":"person","ok":true,"extra":1}""", false)]   // additionalProperties
    [InlineData("""{"name":"0123456789abc","age":3,"score":null,"tags":[],"kind":"person","ok":true}""", false)]   // maxLength
    [InlineData("""{"name":"a\ud800","age":3,"score":null,"tags":[],"kind":"person","ok":true}""", false)]   // surrogate escape
    [InlineData("""{"name":"Ann","age":3,"score":null,"tags":[,],"kind":"person","ok":true}""", false)]
    [InlineData(""" {"name":"Ann","age":3,"score":null,"tags":[],"kind":"person","ok":true}""", false)]   // leading whitespace
    public void TheAutomatonAcceptsExactlyTheSchemasDocuments(string text, bool valid)
    {
        var grammar = JsonGrammar.FromSchema(Schema(Person));
        bool prefix = Accepts(grammar, text, out bool complete);
        Assert.Equal(valid, prefix && complete);
        if (valid) Validate(Schema(Person), JsonDocument.Parse(text).RootElement, Schema(Person));
    }

    [Fact]
    public void RecursionAnyOfAndJsonModeFollowTheirRules()
    {
        var tree = JsonGrammar.FromSchema(Schema(Tree));
        Assert.True(Accepts(tree, """{"root":{"v":1,"kids":[{"v":2,"kids":[]},{"v":3,"kids":[{"v":4,"kids":[]}]}]},"choice":"abc"}""", out bool c1) && c1);
        Assert.True(Accepts(tree, """{"root":{"v":1,"kids":[]},"choice":{"x":null}}""", out bool c2) && c2);
        Assert.False(Accepts(tree, """{"root":{"v":1,"kids":[]},"choice":"abcd""", out _));
        // Nesting stops at MaxDepth: the innermost node can no longer open its kids array.
        string deep = string.Concat(Enumerable.Repeat("""{"v":1,"kids":[""", JsonGrammar.MaxDepth));
        Assert.False(Accepts(tree, """{"root":""" + deep, out _));

        var json = JsonGrammar.JsonObject();
        Assert.True(Accepts(json, """{"a":[1,{"b":null},"x",true,-2.5E-3],"":{}}""", out bool c3) && c3);
        Assert.False(Accepts(json, "[1]", out _));            // json_object is an object
        Assert.False(Accepts(json, """{"a":1,}""", out _));   // no trailing comma
        Assert.True(Accepts(json, "{" + new string(' ', JsonAutomaton.MaxWhitespace) + "}", out _));
        Assert.False(Accepts(json, "{" + new string(' ', JsonAutomaton.MaxWhitespace + 1), out _));   // whitespace is bounded
        Assert.False(Accepts(json, "{}\n", out _));           // nothing after the document
        Assert.False(Accepts(json, "{\n", out _));            // spaces only
        Assert.Empty(After(json, [(byte)'{', (byte)'"', 0xC0, 0x80]));   // an overlong UTF-8 form
    }

    [Theory]
    [InlineData("""{"type":"string","pattern":"^a+$"}""", "'pattern'")]
    [InlineData("""{"type":"object","properties":{"n":{"type":"number","minimum":0}}}""", "schema.properties.n: the keyword 'minimum'")]
    [InlineData("""{"oneOf":[{"type":"string"}]}""", "'oneOf'")]
    [InlineData("""{"allOf":[{"type":"string"}]}""", "'allOf'")]
    [InlineData("""{"$ref":"https://example.com/s.json"}""", "$ref")]
    [InlineData("""{"$ref":"#/$defs/missing"}""", "not defined")]
    [InlineData("""{"type":"object","properties":{"a":{}},"additionalProperties":{"type":"string"}}""", "additionalProperties")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"string"}},"required":["b"]}""", "'b'")]
    [InlineData("""{"type":"strin"}""", "'strin'")]
    [InlineData("""{"type":"array","minItems":3,"maxItems":2}""", "minItems")]
    [InlineData("""{"$defs":{"a":{"type":"object","properties":{"a":{"$ref":"#/$defs/a"}},"required":["a"]}},"$ref":"#/$defs/a"}""", "no finite JSON value")]
    [InlineData("""{"type":"integer","enum":["a","b"]}""", "enum")]
    public void UnsupportedOrImpossibleSchemasAreRefusedByKeyword(string schema, string named)
    {
        var e = Assert.Throws<ResponseFormatException>(() => JsonGrammar.FromSchema(Schema(schema)));
        Assert.Contains(named, e.Message);
    }

    [Fact]
    public void EverythingThatExpandsIsBounded()
    {
        string bigEnum = "{\"enum\":[" + string.Join(",", Enumerable.Range(0, JsonGrammar.MaxEnumValues + 1)) + "]}";
        Assert.Contains("enum", Assert.Throws<ResponseFormatException>(() => JsonGrammar.FromSchema(Schema(bigEnum))).Message);
        string manyNodes = "{\"type\":\"object\",\"properties\":{" + string.Join(",", Enumerable.Range(0, JsonGrammar.MaxNodes + 1).Select(i => $"\"p{i}\":{{\"type\":\"string\"}}")) + "}}";
        Assert.Contains("schema objects", Assert.Throws<ResponseFormatException>(() => JsonGrammar.FromSchema(Schema(manyNodes))).Message);
        string deep = string.Concat(Enumerable.Repeat("{\"type\":\"array\",\"minItems\":1,\"items\":", JsonGrammar.MaxDepth + 1)) + "{\"type\":\"null\"}" + new string('}', JsonGrammar.MaxDepth + 1);
        Assert.Contains("deeper", Assert.Throws<ResponseFormatException>(() => JsonGrammar.FromSchema(Schema(deep))).Message);
    }

    /// <summary>The trie walk allows exactly the tokens whose bytes, fed one by one, keep a cursor alive (the naive reference), in states met while decoding.</summary>
    [Fact]
    public void MasksEqualATokenByTokenCheckOfTheWholeVocabulary()
    {
        var tokenizer = Tokenizer("qwen3");
        var vocabulary = TokenVocabulary.For(tokenizer);
        Assert.True(vocabulary.SpellsAscii);
        var grammar = JsonGrammar.FromSchema(Schema(Person));
        var eos = Eos(tokenizer);
        var constraint = new JsonConstraint(grammar, tokenizer, eos);
        string document = """{"name":"Zoë","age":12,"score":null,"tags":["b c"],"kind":"person","ok":true}""";
        var ids = tokenizer.Encode(document, addSpecialTokens: false);
        Assert.Equal(document, TokenVocabulary.Raw(tokenizer, ids));
        var sofar = new List<byte>();
        for (int i = 0; i <= ids.Count; i++)
        {
            if (i % 4 == 0 || i >= ids.Count - 1)
            {
                var state = After(grammar, sofar);
                bool complete = state.Any(JsonAutomaton.IsComplete);
                var allowed = constraint.Allowed().ToHashSet();
                using var logits = zeros(vocabulary.Size + 5);
                constraint.Mask(logits);
                var masked = logits.data<float>().ToArray();
                for (int t = 0; t < vocabulary.Size + 5; t++)
                    Assert.Equal(allowed.Contains(t), masked[t] == 0);
                for (int t = 0; t < vocabulary.Size; t++)
                {
                    bool expected = eos.Contains(t) ? complete : vocabulary.Bytes[t] is { } bytes && After(state, bytes).Count > 0;
                    Assert.True(expected == allowed.Contains(t), $"after {i} tokens: token {t} '{tokenizer.IdToToken(t)}' allowed {!expected}");
                }
            }
            if (i == ids.Count) break;
            constraint.Advance(ids[i]);
            sofar.AddRange(vocabulary.Bytes[ids[i]]!);
        }
        Assert.True(constraint.IsComplete);
        Assert.False(constraint.CanContinue);
    }

    static List<JsonAutomaton.Frame> After(JsonGrammar grammar, IEnumerable<byte> bytes) => After([JsonAutomaton.Start(grammar)], bytes);

    static List<JsonAutomaton.Frame> After(List<JsonAutomaton.Frame> start, IEnumerable<byte> bytes)
    {
        List<JsonAutomaton.Frame> state = start, next = [];
        foreach (byte b in bytes)
        {
            next = [];
            JsonAutomaton.Advance(state, b, next);
            if (next.Count == 0) return next;
            state = next;
        }
        return state;
    }

    /// <summary>
    /// Random decoding (uniform among allowed tokens: what a random-weight model's masked logits give) through the mask, on Qwen 3's and Llama 3.1's
    /// tokenizers: every finished document parses and validates against its schema; the end id comes only when it is complete.
    /// </summary>
    [Theory]
    [InlineData("qwen3")]
    [InlineData("llama3_1")]
    public void RandomDecodingGivesDocumentsThatValidate(string name)
    {
        var tokenizer = Tokenizer(name);
        var eos = Eos(tokenizer);
        var schemas = new[] { Person, Tree, """{"type":"object","properties":{"xs":{"type":"array","items":{"type":"number"},"minItems":1,"maxItems":4}},"required":["xs"]}""" };
        var random = new Random(7);
        int finished = 0, runs = 0;
        foreach (var schemaText in schemas)
            for (int run = 0; run < 6; run++, runs++)
            {
                var schema = Schema(schemaText);
                var constraint = new JsonConstraint(JsonGrammar.FromSchema(schema), tokenizer, eos);
                var ids = new List<int>();
                bool ended = false;
                for (int step = 0; step < 160 && !ended; step++)
                {
                    // A random model's logits are independent draws, so sampling from its masked softmax is a uniform pick
                    // among the allowed tokens (here in C#: the torch mask itself is checked below).
                    var allowed = constraint.Allowed();
                    Assert.NotEmpty(allowed);
                    int id = allowed[random.Next(allowed.Count)];
                    if (eos.Contains(id)) { Assert.True(constraint.IsComplete); ended = true; break; }
                    constraint.Advance(id);
                    ids.Add(id);
                }
                if (!ended) continue;   // cut by the step limit, as max_tokens would
                finished++;
                string text = TokenVocabulary.Raw(tokenizer, ids);
                using var doc = JsonDocument.Parse(text);
                Validate(schema, doc.RootElement, schema);
            }
        Assert.True(finished >= runs * 2 / 3, $"{finished} of {runs} finished within 160 tokens");
    }

    /// <summary>
    /// Through the engine: a random-weight Llama with Qwen 3's vocabulary (and a few more logits than tokens), 6 prompts
    /// decoded together at temperature 1, each constrained to a schema; every finished answer validates, the cut ones end
    /// with "length".
    /// </summary>
    [Fact]
    public async Task ARandomModelThroughTheEngineAnswersWithValidDocuments()
    {
        var tokenizer = Tokenizer("qwen3");
        var eos = Eos(tokenizer);
        var root = Directory.CreateTempSubdirectory("json-engine-");
        try
        {
            var folder = Path.Combine(root.FullName, "base");
            using (var scope = NewDisposeScope())
            using (var model = TinyLlama.Create(3, TinyLlama.Config with { VocabSize = tokenizer.VocabularySize + 3, HiddenSize = 16, IntermediateSize = 32, NumHiddenLayers = 1, MaxPositionEmbeddings = 256 }))
                ModelFolder.Save(model, folder);
            var schema = Schema(Tree);
            var grammar = JsonGrammar.FromSchema(schema);
            using var engine = new InferenceEngine();
            var answers = await Task.WhenAll(Enumerable.Range(0, 6).Select(async i =>
            {
                var prompt = tokenizer.Encode($"Tree number {i}, as JSON:", addSpecialTokens: false).ToList();
                var request = new GenerationRequest("random-qwen", folder, null, null, prompt, new SamplingOptions(120, 1.0, Seed: i), tokenizer, eos)
                    { Constraint = () => new JsonConstraint(grammar, tokenizer, eos) };
                string text = "", finish = "";
                await foreach (var chunk in engine.Generate(request)) { text += chunk.Text; finish = chunk.FinishReason ?? finish; }
                return (text, finish);
            }));
            foreach (var (text, finish) in answers)
                if (finish == "stop") Validate(schema, JsonDocument.Parse(text).RootElement, schema);
                else Assert.Equal("length", finish);
            Assert.True(answers.Count(a => a.finish == "stop") >= 3, string.Join("\n", answers.Select(a => $"{a.finish}: {a.text}")));
        }
        finally { root.Delete(recursive: true); }
    }

    /// <summary>A naive validator of the supported subset (the reference the outputs are checked with).</summary>
    static void Validate(JsonElement schema, JsonElement value, JsonElement root)
    {
        if (schema.TryGetProperty("$ref", out var r))
        {
            string target = r.GetString()!;
            Validate(target == "#" ? root : root.GetProperty("$defs").GetProperty(target["#/$defs/".Length..]), value, root);
            return;
        }
        if (schema.TryGetProperty("anyOf", out var anyOf))
        {
            Assert.Contains(anyOf.EnumerateArray(), s => { try { Validate(s, value, root); return true; } catch (Exception) { return false; } });
            return;
        }
        if (schema.TryGetProperty("const", out var constant)) Assert.Equal(constant.GetRawText(), JsonGrammar.Compact(value));
        if (schema.TryGetProperty("enum", out var values)) Assert.Contains(JsonGrammar.Compact(value), values.EnumerateArray().Select(JsonGrammar.Compact));
        if (schema.TryGetProperty("type", out var type))
        {
            var types = type.ValueKind == JsonValueKind.Array ? type.EnumerateArray().Select(t => t.GetString()).ToList() : [type.GetString()];
            string actual = value.ValueKind switch
            {
                JsonValueKind.Object => "object", JsonValueKind.Array => "array", JsonValueKind.String => "string", JsonValueKind.Null => "null",
                JsonValueKind.True or JsonValueKind.False => "boolean", _ => value.GetRawText().IndexOfAny(['.', 'e', 'E']) < 0 ? "integer" : "number",
            };
            Assert.True(types.Contains(actual) || (actual == "integer" && types.Contains("number")), $"{value.GetRawText()} is not {type.GetRawText()}");
        }
        switch (value.ValueKind)
        {
            case JsonValueKind.Object when schema.TryGetProperty("properties", out var props):
                foreach (var p in value.EnumerateObject()) Assert.True(props.TryGetProperty(p.Name, out var ps), $"extra property {p.Name}"); 
                foreach (var p in value.EnumerateObject()) Validate(props.GetProperty(p.Name), p.Value, root);
                if (schema.TryGetProperty("required", out var req))
                    foreach (var name in req.EnumerateArray()) Assert.True(value.TryGetProperty(name.GetString()!, out _), $"missing {name}");
                break;
            case JsonValueKind.Array:
                int n = value.GetArrayLength();
                if (schema.TryGetProperty("minItems", out var min)) Assert.True(n >= min.GetInt32());
                if (schema.TryGetProperty("maxItems", out var max)) Assert.True(n <= max.GetInt32());
                if (schema.TryGetProperty("items", out var items)) foreach (var item in value.EnumerateArray()) Validate(items, item, root);
                break;
            case JsonValueKind.String:
                int length = value.GetString()!.EnumerateRunes().Count();
                if (schema.TryGetProperty("minLength", out var minL)) Assert.True(length >= minL.GetInt32());
                if (schema.TryGetProperty("maxLength", out var maxL)) Assert.True(length <= maxL.GetInt32(), $"{value} longer than {maxL}");
                break;
        }
    }
}
