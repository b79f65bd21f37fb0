using System.Text.Json;
using AdapterService.Core.Grading;
using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Evals;

/// <summary>One message of <c>input_messages.template</c>: its role and its content, a template over the item.</summary>
public sealed record EvalMessage(string Role, Template Content);

/// <summary>
/// A run's <c>data_source</c> of type <c>completions</c> (OpenAI's shape): the model (or, our extension, <c>models</c>, one
/// run each), <c>input_messages</c> (a template of messages with <c>{{item.field}}</c> references, or an
/// <c>item_reference</c> to messages inside each item), <c>sampling_params</c> and <c>source</c> (<c>file_content</c>, the
/// items inline, or <c>file_id</c>, a JSONL file of <c>{"item": {...}}</c> lines).
/// </summary>
public sealed record EvalDataSource(
    IReadOnlyList<string> Models, IReadOnlyList<EvalMessage>? Template, TemplatePath? ItemReference, JudgeSampling Sampling,
    JsonElement? Content, string? FileId)
{
    public const string Path = "data_source";
    /// <summary>The request field naming each of <see cref="Models"/> (<c>data_source.model</c>, <c>data_source.models[i]</c>).</summary>
    public IReadOnlyList<string> ModelParams { get; init; } = [];
    /// <summary>The most models one call may name (<c>data_source.models</c>).</summary>
    public const int MaxModels = 8;
    static readonly string[] Roles = ["system", "developer", "user", "assistant"];

    /// <summary>Reads <paramref name="json"/>; <paramref name="needsModel"/> is false where the model is implied (a job's checkpoints).</summary>
    public static EvalDataSource Parse(JsonElement json, bool needsModel = true, string path = Path)
    {
        if (json.ValueKind != JsonValueKind.Object) throw new EvalException($"Missing required parameter: '{path}'.", path);
        string type = String(json, path, "type");
        if (type != "completions")
            throw new EvalException($"{path}.type '{type}' is not supported; this service runs 'completions' data sources.", path + ".type", "unsupported_data_source");

        var models = new List<string>();
        var modelParams = new List<string>();
        if (OptionalString(json, path, "model") is { } model) (models, modelParams) = ([model], [path + ".model"]);
        if (json.TryGetProperty("models", out var many) && many.ValueKind != JsonValueKind.Null)
        {
            if (many.ValueKind != JsonValueKind.Array || many.EnumerateArray().Any(m => m.ValueKind != JsonValueKind.String || m.GetString() is null or ""))
                throw new EvalException($"{path}.models must be an array of model names.", path + ".models");
            models.AddRange(many.EnumerateArray().Select(m => m.GetString()!));
            modelParams.AddRange(Enumerable.Range(0, many.GetArrayLength()).Select(i => $"{path}.models[{i}]"));
        }
        if (needsModel && models.Count == 0) throw new EvalException($"Missing required parameter: '{path}.model' (or '{path}.models').", path + ".model");
        if (!needsModel && models.Count > 0) throw new EvalException($"{path}.model is not given here: the job's checkpoints are the models.", path + ".model");
        if (models.Count > MaxModels) throw new EvalException($"{path}.models names {models.Count} models; at most {MaxModels} may run in one call.", path + ".models");
        if (models.Distinct().Count() != models.Count) throw new EvalException($"{path}.models names a model twice.", path + ".models");

        var (template, reference) = ReadInputMessages(json, path);
        return new EvalDataSource(models, template, reference, ReadSampling(json, path), ReadSource(json, path, out var fileId), fileId) { ModelParams = modelParams };
    }

    static (IReadOnlyList<EvalMessage>?, TemplatePath?) ReadInputMessages(JsonElement json, string path)
    {
        string at = path + ".input_messages";
        if (!json.TryGetProperty("input_messages", out var input) || input.ValueKind != JsonValueKind.Object)
            throw new EvalException($"Missing required parameter: '{at}'.", at);
        string type = String(input, at, "type");
        if (type == "item_reference")
        {
            string reference = String(input, at, "item_reference");
            var path_ = TemplatePath.Parse(reference.Trim().TrimStart('{').TrimEnd('}').Trim());
            if (path_ is not { Namespace: "item" })
                throw new EvalException($"{at}.item_reference must name messages inside the item, e.g. 'item.messages'.", at + ".item_reference");
            return (null, path_);
        }
        if (type != "template") throw new EvalException($"{at}.type must be 'template' or 'item_reference'.", at + ".type");
        if (!input.TryGetProperty("template", out var list) || list.ValueKind != JsonValueKind.Array || list.GetArrayLength() == 0)
            throw new EvalException($"{at}.template must be a non-empty array of messages.", at + ".template");
        var messages = new List<EvalMessage>();
        int i = 0;
        foreach (var message in list.EnumerateArray())
        {
            string m = $"{at}.template[{i++}]";
            if (message.ValueKind != JsonValueKind.Object) throw new EvalException($"{m} must be a message object.", m);
            string role = String(message, m, "role");
            if (!Roles.Contains(role)) throw new EvalException($"{m}.role is '{role}'; one of {string.Join(", ", Roles)} is needed.", m + ".role");
            string content = ContentText(message, m);
            Grading.Template parsed;
            try { parsed = Grading.Template.Parse(content, m + ".content"); }
            catch (GraderException e) { throw new EvalException(e.Message, e.Param); }
            if (parsed.HasSampleReferences)
                throw new EvalException($"{m}.content uses sample.*: the sample does not exist before the model answers; use item.* here.", m + ".content");
            messages.Add(new EvalMessage(role, parsed));
        }
        return (messages, null);
    }

    /// <summary>A message's content: a string, or one <c>input_text</c> part (<c>{"type": "input_text", "text": ...}</c>).</summary>
    static string ContentText(JsonElement message, string path)
    {
        if (!message.TryGetProperty("content", out var content)) throw new EvalException($"Missing required parameter: '{path}.content'.", path + ".content");
        if (content.ValueKind == JsonValueKind.String) return content.GetString()!;
        if (content.ValueKind == JsonValueKind.Object && content.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String
            && t.GetString() is "input_text" or "output_text" && content.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String)
            return text.GetString()!;
        throw new EvalException($"{path}.content must be a string or an input_text object.", path + ".content");
    }

    static JudgeSampling ReadSampling(JsonElement json, string path)
    {
        if (!json.TryGetProperty("sampling_params", out var s) || s.ValueKind == JsonValueKind.Null) return new JudgeSampling(null, null, null, null);
        string at = path + ".sampling_params";
        if (s.ValueKind != JsonValueKind.Object) throw new EvalException($"{at} must be an object.", at);
        double? temperature = Number(s, at, "temperature"), topP = Number(s, at, "top_p");
        double? maxTokens = Number(s, at, "max_completion_tokens") ?? Number(s, at, "max_tokens"), seed = Number(s, at, "seed");
        if (temperature is < 0 or > 2) throw new EvalException($"{at}.temperature must be between 0 and 2.", at + ".temperature");
        if (topP is <= 0 or > 1) throw new EvalException($"{at}.top_p must be in (0, 1].", at + ".top_p");
        if (maxTokens is { } m && (m < 1 || m > 4096 || m != Math.Floor(m)))
            throw new EvalException($"{at}.max_completion_tokens must be an integer from 1 to 4096.", at + ".max_completion_tokens");
        if (seed is { } d && d != Math.Floor(d)) throw new EvalException($"{at}.seed must be an integer.", at + ".seed");
        return new JudgeSampling(temperature, topP, (int?)maxTokens, (long?)seed);
    }

    static JsonElement? ReadSource(JsonElement json, string path, out string? fileId)
    {
        string at = path + ".source";
        fileId = null;
        if (!json.TryGetProperty("source", out var source) || source.ValueKind != JsonValueKind.Object)
            throw new EvalException($"Missing required parameter: '{at}'.", at);
        switch (String(source, at, "type"))
        {
            case "file_content":
                if (!source.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.Array || content.GetArrayLength() == 0)
                    throw new EvalException($"{at}.content must be a non-empty array of {{\"item\": {{...}}}} objects.", at + ".content");
                return content.Clone();
            case "file_id":
                fileId = String(source, at, "id");
                return null;
            case var other:
                throw new EvalException($"{at}.type '{other}' is not supported; use 'file_content' or 'file_id'.", at + ".type");
        }
    }

    /// <summary>Every item field the input messages and the criteria use (e.g. <c>item.answer</c>), each with where it is used.</summary>
    public IEnumerable<(TemplatePath Field, string UsedBy)> ItemFields(IEnumerable<EvalCriterion> criteria) =>
        (Template ?? []).SelectMany(m => m.Content.ItemPaths.Select(p => (p, m.Content.Param)))
            .Concat(ItemReference is { } r ? [(r, Path + ".input_messages.item_reference")] : [])
            .Concat(criteria.SelectMany(c => c.Grader.Templates.SelectMany(t => t.ItemPaths.Select(p => (p, t.Param)))));

    /// <summary>
    /// The items (each line's <c>item</c> object), checked before anything runs: each is an object with an <c>item</c>
    /// object that has every field the templates use and every property the eval's item schema requires. Errors name the
    /// content index or the file's line. At most <paramref name="maxItems"/> items.
    /// </summary>
    public async Task<IReadOnlyList<JsonElement>> ItemsAsync(ServiceDbContext db, IBlobStore blobs, IReadOnlyList<EvalCriterion> criteria,
        IReadOnlyList<string> requiredBySchema, int maxItems, CancellationToken cancel, string path = Path)
    {
        var rows = new List<(JsonElement Row, string Where, string Param)>();
        if (Content is { } content)
        {
            int i = 0;
            foreach (var row in content.EnumerateArray())
            {
                rows.Add((row, $"{path}.source.content[{i}]", $"{path}.source.content[{i}]"));
                i++;
            }
        }
        else
        {
            string param = path + ".source.id";
            var file = await db.Files.AsNoTracking().SingleOrDefaultAsync(f => f.Id == FileId, cancel)
                       ?? throw new EvalException($"No such file: {FileId}", param, "file_not_found", 404);
            int line = 0;
            foreach (var text in File.ReadLines(blobs.Resolve(file.BlobPath)))
            {
                line++;
                if (string.IsNullOrWhiteSpace(text)) continue;
                if (rows.Count >= maxItems) break;
                try { rows.Add((JsonDocument.Parse(text).RootElement.Clone(), $"line {line} of {FileId}", param)); }
                catch (JsonException) { throw new EvalException($"Line {line} of {FileId} is not valid JSON.", param, "invalid_file"); }
            }
            if (rows.Count == 0) throw new EvalException($"{FileId} holds no items.", param, "invalid_file");
        }
        if (rows.Count > maxItems) throw new EvalException($"The data source holds more than {maxItems} items, the most one run may score.", path + ".source");

        var fields = ItemFields(criteria).ToList();
        var items = new List<JsonElement>();
        foreach (var (row, where, param) in rows)
        {
            if (row.ValueKind != JsonValueKind.Object || !row.TryGetProperty("item", out var item) || item.ValueKind != JsonValueKind.Object)
                throw new EvalException($"{where} must be an object with an 'item' object.", param);
            if (requiredBySchema.FirstOrDefault(p => !item.TryGetProperty(p, out _)) is { } missingProperty)
                throw new EvalException($"{where}: the item lacks '{missingProperty}', which the eval's item_schema requires.", Content is null ? param : $"{param}.item.{missingProperty}");
            foreach (var (field, usedBy) in fields)
                if (!TemplatePath.Exists(item, field.Segments))
                    throw new EvalException($"{where}: the item has no field '{field.Text}', which {usedBy} uses.", Content is null ? param : $"{param}.{field.Text}");
            if (ItemReference is { } r && TemplatePath.Find(item, r.Segments) is not { ValueKind: JsonValueKind.Array })
                throw new EvalException($"{where}: '{r.Text}' must be an array of messages.", Content is null ? param : $"{param}.{r.Text}");
            items.Add(item.Clone());
        }
        return items;
    }

    /// <summary>The messages of one item: the template rendered, or the item's own messages.</summary>
    public IReadOnlyList<JudgeMessage> MessagesFor(JsonElement item)
    {
        var input = new GradingInput(item, "");
        if (Template is { } template) return [.. template.Select(m => new JudgeMessage(m.Role, m.Content.Render(input)))];
        var messages = TemplatePath.Find(item, ItemReference!.Segments)!.Value;
        return [.. messages.EnumerateArray().Select(m => new JudgeMessage(
            m.TryGetProperty("role", out var role) && role.ValueKind == JsonValueKind.String ? role.GetString()! : "user",
            m.TryGetProperty("content", out var content) ? content.ValueKind == JsonValueKind.String ? content.GetString()! : content.GetRawText() : ""))];
    }

    static string String(JsonElement json, string path, string key)
    {
        if (!json.TryGetProperty(key, out var value) || value.ValueKind == JsonValueKind.Null)
            throw new EvalException($"Missing required parameter: '{path}.{key}'.", $"{path}.{key}");
        return value.ValueKind == JsonValueKind.String ? value.GetString()! : throw new EvalException($"{path}.{key} must be a string.", $"{path}.{key}");
    }

    static string? OptionalString(JsonElement json, string path, string key) =>
        json.TryGetProperty(key, out var value) && value.ValueKind != JsonValueKind.Null ? String(json, path, key) : null;

    static double? Number(JsonElement json, string path, string key)
    {
        if (!json.TryGetProperty(key, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return value.ValueKind == JsonValueKind.Number && value.TryGetDouble(out var d) && double.IsFinite(d) ? d
            : throw new EvalException($"{path}.{key} must be a number.", $"{path}.{key}");
    }
}
