using System.Text.Json;
using AdapterService.Core.Evals;
using AdapterService.Core.Grading;

namespace AdapterService.Core.Tests.Evals;

/// <summary>
/// An eval's testing criteria and a run's data source as requests give them: names, pass thresholds, the messages an
/// item renders to, and every error naming its field before anything runs.
/// </summary>
public sealed class EvalRequestTests
{
    static JsonElement Json(string json) => JsonDocument.Parse(json).RootElement;

    const string Criteria = """
        [{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"},
         {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.5}]
        """;

    static string Source(string extra = "", string content = """[{"item": {"question": "Say red.", "answer": "Red."}}]""") => $$$"""
        {"type": "completions", "input_messages": {"type": "template", "template": [{"role": "developer", "content": "Be short."}, {"role": "user", "content": "{{item.question}}"}]},
         "source": {"type": "file_content", "content": {{{content}}}} {{{extra}}}}
        """;

    [Fact]
    public async Task CriteriaAreNamedAndPassAtTheirThreshold()
    {
        var criteria = EvalCriteria.Parse(Json(Criteria));
        Assert.Equal(["exact", "text_similarity-1"], criteria.Select(c => c.Name));
        Assert.True(criteria[0].Passes(1));
        Assert.False(criteria[0].Passes(0));
        // fuzzy_match("Red", "Red.") = 2·3 / 7 ≈ 0.857 ≥ 0.5.
        double grade = await criteria[1].Grader.GradeAsync(new GradingInput(Json("""{"answer": "Red."}"""), "Red"));
        Assert.Equal(6.0 / 7, grade, 12);
        Assert.True(criteria[1].Passes(grade));
        Assert.False(criteria[1].Passes(0.49));
    }

    [Theory]
    [InlineData("""[{"type": "regex_check", "name": "x"}]""", "testing_criteria[0].type")]
    [InlineData("""[{"type": "python", "name": "x", "source": ""}]""", "testing_criteria[0].type")]
    [InlineData("""[{"type": "string_check", "name": "a", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"}, {"type": "string_check", "name": "a", "input": "{{sample.output_text}}", "reference": "y", "operation": "eq"}]""", "testing_criteria[1].name")]
    [InlineData("""[]""", "testing_criteria")]
    [InlineData("""[{"type": "text_similarity", "name": "s", "input": "{{sample.output_text}}", "reference": "x", "evaluation_metric": "fuzzy_match", "pass_threshold": "high"}]""", "testing_criteria[0].pass_threshold")]
    public void BadCriteriaNameTheirField(string json, string param) =>
        Assert.Equal(param, Assert.Throws<EvalException>(() => EvalCriteria.Parse(Json(json))).Param);

    [Fact]
    public void ATemplateRendersEachItemsMessages()
    {
        var source = EvalDataSource.Parse(Json(Source(""", "model": "m", "models": ["n"], "sampling_params": {"temperature": 0.5, "max_completion_tokens": 7, "seed": 3}""")));
        Assert.Equal(["m", "n"], source.Models);
        Assert.Equal(["data_source.model", "data_source.models[0]"], source.ModelParams);
        Assert.Equal(new JudgeSampling(0.5, null, 7, 3), source.Sampling);
        var messages = source.MessagesFor(Json("""{"question": "Say red."}"""));
        Assert.Equal([new JudgeMessage("developer", "Be short."), new JudgeMessage("user", "Say red.")], messages);
    }

    [Theory]
    [InlineData("", "data_source.model")]
    [InlineData(""", "model": "m", "models": ["m"]""", "data_source.models")]
    [InlineData(""", "model": "m", "sampling_params": {"max_completion_tokens": 0}""", "data_source.sampling_params.max_completion_tokens")]
    [InlineData(""", "model": "m", "sampling_params": {"temperature": 3}""", "data_source.sampling_params.temperature")]
    public void BadDataSourcesNameTheirField(string extra, string param) =>
        Assert.Equal(param, Assert.Throws<EvalException>(() => EvalDataSource.Parse(Json(Source(extra)))).Param);

    [Fact]
    public void InputMessagesMayNotUseTheSample()
    {
        var json = Source(""", "model": "m" """).Replace("{{item.question}}", "{{sample.output_text}}");
        Assert.Equal("data_source.input_messages.template[1].content", Assert.Throws<EvalException>(() => EvalDataSource.Parse(Json(json))).Param);
    }

    [Fact]
    public async Task AnItemMissingAFieldIsNamedBeforeAnythingRuns()
    {
        var criteria = EvalCriteria.Parse(Json(Criteria));
        var good = EvalDataSource.Parse(Json(Source(""", "model": "m" """)));
        Assert.Single(await good.ItemsAsync(null!, null!, criteria, ["question"], 10, CancellationToken.None));

        var noAnswer = EvalDataSource.Parse(Json(Source(""", "model": "m" """, """[{"item": {"question": "a", "answer": "b"}}, {"item": {"question": "c"}}]""")));
        var e = await Assert.ThrowsAsync<EvalException>(() => noAnswer.ItemsAsync(null!, null!, criteria, [], 10, CancellationToken.None));
        Assert.Equal("data_source.source.content[1].item.answer", e.Param);
        Assert.Contains("testing_criteria[0].reference", e.Message);

        var schema = await Assert.ThrowsAsync<EvalException>(() => good.ItemsAsync(null!, null!, criteria, ["topic"], 10, CancellationToken.None));
        Assert.Equal("data_source.source.content[0].item.topic", schema.Param);

        var tooMany = await Assert.ThrowsAsync<EvalException>(() => noAnswer.ItemsAsync(null!, null!, [], [], 1, CancellationToken.None));
        Assert.Equal("data_source.source", tooMany.Param);
    }
}
