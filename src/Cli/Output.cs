using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;

namespace AdapterService.Cli;

/// <summary>
/// Where results go. Three modes: <c>--json</c> prints the API's JSON (one document, or one JSON object a line for
/// streams); a terminal gets Spectre.Console's tables and live progress; redirected output gets plain lines, columns
/// separated by tabs, with no colours or cursor movement.
/// </summary>
public sealed class Output(bool json, IAnsiConsole console)
{
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public bool Json { get; } = json;

    /// <summary>Rich output: stdout is a terminal and --json is off.</summary>
    public bool Rich { get; } = !json && !Console.IsOutputRedirected;

    public IAnsiConsole Terminal { get; } = console;

    public static Output Create(bool json) => new(json, AnsiConsole.Console);

    public void WriteJson(JsonNode node) => Console.Out.WriteLine(node.ToJsonString(Indented));

    /// <summary>One JSON object on one line, for streams (<c>jobs watch --json</c>, <c>chat --json</c>).</summary>
    public void WriteJsonLine(JsonNode node) { Console.Out.WriteLine(node.ToJsonString()); Console.Out.Flush(); }

    public void Line(string plain, string? markup = null)
    {
        if (Rich) Terminal.MarkupLine(markup ?? Markup.Escape(plain));
        else Console.Out.WriteLine(plain);
    }

    /// <summary>A table: Spectre's in a terminal, tab-separated lines with a header otherwise.</summary>
    public void Table(string[] headers, IEnumerable<string[]> rows)
    {
        if (Rich)
        {
            var table = new Table().Border(TableBorder.Rounded);
            foreach (var header in headers) table.AddColumn(new TableColumn($"[bold]{Markup.Escape(header)}[/]"));
            table.Columns[0].NoWrap();   // ids stay whole, to be copied
            foreach (var row in rows) table.AddRow(row.Select(cell => Markup.Escape(cell)).ToArray());
            Terminal.Write(table);
            return;
        }
        Console.Out.WriteLine(string.Join('\t', headers));
        foreach (var row in rows) Console.Out.WriteLine(string.Join('\t', row));
    }

    /// <summary>An object's fields, one a line (nested objects as compact JSON).</summary>
    public void Fields(JsonObject node, params string[] names)
    {
        var rows = names.Where(node.ContainsKey).Select(name => new[] { name, Text(node[name]) }).ToList();
        if (Rich)
        {
            var grid = new Grid().AddColumn(new GridColumn().NoWrap()).AddColumn();
            foreach (var row in rows) grid.AddRow($"[grey]{row[0]}[/]", Markup.Escape(row[1]));
            Terminal.Write(grid);
            return;
        }
        foreach (var row in rows) Console.Out.WriteLine($"{row[0]}\t{row[1]}");
    }

    public static string Text(JsonNode? node) => node switch
    {
        null => "-",
        JsonValue value when value.TryGetValue<string>(out var s) => s,
        JsonValue value => value.ToJsonString(),
        _ => node.ToJsonString(),
    };

    /// <summary>A Unix time as UTC, the way the API's <c>created_at</c> fields hold it.</summary>
    public static string Time(JsonNode? node) =>
        node is JsonValue value && value.TryGetValue<long>(out var seconds)
            ? DateTimeOffset.FromUnixTimeSeconds(seconds).UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss'Z'") : "-";

    public static void Error(string message)
    {
        if (Console.IsErrorRedirected) Console.Error.WriteLine($"error: {message}");
        else AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) }).MarkupLine($"[red]error:[/] {Markup.Escape(message)}");
    }
}
