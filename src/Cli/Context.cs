using System.CommandLine;

namespace AdapterService.Cli;

/// <summary>What a command's action gets: the API, where to print, and its parsed command line.</summary>
public sealed record Context(ServiceClient Client, Output Output, ParseResult Parse)
{
    public T Get<T>(Option<T> option) => Parse.GetValue(option)!;

    public T Get<T>(Argument<T> argument) => Parse.GetValue(argument)!;
}

public delegate Func<ParseResult, CancellationToken, Task<int>> Runner(Func<Context, CancellationToken, Task<int>> action);
