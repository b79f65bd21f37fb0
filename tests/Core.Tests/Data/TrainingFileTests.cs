using System.Text;
using AdapterService.Core.Data;

namespace AdapterService.Core.Tests.Data;

public class TrainingFileTests
{
    static TrainingFile Parse(string text) => TrainingFile.Parse(new MemoryStream(Encoding.UTF8.GetBytes(text)));

    const string Chat = """{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}""";
    const string Completion = """{"prompt": "2+2=", "completion": "4"}""";

    [Fact]
    public void ParsesChatWithSystemTextPartsAndWeight()
    {
        var file = Parse("""
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}], "name": "ann"}, {"role": "assistant", "content": "draft", "weight": 0}, {"role": "developer", "content": "Retry."}, {"role": "assistant", "content": "Hello", "weight": 1}]}
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
            """);

        Assert.Equal(TrainingFileFormat.Chat, file.Format);
        Assert.Equal(2, file.Examples.Count);
        var first = Assert.IsType<ChatExample>(file.Examples[0]);
        Assert.Equal(1, first.Line);
        Assert.Equal(
            [new("system", "Be brief.", false), new("user", "Hi there", false), new("assistant", "draft", false),
             new("system", "Retry.", false), new ChatMessage("assistant", "Hello", true)],
            first.Messages);
        var second = Assert.IsType<ChatExample>(file.Examples[1]);
        Assert.Equal(2, second.Line);
        Assert.True(second.Messages[1].Train);   // no weight means the assistant turn is trained on
    }

    [Fact]
    public void ParsesPromptCompletion()
    {
        var file = Parse(Completion + "\n" + """{"prompt": "", "completion": " yes", "extra": 1}""" + "\n");

        Assert.Equal(TrainingFileFormat.PromptCompletion, file.Format);
        Assert.Equal([new CompletionExample(1, "2+2=", "4"), new CompletionExample(2, "", " yes")], file.Examples);
    }

    [Fact]
    public void ChatPromptsEndingWithAUserMessageAreReinforcementPromptsWithTheirLine()
    {
        const string line = """{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}], "answer": "Paris"}""";
        var file = Parse(line + "\n" + line);
        Assert.Equal(TrainingFileFormat.Reinforcement, file.Format);
        var prompt = Assert.IsType<PromptExample>(file.Examples[1]);
        Assert.Equal((2, "user", "Capital of France?"), (prompt.Line, prompt.Messages[^1].Role, prompt.Messages[^1].Content));
        Assert.Equal("Paris", System.Text.Json.JsonDocument.Parse(prompt.Item).RootElement.GetProperty("answer").GetString());
        AssertRejected(line + "\n" + Chat, 2, "mixes formats: this line is chat but line 1 is reinforcement");
    }

    [Fact]
    public void SkipsBlankLinesAndKeepsLineNumbers()
    {
        var file = Parse("\uFEFF" + Chat + "\r\n\r\n   \n\t\n" + Chat + "\r\n\n");

        Assert.Equal([1, 5], file.Examples.Select(e => e.Line));
    }

    [Theory]
    [InlineData("{\"messages\": [", 2, "is not valid JSON")]
    [InlineData("[1, 2]", 2, "must be a JSON object, got an array")]
    [InlineData("""{"text": "hi"}""", 2, "expected \"messages\"")]
    [InlineData("""{"messages": [{"role": "bot", "content": "x"}]}""", 2, "messages[0].role \"bot\" is not one of system, user, assistant")]
    [InlineData("""{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 5}]}""", 2, "messages[1].content must be a string or an array of text parts, got a number")]
    [InlineData("""{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}""", 2, "messages[0].content[0].type \"image_url\" is not supported")]
    [InlineData("""{"messages": [{"role": "user", "content": "a"}]}""", 2, "mixes formats: this line is reinforcement (chat messages ending with a user message, no assistant answer) but line 1 is chat")]
    [InlineData("""{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]}""", 2, "no assistant message to train on")]
    [InlineData("""{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}""", 2, "no assistant message to train on")]
    [InlineData("""{"messages": []}""", 2, "at least one message")]
    [InlineData("""{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 2}]}""", 2, "messages[1].weight must be 0 or 1, got 2")]
    [InlineData("""{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": "1"}]}""", 2, "messages[1].weight must be 0 or 1, got \"1\"")]
    [InlineData("""{"messages": [{"content": "a"}]}""", 2, "messages[0].role is missing")]
    [InlineData(Completion, 2, "mixes formats: this line is prompt/completion but line 1 is chat")]
    [InlineData("""{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null, "tool_calls": []}]}""", 2, "tool calls are not supported yet")]
    public void RejectsBadChatLine(string bad, int line, string phrase) => AssertRejected(Chat + "\n" + bad + "\n" + Chat, line, phrase);

