using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Data;
using AdapterService.Core.Models;

namespace AdapterService.Core.Text;

/// <summary>Token ids and, per id, whether the loss is taken on it.</summary>
public sealed record TokenSequence(int[] Ids, bool[] Train);

/// <summary>
/// How text becomes tokens for one model folder, and back: its tokenizer, its chat templates and the ids that end a
/// reply. Every prompt, chat, training example and <c>/tokenize</c> call goes through here, so training and serving
/// see the same tokens.
/// </summary>
public sealed class ModelText
{
    public const string TemplateFile = "chat_template.jinja";

    public ITextTokenizer Tokenizer { get; }
    /// <summary>The template chat uses unless a request or a fine-tuned model names another; null when the model has none.</summary>
    public ChatTemplate? Template { get; }
    /// <summary>Templates the folder names (<c>tokenizer_config.json</c>'s list of named templates), by name.</summary>
    public IReadOnlyDictionary<string, ChatTemplate> NamedTemplates { get; }
    /// <summary>Ids that end a reply: the tokenizer's (config.json's and generation_config.json's) and a fallback chat format's end of turn.</summary>
    public IReadOnlyList<int> EosIds { get; }
    /// <summary>Hex SHA-256 of the tokenizer's files: what a fine-tuned model records of the tokenizer it was trained with.</summary>
    public string TokenizerSha256 { get; }

    ModelText(ITextTokenizer tokenizer, ChatTemplate? template, IReadOnlyDictionary<string, ChatTemplate> named, IReadOnlyList<int> eosIds, string tokenizerSha256) =>
        (Tokenizer, Template, NamedTemplates, EosIds, TokenizerSha256) = (tokenizer, template, named, eosIds, tokenizerSha256);

    // A stored folder changes only when its base is deleted and imported again under the same id: each version is read once.
    static readonly ConcurrentDictionary<string, (string Version, Lazy<ModelText> Text)> Loaded = new();
    static readonly ConcurrentDictionary<string, Lazy<ChatTemplate?>> AdapterTemplates = new();

    public static ModelText ForModel(string folder)
    {
        string version = ModelFolder.Version(folder);
        var entry = Loaded.AddOrUpdate(folder, f => (version, new Lazy<ModelText>(() => Read(f))),
            (f, old) => old.Version == version ? old : (version, new Lazy<ModelText>(() => Read(f))));
        return entry.Text.Value;
    }

    /// <summary>The rules of a tokenizer without a model folder (tests, benchmarks): its fallback chat format, if it has one.</summary>
    public static ModelText Of(ITextTokenizer tokenizer) => Create(tokenizer, null, new Dictionary<string, ChatTemplate>(), "");

    /// <summary>The rules of a tokenizer and the folder's templates; without a template, the tokenizer's fallback format and its end of turn.</summary>
    static ModelText Create(ITextTokenizer tokenizer, ChatTemplate? template, IReadOnlyDictionary<string, ChatTemplate> named, string tokenizerSha256)
    {
        if (!Chats(tokenizer)) (template, named) = (null, new Dictionary<string, ChatTemplate>());
        var eos = new List<int>(tokenizer.EosIds);   // config.json's and generation_config.json's
        if (template is null && FallbackChatFormats.Find(tokenizer) is { } fallback)
        {
            template = ChatTemplate.Parse(fallback.Template);
            eos.Add(fallback.EndId);
        }
        return new ModelText(tokenizer, template, named, eos.Distinct().ToList(), tokenizerSha256);
    }

    /// <summary>The built-in models' rules: the byte tokenizer and its chat format.</summary>
    public static ModelText BuiltIn { get; } = Of(new ByteTokenizer());

    /// <summary>What a fine-tuned model's folder records of its training: the template's source and the tokenizer's hash.</summary>
    public const string TrainedWithFile = "trained_with.json";

    /// <summary>Writes <paramref name="template"/> (as <c>chat_template.jinja</c>, as Hugging Face saves it) and the hashes into an adapter's folder.</summary>
    public static void WriteTrainedWith(string adapterFolder, ModelText text, ChatTemplate? template)
    {
        if (template is not null) File.WriteAllText(Path.Combine(adapterFolder, TemplateFile), template.Source);
        File.WriteAllText(Path.Combine(adapterFolder, TrainedWithFile), new JsonObject
        {
            ["tokenizer_sha256"] = text.TokenizerSha256,
            ["chat_template_sha256"] = template?.Sha256,
        }.ToJsonString());
    }

