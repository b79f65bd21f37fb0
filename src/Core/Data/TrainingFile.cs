using System.Buffers;
using System.Text.Json;
using System.Text.Unicode;

namespace AdapterService.Core.Data;

/// <summary>One chat turn; <see cref="Train"/> marks the assistant turns the loss is computed on.</summary>
public sealed record ChatMessage(string Role, string Content, bool Train);

/// <summary>One example of a training file; <see cref="Line"/> is its 1-based line, for error messages.</summary>
public abstract record TrainingExample(int Line);

public sealed record ChatExample(int Line, IReadOnlyList<ChatMessage> Messages) : TrainingExample(Line);

public sealed record CompletionExample(int Line, string Prompt, string Completion) : TrainingExample(Line);

/// <summary>
/// A preference pair (OpenAI's DPO format): the conversation so far (<see cref="Input"/>, nothing trained in it) and two
/// answers to it, the one preferred and the one not. Both are assistant messages with <c>Train</c> set.
/// </summary>
public sealed record PreferenceExample(int Line, IReadOnlyList<ChatMessage> Input, ChatMessage Preferred, ChatMessage NonPreferred) : TrainingExample(Line)
{
    /// <summary>The conversation ending in the preferred answer, and the one ending in the other.</summary>
    public (ChatExample Chosen, ChatExample Rejected) Chats => (new(Line, [.. Input, Preferred]), new(Line, [.. Input, NonPreferred]));
}

/// <summary>
/// A reinforcement fine-tuning prompt (OpenAI's RFT format): chat messages ending with a user message, for the model to
/// answer, and any other fields of the line, which graders read as <c>{{item.field}}</c>; <see cref="Item"/> is the whole line.
/// </summary>
public sealed record PromptExample(int Line, IReadOnlyList<ChatMessage> Messages, string Item) : TrainingExample(Line);

/// <summary>A labelled image for image classification (ViT bases), decoded to 8-bit grayscale (no pixels when parsed to be checked only).</summary>
public sealed record ImageExample(int Line, GrayImage Image, string Label) : TrainingExample(Line);

public enum TrainingFileFormat { Chat, PromptCompletion, Image, Preference, Reinforcement }

/// <summary>
/// How image lines are read. An upload checks every image (<see cref="KeepPixels"/> false: each PNG is inflated row by
/// row and dropped, only its size is kept); a worker keeps the pixels of images of <see cref="ImageSide"/>, its model's
/// size, and decodes no other (their lines keep their size and no pixels, which <c>ImageData.Read</c> refuses by line).
/// <see cref="MaxDecodedBytes"/> bounds the file's images' grayscale bytes together, whatever is kept.
/// </summary>
public sealed record TrainingFileOptions(bool KeepPixels = true, int? ImageSide = null, long MaxDecodedBytes = TrainingFileOptions.DefaultMaxDecodedBytes)
{
    public const long DefaultMaxDecodedBytes = 1L << 30;
}

/// <summary>A validated JSONL training file, following OpenAI's fine-tuning file rules.</summary>
public sealed record TrainingFile(TrainingFileFormat Format, IReadOnlyList<TrainingExample> Examples)
{
    /// <summary>Reads UTF-8 JSONL line by line and throws <see cref="TrainingFileException"/> for the first problem.</summary>
    public static TrainingFile Parse(Stream stream, TrainingFileOptions? options = null)
    {
        options ??= new TrainingFileOptions();
        var budget = new long[] { options.MaxDecodedBytes };   // shared by the lines' parsers
        var examples = new List<TrainingExample>();
        TrainingFileFormat? format = null;
        int number = 0;
        foreach (var raw in ReadLines(stream))
        {
            var bytes = raw.Trim(" \t\r"u8);
            if (++number == 1 && bytes.Span.StartsWith("\uFEFF"u8)) bytes = bytes[3..];
            if (bytes.IsEmpty) continue;
            var line = new LineParser(number, options, budget);
            var (lineFormat, example) = line.Parse(bytes);
            format ??= lineFormat;
            if (lineFormat != format)
                throw line.Fail($"mixes formats: this line is {Name(lineFormat)} but line {examples[0].Line} is {Name(format.Value)}");
            examples.Add(example);
        }
        return format is { } f ? new TrainingFile(f, examples) : throw new TrainingFileException(0, "The file contains no training examples");
    }

