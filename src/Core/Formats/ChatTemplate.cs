using System.Text;

namespace AdapterService.Core.Formats;

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
        var text = new StringBuilder();
        switch (format)
        {
            case ChatFormat.ChatML:
                foreach (var turn in turns) text.Append("<|im_start|>").Append(turn.Role).Append('\n').Append(turn.Content).Append("<|im_end|>\n");
                if (addGenerationPrompt) text.Append("<|im_start|>assistant\n");
                break;
            case ChatFormat.Llama3:
                text.Append("<|begin_of_text|>");
                // Llama 3's template trims each message's content.
                foreach (var turn in turns)
                    text.Append("<|start_header_id|>").Append(turn.Role).Append("<|end_header_id|>\n\n").Append(turn.Content.Trim()).Append("<|eot_id|>");
                if (addGenerationPrompt) text.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(format), format, "unknown chat format");
        }
        return text.ToString();
    }
}