    /// <summary>
    /// The template a fine-tuned model was trained with (its folder's <c>chat_template.jinja</c>), or null for an adapter
    /// from before templates were recorded (it answers as it did, with the base's). An adapter trained with another
    /// tokenizer than this base's is refused rather than served with the wrong one.
    /// </summary>
    public ChatTemplate? TemplateOfAdapter(string? adapterFolder) => adapterFolder is null ? null
        : AdapterTemplates.GetOrAdd(adapterFolder, f => new Lazy<ChatTemplate?>(() => ReadAdapterFiles(f))).Value;

    /// <summary>
    /// Checks what an adapter's folder records of its training (an imported one's too): the tokenizer it was trained
    /// with must be this base's, and its template must parse. Returns the template, or null when it has none.
    /// </summary>
    public ChatTemplate? ReadAdapterFiles(string adapterFolder)
    {
        string record = Path.Combine(adapterFolder, TrainedWithFile), templateFile = Path.Combine(adapterFolder, TemplateFile);
        if (File.Exists(record) && ReadJson(record) is var json && json?["tokenizer_sha256"] is JsonValue v && v.TryGetValue(out string? sha) && sha != TokenizerSha256)
            throw new NotSupportedException("this fine-tuned model was trained with another tokenizer than its base model has");
        return File.Exists(templateFile) ? Parse(File.ReadAllText(templateFile), TemplateFile) : null;
    }

    /// <summary>
    /// The template to render with: the request's (a name of the model's templates, or a template's source), else the
    /// fine-tuned model's own, else the model's. A model without any refuses chat.
    /// </summary>
    public ChatTemplate ChooseTemplate(string? requested, ChatTemplate? fineTuned = null)
    {
        if (!Chats(Tokenizer))
            throw new NotSupportedException("this model's tokenizer is a SentencePiece tokenizer.model, which cannot encode a chat template's special tokens; use completions, or give the folder its tokenizer.json");
        if (!string.IsNullOrEmpty(requested))
            return NamedTemplates.TryGetValue(requested, out var named) ? named : ChatTemplate.Parse(requested);
        return fineTuned ?? Template ?? throw new NotSupportedException(
            "this model has no chat template (chat_template.jinja or tokenizer_config.json's chat_template); use completions, or pass chat_template");
    }

    /// <summary>A chat prompt, encoded as Hugging Face's <c>apply_chat_template</c> does (the template writes the special tokens).</summary>
    public List<int> EncodeChat(ChatConversation chat, ChatTemplate template, bool addGenerationPrompt = true) =>
        [.. Tokenizer.Encode(RenderChat(chat, template, addGenerationPrompt), addSpecialTokens: false)];

    /// <summary>
    /// The prompt text of <paramref name="chat"/>; with <paramref name="continueFinalMessage"/> it ends inside the last
    /// message (rendered without a generation prompt and cut after that message's content), as Hugging Face's
    /// <c>continue_final_message</c> does, so the model continues it.
    /// </summary>
    public string RenderChat(ChatConversation chat, ChatTemplate template, bool addGenerationPrompt = true, bool continueFinalMessage = false)
    {
        if (!continueFinalMessage) return template.Render(chat, Tokenizer, addGenerationPrompt).Text;
        string text = template.Render(chat, Tokenizer, addGenerationPrompt: false).Text;
        string last = (chat.Messages[^1]["content"] as JsonValue)?.TryGetValue(out string? c) == true ? c!.Trim() : "";
        int at = last.Length == 0 ? -1 : text.LastIndexOf(last, StringComparison.Ordinal);
        if (at < 0) throw new ChatTemplateException("continue_final_message: the final message's content is not in the rendered prompt");
        return text[..(at + last.Length)];
    }

    /// <summary>A completion prompt with the tokenizer's own special tokens (its begin-of-sequence id).</summary>
    public List<int> EncodeCompletion(string prompt) => [.. Tokenizer.Encode(prompt, addSpecialTokens: true)];

