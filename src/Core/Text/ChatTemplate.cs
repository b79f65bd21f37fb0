using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using AdapterService.Core.Text.Jinja;

namespace AdapterService.Core.Text;

/// <summary>
/// A conversation to render: the messages as the request (or training file) gave them — role, content and, where the
/// template knows them, <c>tool_calls</c>, <c>tool_call_id</c>, <c>reasoning_content</c> — the tool definitions, and the
/// extra variables a template reads (vLLM's <c>chat_template_kwargs</c>, such as Qwen 3's <c>enable_thinking</c>).
/// </summary>
public sealed record ChatConversation(IReadOnlyList<JsonObject> Messages, JsonArray? Tools = null, JsonObject? Kwargs = null)
{
    public ChatConversation Take(int count) => this with { Messages = Messages.Take(count).ToList() };

    /// <summary>A conversation of plain role/content messages.</summary>
    public static ChatConversation Of(IEnumerable<(string Role, string Content)> messages, JsonObject? kwargs = null) =>
        new(messages.Select(m => new JsonObject { ["role"] = m.Role, ["content"] = m.Content }).ToList(), null, kwargs);
}

/// <summary>A template that does not parse, or that refuses a conversation (<c>raise_exception</c>): the user's 400.</summary>
public sealed class ChatTemplateException(string message, bool raisedByTemplate = false) : Exception(message)
{
    /// <summary>The template's own <c>raise_exception</c> (it refuses the conversation), not a fault of the template.</summary>
    public bool RaisedByTemplate { get; } = raisedByTemplate;
}

/// <summary>
/// A model's Jinja chat template, rendered the way Hugging Face's <c>apply_chat_template</c> renders it: the variables
/// <c>messages</c>, <c>tools</c>, <c>add_generation_prompt</c>, the tokenizer's special-token strings, then the caller's
/// extra variables. Parsed once; each render is bounded in steps, output and time by the Jinja engine.
/// </summary>
public sealed class ChatTemplate
{
    readonly JinjaTemplate template;

    public string Source { get; }
    /// <summary>Hex SHA-256 of the source: what a fine-tuned model records of the template it was trained with.</summary>
    public string Sha256 { get; }

    ChatTemplate(string source, JinjaTemplate template) =>
        (Source, this.template, Sha256) = (source, template, Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(source))));

    public static ChatTemplate Parse(string source)
    {
        try { return new ChatTemplate(source, JinjaTemplate.Parse(source)); }
        catch (JinjaException e) { throw new ChatTemplateException($"the chat template does not parse: {e.Message}"); }
    }

    /// <summary>The prompt text and the spans of its <c>{% generation %}</c> blocks (empty when the template has none).</summary>
    public JinjaOutput Render(ChatConversation chat, ITextTokenizer tokenizer, bool addGenerationPrompt, TimeProvider? clock = null)
    {
        var variables = new Dictionary<string, object?>
        {
            ["messages"] = new JsonArray([.. chat.Messages.Select(m => m.DeepClone())]),
            ["add_generation_prompt"] = addGenerationPrompt,
            ["bos_token"] = tokenizer.BosToken ?? "",
            ["eos_token"] = tokenizer.EosToken ?? "",
        };
        if (chat.Tools is { } tools) variables["tools"] = tools.DeepClone();
        if (chat.Kwargs is { } kwargs)
            foreach (var (name, value) in kwargs) variables[name] = value?.DeepClone();
        try { return template.Render(variables, new JinjaRenderOptions { Clock = clock ?? TimeProvider.System }); }
        catch (JinjaException e) { throw new ChatTemplateException(e.IsRaisedByTemplate ? e.Message : $"the chat template failed: {e.Message}", e.IsRaisedByTemplate); }
    }
}
