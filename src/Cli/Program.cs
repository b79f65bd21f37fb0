using System.ClientModel;
using System.CommandLine;
using AdapterService.Cli;

// `adapters`: the service's command-line client. Each command is one call (or a few) of the public HTTP API.
var json = new Option<bool>("--json") { Description = "Print the API's JSON (JSON lines for streams) instead of tables", Recursive = true };
var root = new RootCommand(
    "Command-line client of the adapter fine-tuning service. The service is at ADAPTERS_BASE_URL (default http://127.0.0.1:5080); " +
    "the API key is ADAPTERS_API_KEY, else OPENAI_API_KEY.") { json };
root.Subcommands.Add(FilesCommands.Create(Run));
root.Subcommands.Add(JobsCommands.Create(Run));
root.Subcommands.Add(ModelsCommands.Create(Run));
root.Subcommands.Add(AdaptersCommands.Create(Run));
root.Subcommands.Add(ChatCommand.Create(Run));
// System.CommandLine refuses a subcommand named as the program itself (its token table is keyed by name), so the
// adapters noun is `adapter`, and `adapters adapters …`, what a user of this tool types first, is read as it.
if (args is ["adapters", ..]) args[0] = "adapter";
return await root.Parse(args).InvokeAsync();

// Every command's action: the client and output made from the environment, and its errors printed as one line with exit code 1.
Func<ParseResult, CancellationToken, Task<int>> Run(Func<Context, CancellationToken, Task<int>> action) => async (parse, cancel) =>
{
    try
    {
        using var client = ServiceClient.FromEnvironment();
        try { return await action(new Context(client, Output.Create(parse.GetValue(json)), parse), cancel); }
        catch (ClientResultException e) { throw client.Error(e); }
        catch (HttpRequestException e) { throw client.Unreachable(e); }
    }
    catch (CliException e)
    {
        Output.Error(e.Message);
        return 1;
    }
    catch (OperationCanceledException) when (cancel.IsCancellationRequested)
    {
        return 130;   // Ctrl+C, as shells report SIGINT
    }
};