    static string Name(TrainingFileFormat format) => format switch
    {
        TrainingFileFormat.Chat => "chat", TrainingFileFormat.PromptCompletion => "prompt/completion", TrainingFileFormat.Preference => "preference",
        TrainingFileFormat.Reinforcement => "reinforcement (chat messages ending with a user message, no assistant answer)", _ => "labelled image",
    };

    /// <summary>The format's name in the file object's <c>format</c> field.</summary>
    public string FormatName => FormatNameOf(Format);

    public static string FormatNameOf(TrainingFileFormat format) =>
        format switch
        {
            TrainingFileFormat.Chat => "chat", TrainingFileFormat.PromptCompletion => "prompt_completion", TrainingFileFormat.Preference => "preference",
            TrainingFileFormat.Reinforcement => "reinforcement", _ => "image",
        };

    /// <summary>The format named <paramref name="name"/> (as <see cref="FormatNameOf"/> writes it), or null.</summary>
    public static TrainingFileFormat? FormatOf(string? name) =>
        Enum.GetValues<TrainingFileFormat>().Where(f => FormatNameOf(f) == name).Select(f => (TrainingFileFormat?)f).FirstOrDefault();

    /// <summary>Splits on '\n' as bytes, so invalid UTF-8 is caught on its own line rather than while decoding a buffer ahead.</summary>
    static IEnumerable<ReadOnlyMemory<byte>> ReadLines(Stream stream)
    {
        var pending = new ArrayBufferWriter<byte>();
        var buffer = new byte[1 << 16];
        int read;
        while ((read = stream.Read(buffer, 0, buffer.Length)) > 0)
        {
            int start = 0;
            for (int nl; (nl = Array.IndexOf(buffer, (byte)'\n', start, read - start)) >= 0; start = nl + 1)
            {
                pending.Write(buffer.AsSpan(start, nl - start));
                yield return pending.WrittenMemory;
                pending.ResetWrittenCount();
            }
            pending.Write(buffer.AsSpan(start, read - start));
        }
        if (pending.WrittenCount > 0) yield return pending.WrittenMemory;
    }