    /// <summary>
    /// The sequences one training example trains on. A completion: prompt and completion encoded together, the loss on
    /// the completion and an end id. A chat: rendered with <paramref name="template"/>, the loss on the assistant turns
    /// whose weight is 1, found by the template's <c>{% generation %}</c> blocks where it has them, else as the text
    /// the turn adds to its history's prompt (rendered with <c>add_generation_prompt</c>). A turn whose text differs in
    /// the whole conversation's rendering (a template that rewrites earlier turns, as Qwen 3 drops their reasoning) is
    /// trained as its own sequence, against the prompt the model sees when it writes that turn. docs/MODELS.md.
    /// </summary>
    public IReadOnlyList<TokenSequence> EncodeExample(TrainingExample example, ChatTemplate? template) => example switch
    {
        CompletionExample c => [EncodeCompletionExample(c)],
        ChatExample chat => EncodeChatExample(chat, template ?? ChooseTemplate(null)),
        PreferenceExample pair => EncodePreferenceExample(pair, template ?? ChooseTemplate(null)),
        // A reinforcement prompt: what the model sees before it answers; nothing of it is trained on.
        PromptExample p => [EncodePrompt(p, template)],
        _ => throw new NotSupportedException("a language model trains on chat, prompt/completion, preference or reinforcement examples"),
    };

    /// <summary>A reinforcement prompt's ids: its messages rendered with the generation prompt, as a chat request's are.</summary>
    public TokenSequence EncodePrompt(PromptExample prompt, ChatTemplate? template)
    {
        var ids = EncodeChat(ChatConversation.Of(prompt.Messages.Select(m => (m.Role, m.Content))), template ?? ChooseTemplate(null));
        return new TokenSequence([.. ids], new bool[ids.Count]);
    }

    TokenSequence EncodeCompletionExample(CompletionExample c)
    {
        string text = c.Prompt + c.Completion;
        var sequence = Mask(text, [(c.Prompt.Length, text.Length)], addSpecialTokens: true);
        if (EosIds is not [var eos, ..] || sequence.Ids is [.., var last] && EosIds.Contains(last)) return sequence;
        return new TokenSequence([.. sequence.Ids, eos], [.. sequence.Train, true]);
    }

    /// <summary>
    /// A preference pair as two sequences, the chosen conversation then the rejected one, each trained on its final
    /// assistant answer only (the input is rendered with the chat template, as a chat example's is).
    /// </summary>
    List<TokenSequence> EncodePreferenceExample(PreferenceExample pair, ChatTemplate template)
    {
        var (chosen, rejected) = pair.Chats;
        // The last turn is a prefix of the whole conversation rendered, so each side is one sequence.
        return [EncodeChatExample(chosen, template).Single(), EncodeChatExample(rejected, template).Single()];
    }

    List<TokenSequence> EncodeChatExample(ChatExample example, ChatTemplate template)
    {
        var chat = ChatConversation.Of(example.Messages.Select(m => (m.Role, m.Content)));
        var full = template.Render(chat, Tokenizer, addGenerationPrompt: false);
        var assistants = Enumerable.Range(0, example.Messages.Count).Where(i => example.Messages[i].Role == "assistant").ToList();
        if (full.Generation.Count > 0)
        {
            if (full.Generation.Count != assistants.Count)
                throw new ChatTemplateException($"the chat template's {{% generation %}} blocks ({full.Generation.Count}) do not match the conversation's assistant messages ({assistants.Count})");
            var marked = assistants.Select((m, k) => (m, span: full.Generation[k])).Where(x => example.Messages[x.m].Train)
                .Select(x => (x.span.Start, x.span.Start + x.span.Length)).ToList();
            return [Mask(full.Text, marked, addSpecialTokens: false)];
        }

        var spans = new List<(int, int)>();
        var own = new List<TokenSequence>();
        foreach (int i in assistants.Where(i => example.Messages[i].Train))
        {
            string prompt = template.Render(chat.Take(i), Tokenizer, addGenerationPrompt: true).Text;
            string turn = template.Render(chat.Take(i + 1), Tokenizer, addGenerationPrompt: false).Text;
            int start = CommonPrefix(prompt, turn);
            if (full.Text.StartsWith(turn, StringComparison.Ordinal)) spans.Add((start, turn.Length));
            else own.Add(Mask(turn, [(start, turn.Length)], addSpecialTokens: false));
        }
        return [Mask(full.Text, spans, addSpecialTokens: false), .. own];
    }

