using System.CommandLine;
using System.Text;
using System.Text.Json.Nodes;
using OpenAI.Chat;
using Spectre.Console;

namespace AdapterService.Cli;

/// <summary>
/// <c>chat MODEL</c>: a conversation streamed token by token through the SDK's chat client. From a terminal it is a
/// REPL that keeps the conversation; with stdin redirected every line is a prompt of its own, answered on its line(s).
/// </summary>
public static class ChatCommand
{
    public static Command Create(Runner run)
    {
        var model = new Argument<string>("model") { Description = "A base or fine-tuned model" };
        var system = new Option<string?>("--system", "-s") { Description = "A system message to start every conversation with" };
        var temperature = new Option<float?>("--temperature") { Description = "Sampling temperature (0 answers greedily)" };
        var maxTokens = new Option<int?>("--max-tokens") { Description = "Most tokens an answer may have" };
        var chat = new Command("chat", "Chat with a model: a REPL in a terminal, one prompt a line from a pipe") { model, system, temperature, maxTokens };
        chat.SetAction(run(async (c, cancel) =>
        {
            var client = c.Client.OpenAI.GetChatClient(c.Get(model));
            var options = new ChatCompletionOptions { Temperature = c.Get(temperature), MaxOutputTokenCount = c.Get(maxTokens) };
            List<ChatMessage> Start() => c.Get(system) is { } s ? [new SystemChatMessage(s)] : [];
            return Console.IsInputRedirected
                ? await PipeAsync(c.Output, client, options, Start, cancel)
                : await ReplAsync(c.Output, c.Get(model), client, options, Start, cancel);
        }));
        return chat;
    }

    static async Task<int> PipeAsync(Output output, ChatClient client, ChatCompletionOptions options, Func<List<ChatMessage>> start, CancellationToken cancel)
    {
        while (await Console.In.ReadLineAsync(cancel) is { } line)
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            var messages = start();
            messages.Add(new UserChatMessage(line));
            var (answer, finish) = await StreamAsync(client, messages, options, output.Json ? null : Console.Out, cancel);
            if (output.Json) output.WriteJsonLine(new JsonObject { ["prompt"] = line, ["content"] = answer, ["finish_reason"] = finish });
            else Console.Out.WriteLine();
            Console.Out.Flush();
        }
        return 0;
    }

    static async Task<int> ReplAsync(Output output, string model, ChatClient client, ChatCompletionOptions options, Func<List<ChatMessage>> start, CancellationToken cancel)
    {
        var terminal = output.Terminal;
        terminal.MarkupLine($"Chatting with [bold]{Markup.Escape(model)}[/]. [grey]/reset forgets the conversation; /exit, Ctrl+D or an empty line ends.[/]");
        var messages = start();
        while (true)
        {
            terminal.Markup("[green]>[/] ");
            var line = await Console.In.ReadLineAsync(cancel);
            if (line is null || line.Trim() is "" or "/exit" or "/quit") return 0;
            if (line.Trim() == "/reset") { messages = start(); terminal.MarkupLine("[grey](conversation cleared)[/]"); continue; }
            messages.Add(new UserChatMessage(line));
            var (answer, finish) = await StreamAsync(client, messages, options, Console.Out, cancel);
            Console.Out.WriteLine();
            if (finish == "length") terminal.MarkupLine("[grey](cut at the token limit)[/]");
            messages.Add(new AssistantChatMessage(answer));
        }
    }

    /// <summary>Streams one answer, writing each token as it comes; answers the whole text and the finish reason.</summary>
    static async Task<(string Answer, string? Finish)> StreamAsync(ChatClient client, List<ChatMessage> messages, ChatCompletionOptions options, TextWriter? echo, CancellationToken cancel)
    {
        var answer = new StringBuilder();
        string? finish = null;
        await foreach (var update in client.CompleteChatStreamingAsync(messages, options, cancel))
        {
            foreach (var part in update.ContentUpdate)
            {
                answer.Append(part.Text);
                echo?.Write(part.Text);
                echo?.Flush();
            }
            if (update.FinishReason is { } reason) finish = reason switch
            {
                ChatFinishReason.Stop => "stop", ChatFinishReason.Length => "length", ChatFinishReason.ContentFilter => "content_filter",
                ChatFinishReason.ToolCalls => "tool_calls", _ => reason.ToString().ToLowerInvariant(),
            };
        }
        return (answer.ToString(), finish);
    }
}
