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

/// <summary>A labelled image for image classification (ViT bases), decoded to 8-bit grayscale (no pixels when parsed to be checked only).</summary>
public sealed record ImageExample(int Line, GrayImage Image, string Label) : TrainingExample(Line);

public enum TrainingFileFormat { Chat, PromptCompletion, Image }

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
        TrainingFileFormat.Chat => "chat", TrainingFileFormat.PromptCompletion => "prompt/completion", _ => "labelled image",
    };

    /// <summary>The format's name in the file object's <c>format</c> field.</summary>
    public string FormatName => FormatNameOf(Format);

    public static string FormatNameOf(TrainingFileFormat format) =>
        format switch { TrainingFileFormat.Chat => "chat", TrainingFileFormat.PromptCompletion => "prompt_completion", _ => "image" };

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
            if (root.TryGetProperty("messages", out var messages)) return (TrainingFileFormat.Chat, ParseChat(messages));
            if (root.TryGetProperty("prompt", out _) || root.TryGetProperty("completion", out _))
            {
                string prompt = String(root, "", "prompt"), completion = String(root, "", "completion");
                if (completion.Length == 0) throw Fail("completion must not be empty");
                return (TrainingFileFormat.PromptCompletion, new CompletionExample(Line, prompt, completion));
            }
            if (root.TryGetProperty("image", out _) || root.TryGetProperty("pixels", out _)) return (TrainingFileFormat.Image, ParseImage(root));
            throw Fail("expected \"messages\" (chat format), \"prompt\" and \"completion\" (prompt/completion format) or \"image\" and \"label\" (image format)");
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
            if (messages.ValueKind != JsonValueKind.Array) throw Fail($"messages must be an array, got {Kind(messages)}");
            var result = new List<ChatMessage>();
            foreach (var message in messages.EnumerateArray())
            {
                string path = $"messages[{result.Count}]";
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
                bool train = role == "assistant";
                if (message.TryGetProperty("weight", out var weight))
                {
                    if (!train) throw Fail($"{path}.weight is only allowed on assistant messages");
                    if (weight.ValueKind != JsonValueKind.Number || !weight.TryGetDouble(out var w) || w is not (0 or 1))
                        throw Fail($"{path}.weight must be 0 or 1, got {weight.GetRawText()}");
                    train = w == 1;
                }
                result.Add(new ChatMessage(role, Content(Get(message, path + ".", "content"), path + ".content"), train));
            }
            if (result.Count == 0) throw Fail("messages must contain at least one message");
            if (!result.Any(m => m.Train && m.Content.Length > 0))
                throw Fail("no assistant message to train on: add an assistant message with non-empty content and a weight other than 0");
            return new ChatExample(Line, result);
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
