using System.Text;
using AdapterService.Core.Data;
using AdapterService.Core.Text;
using AdapterService.Core.Training;

namespace AdapterService.Core.Tests.Text;

/// <summary>How chat and completion examples become trained tokens through a template (docs/MODELS.md, "Training on chats").</summary>
public class ModelTextTests
{
    static readonly ModelText BuiltIn = ModelText.BuiltIn;
    static int[] Bytes(string text) => Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToArray();

    static ChatExample Chat(params (string Role, string Content, bool Train)[] messages) =>
        new(1, messages.Select(m => new ChatMessage(m.Role, m.Content, m.Train)).ToList());

    /// <summary>The ids whose loss is taken, as text of the byte tokenizer (special tokens as their names).</summary>
    static string Trained(TokenSequence s) => Text(s.Ids.Where((_, i) => s.Train[i]));

    static string Text(IEnumerable<int> ids) => string.Concat(ids.Select(id => id switch
    {
        ByteTokenizer.End => "<|end|>", ByteTokenizer.Assistant => "<|assistant|>", ByteTokenizer.User => "<|user|>",
        ByteTokenizer.System => "<|system|>", ByteTokenizer.Begin => "<|begin|>", _ => ((char)id).ToString(),
    }));

    [Fact]
    public void BuiltInChatsTrainOnTheAssistantsTextAndItsEndAsBefore()
    {
        var example = Chat(("system", "be brief", false), ("user", "hi", false), ("assistant", "hello", true));
        var sequence = Assert.Single(BuiltIn.EncodeExample(example, null));
        Assert.Equal([ByteTokenizer.Begin, ByteTokenizer.System, .. Bytes("be brief"), ByteTokenizer.End, ByteTokenizer.User, .. Bytes("hi"),
            ByteTokenizer.End, ByteTokenizer.Assistant, .. Bytes("hello"), ByteTokenizer.End], sequence.Ids);
        Assert.Equal("hello<|end|>", Trained(sequence));
        // The prompt a chat completion sends is the same text up to the assistant's header.
        Assert.Equal(sequence.Ids[..^6], BuiltIn.EncodeChat(ChatConversation.Of([("system", "be brief"), ("user", "hi")]), BuiltIn.Template!));
    }

    [Fact]
    public void AssistantTurnsWithWeightZeroAreContextOnly()
    {
        var example = Chat(("user", "a", false), ("assistant", "one", false), ("user", "b", false), ("assistant", "two", true));
        Assert.Equal("two<|end|>", Trained(Assert.Single(BuiltIn.EncodeExample(example, null))));
    }

    [Fact]
    public void CompletionsTrainOnTheCompletionAndAnEndId()
    {
        var sequence = Assert.Single(BuiltIn.EncodeExample(new CompletionExample(1, "Sky:", " blue"), null));
        Assert.Equal([ByteTokenizer.Begin, .. Bytes("Sky: blue"), ByteTokenizer.End], sequence.Ids);
        Assert.Equal(" blue<|end|>", Trained(sequence));
    }

    [Fact]
    public void GenerationBlocksMarkTheTrainedText()
    {
        // Only the answer inside the block is trained, not the header the template writes around it.
        var template = ChatTemplate.Parse("{% for m in messages %}{% if m.role == 'assistant' %}<|assistant|>{% generation %}{{ m.content }}<|end|>{% endgeneration %}"
                                          + "{% else %}<|user|>{{ m.content }}<|end|>{% endif %}{% endfor %}");
        var example = Chat(("user", "q", false), ("assistant", "first", true), ("user", "r", false), ("assistant", "second", true));
        var sequence = Assert.Single(BuiltIn.EncodeExample(example, template));
        Assert.Equal("first<|end|>second<|end|>", Trained(sequence));
        Assert.Throws<ChatTemplateException>(() => BuiltIn.EncodeExample(Chat(("user", "q", false), ("assistant", "a", true)),
            ChatTemplate.Parse("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}")));
    }

    [Fact]
    public void TurnsATemplateRewritesLaterAreTrainedAgainstTheirOwnPrompt()
    {
        // Like Qwen 3 dropping earlier reasoning: an assistant turn before the last is written shorter.
        var template = ChatTemplate.Parse("{% for m in messages %}<|{{ m.role }}|>"
                                          + "{% if m.role == 'assistant' and not loop.last %}{{ m.content.split('|')[-1] }}{% else %}{{ m.content }}{% endif %}<|end|>{% endfor %}"
                                          + "{% if add_generation_prompt %}<|assistant|>{% endif %}");
        var example = Chat(("user", "q", false), ("assistant", "think|first", true), ("user", "r", false), ("assistant", "think|second", true));
        var sequences = BuiltIn.EncodeExample(example, template);
        Assert.Equal(2, sequences.Count);
        // The whole conversation (earlier turn shortened, as context) trains the last turn ...
        Assert.Equal("<|user|>q<|end|><|assistant|>first<|end|><|user|>r<|end|><|assistant|>think|second<|end|>", Text(sequences[0].Ids));
        Assert.Equal("think|second<|end|>", Trained(sequences[0]));
        // ... and the first turn is its own sequence, with its reasoning, as the model writes it when it is the latest.
        Assert.Equal("<|user|>q<|end|><|assistant|>think|first<|end|>", Text(sequences[1].Ids));
        Assert.Equal("think|first<|end|>", Trained(sequences[1]));
    }

    [Fact]
    public void ExamplesLongerThanTheContextAreCutAndTheirLinesReported()
    {
        var file = new TrainingFile(TrainingFileFormat.PromptCompletion,
            [new CompletionExample(1, "a", "b"), new CompletionExample(2, "long prompt", new string('x', 40)), new CompletionExample(5, "c", "d")]);
        var tokenized = TrainingData.Tokenize(file, BuiltIn, null, contextLength: 16);
        Assert.Equal([2], tokenized.TruncatedLines);
        Assert.All(tokenized.Examples, e => Assert.True(e.Ids.Length <= 16));
        Assert.Contains("line(s) 2", tokenized.TruncationMessage("file-x", 16));
        Assert.Null(TrainingData.Tokenize(file, BuiltIn, null, contextLength: 100).TruncationMessage("file-x", 100));
    }
}
