using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Text;

namespace AdapterService.Api.Apis;

/// <summary>
/// The chat fields that /v1/chat/completions and /tokenize share (OpenAI's <c>messages</c> and <c>tools</c>, vLLM's
/// <c>chat_template</c> and <c>chat_template_kwargs</c>), checked and turned into what a template renders.
/// </summary>
public static class ChatPrompts
{
    static readonly string[] Roles = ["system", "developer", "user", "assistant", "tool"];
    // Message fields templates read; anything else a client sends is left out of the render.
    static readonly string[] PassedFields = ["name", "tool_calls", "tool_call_id", "reasoning_content", "reasoning"];

    /// <summary>The conversation to render; a wrong field throws <see cref="ArgumentException"/> naming it.</summary>
    public static ChatConversation Conversation(JsonElement? messages, JsonElement? tools, JsonElement? kwargs, string? chatTemplate)
    {
        if (messages is not { ValueKind: JsonValueKind.Array } list || list.GetArrayLength() == 0)
            throw new ArgumentException("messages must be a non-empty list.", "messages");
        if (chatTemplate is { Length: 0 or > FineTuningJobsApi.ChatTemplateLimit })
            throw new ArgumentException($"chat_template must be a template's name or its source of 1 to {FineTuningJobsApi.ChatTemplateLimit} characters.", "chat_template");
        var parsed = new List<JsonObject>();
        int i = 0;
        foreach (var m in list.EnumerateArray())
        {
            string path = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw new ArgumentException($"{path} must be an object.", path);
            string? role = m.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? r.GetString() : null;
            if (role is null || !Roles.Contains(role))
                throw new ArgumentException($"{path}.role must be one of {string.Join(", ", Roles)}.", $"{path}.role");
            var message = new JsonObject { ["role"] = role, ["content"] = Content(m, role, path) };
            foreach (var field in PassedFields)
                if (m.TryGetProperty(field, out var value) && value.ValueKind != JsonValueKind.Null) message[field] = JsonNode.Parse(value.GetRawText());
            parsed.Add(message);
        }
        if (tools is { ValueKind: not (JsonValueKind.Array or JsonValueKind.Null) }) throw new ArgumentException("tools must be a list of tool definitions.", "tools");
        if (kwargs is { ValueKind: not (JsonValueKind.Object or JsonValueKind.Null) })
            throw new ArgumentException("chat_template_kwargs must be an object of template variables.", "chat_template_kwargs");
        return new ChatConversation(parsed,
            tools is { ValueKind: JsonValueKind.Array } t ? JsonNode.Parse(t.GetRawText())!.AsArray() : null,
            kwargs is { ValueKind: JsonValueKind.Object } k ? JsonNode.Parse(k.GetRawText())!.AsObject() : null);
    }

    /// <summary>A string, or OpenAI's list of content parts, of which the text parts are joined; null for an assistant's tool calls.</summary>
    static string? Content(JsonElement message, string role, string path)
    {
        if (!message.TryGetProperty("content", out var content) || content.ValueKind == JsonValueKind.Null)
            return role == "assistant" && message.TryGetProperty("tool_calls", out _) ? null
                : throw new ArgumentException($"{path}.content must be a string or a list of text parts.", $"{path}.content");
        if (content.ValueKind == JsonValueKind.String) return content.GetString();
        if (content.ValueKind != JsonValueKind.Array) throw new ArgumentException($"{path}.content must be a string or a list of text parts.", $"{path}.content");
        var text = new StringBuilder();
        int k = 0;
        foreach (var part in content.EnumerateArray())
        {
            string partPath = $"{path}.content[{k++}]";
            if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var type) || type.GetString() != "text"
                || !part.TryGetProperty("text", out var value) || value.ValueKind != JsonValueKind.String)
                throw new ArgumentException($"{partPath} must be a text part ({{\"type\": \"text\", \"text\": \"…\"}}); this service reads text only.", partPath);
            text.Append(value.GetString());
        }
        return text.ToString();
    }

    /// <summary>Chat prompt ids through the model's text rules: the template a request names, else the fine-tuned model's, else the base's.</summary>
    public static List<int> Encode(ModelText text, ChatTemplate? fineTuned, ChatConversation chat, string? chatTemplate, bool addGenerationPrompt = true) =>
        text.EncodeChat(chat, text.ChooseTemplate(chatTemplate, fineTuned), addGenerationPrompt);
}
