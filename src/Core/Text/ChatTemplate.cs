using System.Text;

namespace AdapterService.Core.Text;

/// <summary>A chat message to render: role (system, user, assistant) and content.</summary>
public sealed record ChatTurn(string Role, string Content);

/// <summary>The chat formats current open models are trained on.</summary>
public enum ChatFormat
{
    /// <summary><c>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n</c> (Qwen, many fine-tunes).</summary>
    ChatML,
    /// <summary><c>&lt;|begin_of_text|&gt;&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\ncontent&lt;|eot_id|&gt;</c> (Llama 3 Instruct).</summary>
    Llama3,
}

/// <summary>
/// Renders conversations as the Jinja chat templates of the models do (the same text, so the tokenizer sees the model's
/// special tokens), without a Jinja engine.
/// </summary>
public static class ChatTemplate
{
    /// <summary>The format whose special tokens the tokenizer has, or null when it has neither.</summary>
    public static ChatFormat? Detect(HfTokenizer tokenizer) =>
        tokenizer.SpecialTokens.ContainsKey("<|start_header_id|>") && tokenizer.SpecialTokens.ContainsKey("<|eot_id|>") ? ChatFormat.Llama3
        : tokenizer.SpecialTokens.ContainsKey("<|im_start|>") && tokenizer.SpecialTokens.ContainsKey("<|im_end|>") ? ChatFormat.ChatML
        : null;

    /// <summary>
    /// The prompt text for <paramref name="turns"/>; with <paramref name="addGenerationPrompt"/> it ends with the assistant's
    /// header, so the model's next tokens are its answer. Llama 3's text starts with its begin-of-text token, as its template's does.
    /// </summary>
    public static string Render(IEnumerable<ChatTurn> turns, ChatFormat format, bool addGenerationPrompt = true)
    {
        var text = new StringBuilder(Start(format));
        foreach (var turn in turns) text.Append(Header(format, turn.Role)).Append(Content(format, turn.Content)).Append(EndOfTurn(format));
        if (addGenerationPrompt) text.Append(Header(format, "assistant"));
        return text.ToString();
    }

    /// <summary>What the text starts with: Llama 3's begin-of-text token, as its template writes it.</summary>
    public static string Start(ChatFormat format) => format == ChatFormat.Llama3 ? "<|begin_of_text|>" : "";

    public static string Header(ChatFormat format, string role) => format switch
    {
        ChatFormat.ChatML => $"<|im_start|>{role}\n",
        ChatFormat.Llama3 => $"<|start_header_id|>{role}<|end_header_id|>\n\n",
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, "unknown chat format"),
    };

    /// <summary>A message's content as the template writes it (Llama 3's trims it).</summary>
    public static string Content(ChatFormat format, string content) => format == ChatFormat.Llama3 ? content.Trim() : content;

    public static string EndOfTurn(ChatFormat format) => format switch
    {
        ChatFormat.ChatML => "<|im_end|>\n",
        ChatFormat.Llama3 => "<|eot_id|>",
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, "unknown chat format"),
    };

    /// <summary>The special token that ends an assistant's turn.</summary>
    public static string EndToken(ChatFormat format) => format == ChatFormat.ChatML ? "<|im_end|>" : "<|eot_id|>";
}