    readonly record struct LineParser(int Line, TrainingFileOptions Options, long[] Budget)
    {
        public TrainingFileException Fail(string message) => new(Line, message);

        public (TrainingFileFormat, TrainingExample) Parse(ReadOnlyMemory<byte> bytes)
        {
            if (!Utf8.IsValid(bytes.Span)) throw Fail("the line is not valid JSON: it contains bytes that are not valid UTF-8");
            JsonDocument doc;
            try { doc = JsonDocument.Parse(bytes); }
            catch (JsonException e) { throw Fail($"the line is not valid JSON (error at byte {e.BytePositionInLine + 1})"); }
            using (doc)
            {
                try { return Parse(doc.RootElement); }
                // JSON allows escapes of lone UTF-16 surrogates ("\ud800"), which no .NET string can be read from.
                catch (InvalidOperationException) { throw Fail("the line has a string with an unpaired surrogate escape (\\ud800-\\udfff)"); }
            }
        }

        (TrainingFileFormat, TrainingExample) Parse(JsonElement root)
        {
            if (root.ValueKind != JsonValueKind.Object) throw Fail($"the line must be a JSON object, got {Kind(root)}");
            if (root.TryGetProperty("input", out _) || root.TryGetProperty("preferred_output", out _) || root.TryGetProperty("non_preferred_output", out _))
                return (TrainingFileFormat.Preference, ParsePreference(root));
            if (root.TryGetProperty("messages", out var messages))
            {
                var chat = ParseChat(messages);
                // Ending with a user message, the line asks for an answer: a reinforcement prompt; its other fields are for graders.
                return chat.Messages[^1].Role == "user"
                    ? (TrainingFileFormat.Reinforcement, new PromptExample(Line, chat.Messages, root.GetRawText()))
                    : (TrainingFileFormat.Chat, chat);
            }
            if (root.TryGetProperty("prompt", out _) || root.TryGetProperty("completion", out _))
            {
                string prompt = String(root, "", "prompt"), completion = String(root, "", "completion");
                if (completion.Length == 0) throw Fail("completion must not be empty");
                return (TrainingFileFormat.PromptCompletion, new CompletionExample(Line, prompt, completion));
            }
            if (root.TryGetProperty("image", out _) || root.TryGetProperty("pixels", out _)) return (TrainingFileFormat.Image, ParseImage(root));
            throw Fail("expected \"messages\" (chat format), \"prompt\" and \"completion\" (prompt/completion format), \"image\" and \"label\" (image format) "
                       + "or \"input\", \"preferred_output\" and \"non_preferred_output\" (preference format)");
        }

        /// <summary><c>{"image": base64 PNG, "label": ...}</c>, or <c>{"pixels": base64 of side×side grayscale bytes, "label": ...}</c>.</summary>
        ImageExample ParseImage(JsonElement root)
        {
            string label = String(root, "", "label");
            if (label.Length == 0) throw Fail("label must not be empty");
            bool isPng = root.TryGetProperty("image", out _);
            if (isPng && root.TryGetProperty("pixels", out _)) throw Fail("give either image (PNG) or pixels (raw grayscale bytes), not both");
            string field = isPng ? "image" : "pixels";
            byte[] bytes;
            try { bytes = Convert.FromBase64String(String(root, "", field)); }
            catch (FormatException) { throw Fail($"{field} is not valid base64"); }
            if (isPng)
            {
                try
                {
                    var header = Png.ReadHeader(bytes);
                    Spend(header.GrayBytes);
                    if (Options.KeepPixels && (Options.ImageSide is not { } modelSide || header.Width == modelSide && header.Height == modelSide))
                        return new ImageExample(Line, Png.Decode(bytes), label);
                    if (!Options.KeepPixels) Png.Validate(bytes);
                    return new ImageExample(Line, new GrayImage(header.Width, header.Height, []), label);
                }
                catch (InvalidDataException e) { throw Fail($"image is not a supported PNG: {e.Message}"); }
            }
            int side = (int)Math.Round(Math.Sqrt(bytes.Length));
            if (bytes.Length == 0 || side * side != bytes.Length)
                throw Fail($"pixels holds {bytes.Length} bytes; it must be a square image of 8-bit grayscale bytes (e.g. 784 for 28×28)");
            Spend(bytes.Length);
            return new ImageExample(Line, new GrayImage(side, side, Options.KeepPixels ? bytes : []), label);
        }

        /// <summary>Takes an image's grayscale bytes from the file's decode budget, before any pixel is allocated.</summary>
        void Spend(long bytes)
        {
            if ((Budget[0] -= bytes) < 0)
                throw Fail($"the file's images decode to more than {Options.MaxDecodedBytes} bytes of pixels (the limit, Files:MaxDecodedImageBytes); split the file or use smaller images");
        }

        ChatExample ParseChat(JsonElement messages)
        {
            var result = Messages(messages, "messages", weights: true);
            if (result.Count == 0) throw Fail("messages must contain at least one message");
            if (result[^1].Role != "user" && !result.Any(m => m.Train && m.Content.Length > 0))
                throw Fail("no assistant message to train on: add an assistant message with non-empty content and a weight other than 0 (or end with a user message: a reinforcement prompt)");
            return new ChatExample(Line, result);
        }

        /// <summary>
        /// <c>{"input": {"messages": [...]}, "preferred_output": [assistant message], "non_preferred_output": [assistant message]}</c>:
        /// the input's messages are context (none trained, no weights), each output is one assistant message with content.
        /// </summary>
        PreferenceExample ParsePreference(JsonElement root)
        {
            var input = Get(root, "", "input");
            if (input.ValueKind != JsonValueKind.Object) throw Fail($"input must be an object, got {Kind(input)}");
            if (input.TryGetProperty("tools", out _)) throw Fail("input.tools: tool calls are not supported yet");
            var context = Messages(Get(input, "input.", "messages"), "input.messages", weights: false);
            if (context.Count == 0) throw Fail("input.messages must contain at least one message");
            var preferred = Output(root, "preferred_output");
            var nonPreferred = Output(root, "non_preferred_output");
            if (preferred.Content == nonPreferred.Content)
                throw Fail("preferred_output and non_preferred_output are the same answer: the pair prefers nothing");
            return new PreferenceExample(Line, context, preferred, nonPreferred);
        }

        /// <summary>An output of a preference pair: an array of exactly one assistant message with non-empty content.</summary>
        ChatMessage Output(JsonElement root, string key)
        {
            var output = Get(root, "", key);
            if (output.ValueKind != JsonValueKind.Array) throw Fail($"{key} must be an array with one assistant message, got {Kind(output)}");
            var messages = Messages(output, key, weights: false);
            if (messages.Count != 1) throw Fail($"{key} must hold exactly one assistant message, got {messages.Count}");
            if (messages[0].Role != "assistant") throw Fail($"{key}[0].role must be \"assistant\", got \"{messages[0].Role}\"");
            if (messages[0].Content.Length == 0) throw Fail($"{key}[0].content must not be empty");
            return messages[0] with { Train = true };
        }

        /// <summary>The messages of the array at <paramref name="at"/>, assistant ones marked trained (and, with <paramref name="weights"/>, by their weight).</summary>
        List<ChatMessage> Messages(JsonElement messages, string at, bool weights)
        {
            if (messages.ValueKind != JsonValueKind.Array) throw Fail($"{at} must be an array, got {Kind(messages)}");
            var result = new List<ChatMessage>();
            foreach (var message in messages.EnumerateArray())
            {
                string path = $"{at}[{result.Count}]";
                if (message.ValueKind != JsonValueKind.Object) throw Fail($"{path} must be an object, got {Kind(message)}");
                if (message.TryGetProperty("tool_calls", out _) || message.TryGetProperty("function_call", out _))
                    throw Fail($"{path} has tool calls; tool calls are not supported yet");
                string role = String(message, path + ".", "role") switch
                {
                    "system" or "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    "tool" or "function" => throw Fail($"{path}.role is a tool result; tool calls are not supported yet"),
                    var other => throw Fail($"{path}.role \"{other}\" is not one of system, user, assistant"),
                };
                bool train = weights && role == "assistant";
                if (message.TryGetProperty("weight", out var weight))
                {
                    if (!weights) throw Fail($"{path}.weight is not allowed here: a preference pair trains on its outputs only");
                    if (!train) throw Fail($"{path}.weight is only allowed on assistant messages");
                    if (weight.ValueKind != JsonValueKind.Number || !weight.TryGetDouble(out var w) || w is not (0 or 1))
                        throw Fail($"{path}.weight must be 0 or 1, got {weight.GetRawText()}");
                    train = w == 1;
                }
                result.Add(new ChatMessage(role, Content(Get(message, path + ".", "content"), path + ".content"), train));
            }
            return result;
        }

        /// <summary>Content is a string or an array of text parts, which are joined as-is.</summary>
        string Content(JsonElement content, string path)
        {
            if (content.ValueKind == JsonValueKind.String) return content.GetString()!;
            if (content.ValueKind != JsonValueKind.Array)
                throw Fail($"{path} must be a string or an array of text parts, got {Kind(content)}");
            var text = new System.Text.StringBuilder();
            int i = 0;
            foreach (var part in content.EnumerateArray())
            {
                string partPath = $"{path}[{i++}]";
                if (part.ValueKind != JsonValueKind.Object) throw Fail($"{partPath} must be an object, got {Kind(part)}");
                string type = String(part, partPath + ".", "type");
                if (type != "text") throw Fail($"{partPath}.type \"{type}\" is not supported; only \"text\" parts are");
                text.Append(String(part, partPath + ".", "text"));
            }
            return text.ToString();
        }

        JsonElement Get(JsonElement obj, string prefix, string key) =>
            obj.TryGetProperty(key, out var value) ? value : throw Fail($"{prefix}{key} is missing");

        string String(JsonElement obj, string prefix, string key)
        {
            var value = Get(obj, prefix, key);
            return value.ValueKind == JsonValueKind.String ? value.GetString()! : throw Fail($"{prefix}{key} must be a string, got {Kind(value)}");
        }

        static string Kind(JsonElement value) => value.ValueKind switch
        {
            JsonValueKind.Object => "an object",
            JsonValueKind.Array => "an array",
            JsonValueKind.String => "a string",
            JsonValueKind.Number => "a number",
            JsonValueKind.True or JsonValueKind.False => "a boolean",
            _ => "null",
        };
    }
}

/// <summary>A problem in a training file; <see cref="Line"/> is 1-based, or 0 for the file as a whole.</summary>
public sealed class TrainingFileException(int line, string message) : Exception(line > 0 ? $"Line {line}: {message}" : message)
{
    public int Line { get; } = line;
}