    /// <summary>
    /// <paramref name="text"/>'s ids, trained on those of the characters in <paramref name="spans"/>. The text is encoded
    /// whole (as serving encodes a prompt and the model continues it); a span's first token is the one after the tokens
    /// of the text before it — the common prefix of the two encodings, so a token merged across the boundary is context.
    /// </summary>
    TokenSequence Mask(string text, IReadOnlyList<(int Start, int End)> spans, bool addSpecialTokens)
    {
        var ids = Tokenizer.Encode(text, addSpecialTokens);
        var train = new bool[ids.Count];
        int TokensBefore(int position) => position >= text.Length ? ids.Count : CommonPrefix(Tokenizer.Encode(text[..position], addSpecialTokens), ids);
        foreach (var (start, end) in spans)
            for (int k = TokensBefore(start), to = TokensBefore(end); k < to; k++) train[k] = true;
        return new TokenSequence([.. ids], train);
    }

    /// <summary>SentencePiece encodes the special-token strings a template writes (<c>&lt;s&gt;</c>, <c>[INST]</c>) as text, not as the tokens: it does not chat.</summary>
    static bool Chats(ITextTokenizer tokenizer) => tokenizer is not SentencePieceTextTokenizer;

    static int CommonPrefix(string a, string b)
    {
        int n = 0;
        while (n < a.Length && n < b.Length && a[n] == b[n]) n++;
        return n;
    }

    static int CommonPrefix(IReadOnlyList<int> a, IReadOnlyList<int> b)
    {
        int n = 0;
        while (n < a.Count && n < b.Count && a[n] == b[n]) n++;
        return n;
    }

    /// <summary>Reads a folder's text rules without keeping them (a folder being imported); a template that does not parse is bad data.</summary>
    public static ModelText Read(string folder)
    {
        var tokenizer = TextTokenizers.Read(folder);
        var named = new Dictionary<string, ChatTemplate>(StringComparer.Ordinal);
        ChatTemplate? template = null;
        string config = Path.Combine(folder, HfTokenizer.ConfigFile);
        if (File.Exists(config))
        {
            var root = ReadJson(config);
            switch (root?["chat_template"])
            {
                case JsonValue v when v.TryGetValue(out string? source):
                    template = Parse(source, config);
                    break;
                // Older multi-template configs: [{"name": "default", "template": "…"}, {"name": "tool_use", …}].
                case JsonArray list:
                    foreach (var entry in list)
                        if (entry?["name"]?.GetValue<string>() is { } name && entry["template"]?.GetValue<string>() is { } source)
                            named[name] = Parse(source, config);
                    break;
            }
        }
        string templateFile = Path.Combine(folder, TemplateFile);
        if (File.Exists(templateFile)) template = Parse(File.ReadAllText(templateFile), templateFile);
        template ??= named.GetValueOrDefault("default");

        return Create(tokenizer, template, named, HashTokenizerFiles(folder));
    }

    static ChatTemplate Parse(string source, string path)
    {
        try { return ChatTemplate.Parse(source); }
        catch (ChatTemplateException e) { throw new InvalidDataException($"{path}: {e.Message}", e); }
    }

    static JsonNode? ReadJson(string path)
    {
        try { return JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e); }
    }

    static string HashTokenizerFiles(string folder)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var name in new[] { HfTokenizer.TokenizerFile, HfTokenizer.VocabFile, HfTokenizer.MergesFile, SentencePieceTextTokenizer.ModelFile, ByteTokenizer.FileName })
            if (File.Exists(Path.Combine(folder, name)))
            {
                hash.AppendData(System.Text.Encoding.UTF8.GetBytes(name + "\n"));
                hash.AppendData(File.ReadAllBytes(Path.Combine(folder, name)));
            }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}