    [Theory]
    [InlineData("""{"prompt": "a", "completion": ""}""", 3, "completion must not be empty")]
    [InlineData("""{"prompt": 1, "completion": "b"}""", 3, "prompt must be a string, got a number")]
    [InlineData("""{"completion": "b"}""", 3, "prompt is missing")]
    [InlineData(Chat, 3, "mixes formats: this line is chat but line 1 is prompt/completion")]
    public void RejectsBadCompletionLine(string bad, int line, string phrase) => AssertRejected(Completion + "\n\n" + bad, line, phrase);

    const string Preference = """{"input": {"messages": [{"role": "user", "content": "Capital of France?"}]}, "preferred_output": [{"role": "assistant", "content": "Paris"}], "non_preferred_output": [{"role": "assistant", "content": "Lyon"}]}""";

    [Fact]
    public void ParsesPreferencePairs()
    {
        var file = Parse(Preference + "\n" + """
            {"input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": [{"type": "text", "text": "c"}]}]}, "preferred_output": [{"role": "assistant", "content": "yes"}], "non_preferred_output": [{"role": "assistant", "content": "no"}]}
            """);

        Assert.Equal(TrainingFileFormat.Preference, file.Format);
        Assert.Equal("preference", file.FormatName);
        var first = Assert.IsType<PreferenceExample>(file.Examples[0]);
        Assert.Equal([new ChatMessage("user", "Capital of France?", false)], first.Input);
        Assert.Equal(new ChatMessage("assistant", "Paris", true), first.Preferred);
        Assert.Equal(new ChatMessage("assistant", "Lyon", true), first.NonPreferred);
        var second = Assert.IsType<PreferenceExample>(file.Examples[1]);
        Assert.Equal(2, second.Line);
        // The input's assistant turn is context, never trained; each side of the pair ends in its own answer.
        Assert.All(second.Input, m => Assert.False(m.Train));
        Assert.Equal(["b", "yes"], second.Chats.Chosen.Messages.Where(m => m.Role == "assistant").Select(m => m.Content));
        Assert.Equal([false, true], second.Chats.Rejected.Messages.Where(m => m.Role == "assistant").Select(m => m.Train));
    }

