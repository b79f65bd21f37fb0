namespace AdapterService.Core.Text;

/// <summary>
/// Templates for model folders that ship none: the built-in models' own format, and the two formats this service
/// rendered before it read models' templates (ChatML, Llama 3), chosen, as then, by the special tokens the tokenizer has.
/// They keep such folders, and the adapters trained on them, answering as they did.
/// </summary>
public static class FallbackChatFormats
{
    /// <summary><c>&lt;|begin|&gt;</c>, then <c>&lt;|role|&gt;content&lt;|end|&gt;</c> per message (developer is system).</summary>
    public const string BuiltIn =
        "{{ bos_token }}{% for message in messages %}"
        + "{% set role = 'system' if message['role'] == 'developer' else message['role'] %}"
        + "{% if role not in ['system', 'user', 'assistant'] %}{{ raise_exception('the built-in models know the roles system, developer, user and assistant, not ' + role) }}{% endif %}"
        + "{{ '<|' + role + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
        + "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

    /// <summary><c>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n</c> (Qwen and many fine-tunes).</summary>
    public const string ChatML =
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
        + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    /// <summary>Llama 3 Instruct's header and end-of-turn tokens, the content trimmed.</summary>
    public const string Llama3 =
        "{{ '<|begin_of_text|>' }}{% for message in messages %}"
        + "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        + "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

    /// <summary>The fallback for <paramref name="tokenizer"/> with the id that ends its turns, or null when it has no chat format.</summary>
    public static (string Template, int EndId)? Find(ITextTokenizer tokenizer)
    {
        if (tokenizer is ByteTokenizer) return (BuiltIn, ByteTokenizer.End);
        if (Special(tokenizer, "<|start_header_id|>") is not null && Special(tokenizer, "<|eot_id|>") is { } eot) return (Llama3, eot);
        if (Special(tokenizer, "<|im_start|>") is not null && Special(tokenizer, "<|im_end|>") is { } end) return (ChatML, end);
        return null;
    }

    /// <summary>The id of <paramref name="token"/> when the tokenizer has it as one token of its own.</summary>
    static int? Special(ITextTokenizer tokenizer, string token) =>
        tokenizer.Encode(token, addSpecialTokens: false) is [var id] && tokenizer.IdToToken(id) == token ? id : null;
}