    [Theory]
    [InlineData("""{"input": {"messages": [{"role": "user", "content": "a"}]}, "preferred_output": [{"role": "assistant", "content": "b"}]}""", 2, "non_preferred_output is missing")]
    [InlineData("""{"preferred_output": [{"role": "assistant", "content": "b"}], "non_preferred_output": [{"role": "assistant", "content": "c"}]}""", 2, "input is missing")]
    [InlineData("""{"input": {"prompt": "a"}, "preferred_output": [{"role": "assistant", "content": "b"}], "non_preferred_output": [{"role": "assistant", "content": "c"}]}""", 2, "input.messages is missing")]
    [InlineData("""{"input": {"messages": []}, "preferred_output": [{"role": "assistant", "content": "b"}], "non_preferred_output": [{"role": "assistant", "content": "c"}]}""", 2, "input.messages must contain at least one message")]
    [InlineData("""{"input": {"messages": [{"role": "bot", "content": "a"}]}, "preferred_output": [{"role": "assistant", "content": "b"}], "non_preferred_output": [{"role": "assistant", "content": "c"}]}""", 2, "input.messages[0].role \"bot\" is not one of")]
    [InlineData("""{"input": {"messages": [{"role": "user", "content": "a"}]}, "preferred_output": {"role": "assistant", "content": "b"}, "non_preferred_output": [{"role": "assistant", "content": "c"}]}""", 2, "preferred_output must be an array with one assistant message, got an object")]
    [InlineData("""{"input": {"messages": [{"role": "user", "content": "a"}]}, "preferred_output": [{"role": "user", "content": "b"}], "non_preferred_output": [{"role": "assistant", "content": "c"}]}""", 2, "preferred_output[0].role must be \"assistant\"")]
    [InlineData("""{"input": {"messages": [{"role": "user", "content": "a"}]}, "preferred_output": [{"role": "assistant", "content": "b"}], "non_preferred_output": [{"role": "assistant", "content": ""}]}""", 2, "non_preferred_output[0].content must not be empty")]
    [InlineData("""{"input": {"messages": [{"role": "user", "content": "a"}]}, "preferred_output": [{"role": "assistant", "content": "b"}], "non_preferred_output": []}""", 2, "non_preferred_output must hold exactly one assistant message, got 0")]
    [InlineData("""{"input": {"messages": [{"role": "user", "content": "a"}]}, "preferred_output": [{"role": "assistant", "content": "b"}], "non_preferred_output": [{"role": "assistant", "content": 3}]}""", 2, "non_preferred_output[0].content must be a string")]
    [InlineData("""{"input": {"messages": [{"role": "user", "content": "a"}]}, "preferred_output": [{"role": "assistant", "content": "b"}], "non_preferred_output": [{"role": "assistant", "content": "b"}]}""", 2, "are the same answer")]
    [InlineData("""{"input": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x", "weight": 1}]}, "preferred_output": [{"role": "assistant", "content": "b"}], "non_preferred_output": [{"role": "assistant", "content": "c"}]}""", 2, "input.messages[1].weight is not allowed")]
    [InlineData(Chat, 2, "mixes formats: this line is chat but line 1 is preference")]
    public void RejectsBadPreferenceLine(string bad, int line, string phrase) => AssertRejected(Preference + "\n" + bad + "\n" + Preference, line, phrase);

    [Fact]
    public void RejectsInvalidUtf8OnItsOwnLine()
    {
        byte[] bytes = [.. Encoding.UTF8.GetBytes(Chat + "\n" + Chat + "\n{\"prompt\": \""), 0xC3, 0x28, .. "\"}\n"u8];
        var e = Assert.Throws<TrainingFileException>(() => TrainingFile.Parse(new MemoryStream(bytes)));

        Assert.Equal(3, e.Line);
        Assert.StartsWith("Line 3: ", e.Message);
        Assert.Contains("not valid UTF-8", e.Message);
    }

    [Fact]
    public void ReportsLinesAcrossReadBuffers()
    {
        // Lines longer than the 64 KiB read buffer must still be split and numbered correctly.
        string big = $$"""{"prompt": "{{new string('x', 100_000)}}", "completion": "y"}""";
        var e = Assert.Throws<TrainingFileException>(() => Parse(big + "\n" + big + "\n" + "oops"));

        Assert.Equal(3, e.Line);
        Assert.Contains("not valid JSON", e.Message);
        Assert.Equal(100_000, Assert.IsType<CompletionExample>(Parse(big + "\n" + big).Examples[1]).Prompt.Length);
    }

    [Theory]
    [InlineData("")]
    [InlineData("\n  \r\n\n")]
    public void RejectsFileWithoutExamples(string text)
    {
        var e = Assert.Throws<TrainingFileException>(() => Parse(text));

        Assert.Equal(0, e.Line);
        Assert.Equal("The file contains no training examples", e.Message);
    }

    static void AssertRejected(string text, int line, string phrase)
    {
        var e = Assert.Throws<TrainingFileException>(() => Parse(text));

        Assert.Equal(line, e.Line);
        Assert.StartsWith($"Line {line}: ", e.Message);
        Assert.Contains(phrase, e.Message);
    }
}
