using System.Text.Json;
using AdapterService.Core.Grading;

namespace AdapterService.Core.Tests.Grading;

/// <summary>
/// The grader library against values worked out by hand from the metrics' definitions (each test says how), and its
/// validation errors naming the JSON path.
/// </summary>
public sealed class GraderTests
{
    const string Root = "method.reinforcement.grader";

    static Grader Parse(string json) => Graders.Parse(JsonDocument.Parse(json).RootElement, Root);
    static JsonElement Item(string json) => JsonDocument.Parse(json).RootElement;
    static double Grade(Grader grader, string item, string output, IJudge? judge = null) =>
        grader.GradeAsync(new GradingInput(Item(item), output, judge)).GetAwaiter().GetResult();

    [Fact]
    public void FuzzyMatchIsTwiceTheCommonSubsequenceOverBothLengths()
    {
        // kitten / sitting: the longest common subsequence of characters is "ittn" (4): 2·4 / (6 + 7).
        Assert.Equal(8.0 / 13, TextMetrics.FuzzyMatch("kitten", "sitting"), 12);
        Assert.Equal(1, TextMetrics.FuzzyMatch("", ""));
        Assert.Equal(0, TextMetrics.FuzzyMatch("abc", "xyz"));
        Assert.Equal(1, TextMetrics.FuzzyMatch("same", "same"));
    }

    [Fact]
    public void BleuIsTheGeometricMeanOfClippedPrecisionsTimesTheBrevityPenalty()
    {
        // the cat sat on the mat / the cat is on the mat:
        //   1-grams 5/6 (the×2, cat, on, mat), 2-grams 3/5 (the cat, on the, the mat), 3-grams 1/4 (on the mat),
        //   4-grams 0/3 → smoothed 1/(2·3); equal lengths, no brevity penalty.
        Assert.Equal(Math.Pow(5.0 / 6 * 3 / 5 * 1 / 4 * 1 / 6, 0.25), TextMetrics.Bleu("the cat sat on the mat", "the cat is on the mat"), 12);
        // A two-token candidate: orders 1 and 2 only, both 1; brevity penalty exp(1 − 6/2).
        Assert.Equal(Math.Exp(-2), TextMetrics.Bleu("the cat", "the cat is on the mat"), 12);
        // Clipping: "the" six times matches the reference's two only; 1-gram order alone (one token types) → 2/6,
        // every higher order has no match ("the the" is not in the reference): 1/2·5, 1/4·4, 1/8·3.
        Assert.Equal(Math.Pow(2.0 / 6 * (1.0 / 10) * (1.0 / 16) * (1.0 / 24), 0.25), TextMetrics.Bleu("the the the the the the", "the cat is on the mat"), 12);
        Assert.Equal(1, TextMetrics.Bleu("Hello, world!", "Hello, world!"), 12);
        Assert.Equal(0, TextMetrics.Bleu("", "anything"));
    }

    [Fact]
    public void GleuIsTheMinimumOfNGramPrecisionAndRecall()
    {
        // Same pair as BLEU: matches 5 + 3 + 1 + 0 = 9 of 6 + 5 + 4 + 3 = 18 n-grams on either side.
        Assert.Equal(0.5, TextMetrics.Gleu("the cat sat on the mat", "the cat is on the mat"), 12);
        // the cat / the cat is on the mat: 3 matches (the, cat, the cat) of max(3, 18).
        Assert.Equal(3.0 / 18, TextMetrics.Gleu("the cat", "the cat is on the mat"), 12);
    }

    [Fact]
    public void RougeIsTheF1OfNGramOverlapAndOfTheLongestCommonSubsequence()
    {
        // "The cat sat." / "the cat is on the mat": lower-cased words; unigram overlap 2 (the, cat): P 2/3, R 2/6.
        Assert.Equal(2 * (2.0 / 3) * (2.0 / 6) / (2.0 / 3 + 2.0 / 6), TextMetrics.RougeN("The cat sat.", "the cat is on the mat", 1), 12);
        // bigrams: overlap 1 (the cat) of 2 and 5.
        Assert.Equal(2 * 0.5 * 0.2 / 0.7, TextMetrics.RougeN("The cat sat.", "the cat is on the mat", 2), 12);
        Assert.Equal(0, TextMetrics.RougeN("The cat sat.", "the cat is on the mat", 3));
        // LCS of the cat sat on the mat / the cat is on the mat: "the cat on the mat" (5) of 6 and 6.
        Assert.Equal(5.0 / 6, TextMetrics.RougeL("the cat sat on the mat", "the cat is on the mat"), 12);
        Assert.Equal(1, TextMetrics.All["rouge_5"]("a b c d e", "A, b; c d e"), 12);
    }

    [Theory]
    [InlineData("eq", "Paris", "Paris", 1)]
    [InlineData("eq", "paris", "Paris", 0)]
    [InlineData("ne", "paris", "Paris", 1)]
    [InlineData("like", "It is Paris.", "Paris", 1)]
    [InlineData("like", "It is paris.", "Paris", 0)]
    [InlineData("ilike", "It is PARIS.", "Paris", 1)]
    public void StringCheckOperations(string operation, string output, string answer, double expected)
    {
        var grader = Parse($$$"""{"type": "string_check", "name": "city", "operation": "{{{operation}}}", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}""");
        Assert.Equal(expected, Grade(grader, $$"""{"answer": "{{answer}}"}""", output));
    }

    [Fact]
    public void TemplatesReachNestedFieldsIndicesAndTheSampleAsJson()
    {
        var grader = Parse("""{"type": "string_check", "name": "x", "operation": "eq", "input": "{{ sample.output_json.city }}-{{item.meta.codes[1]}}", "reference": "{{item.answer}}"}""");
        Assert.Equal(1, Grade(grader, """{"answer": "Paris-7", "meta": {"codes": [3, 7]}}""", """{"city": "Paris"}"""));
        Assert.Equal(0, Grade(grader, """{"answer": "Paris-7", "meta": {"codes": [3, 7]}}""", "not json"));
        Assert.Equal("item.answer", grader.MissingItemField(Item("""{"meta": {"codes": [3, 7]}}""")));
        Assert.Equal("item.meta.codes[1]", grader.MissingItemField(Item("""{"answer": "a", "meta": {"codes": [3]}}""")));
        Assert.Null(grader.MissingItemField(Item("""{"answer": "a", "meta": {"codes": [3, 4]}}""")));
        var missing = Assert.Throws<GraderException>(() => Grade(grader, """{"meta": {"codes": [3, 7]}}""", "{}"));
        Assert.Equal("item.answer", missing.Param);
    }

    [Fact]
    public void TextSimilarityGradesWithItsMetric()
    {
        var grader = Parse("""{"type": "text_similarity", "name": "s", "evaluation_metric": "rouge_l", "input": "{{sample.output_text}}", "reference": "{{item.reference}}", "pass_threshold": 0.5}""");
        Assert.Equal(5.0 / 6, Grade(grader, """{"reference": "the cat is on the mat"}""", "the cat sat on the mat"), 12);
    }

    [Fact]
    public void MultiCombinesGradesWithItsFormula()
    {
        var grader = Parse("""
            {"type": "multi", "name": "both", "calculate_output": "0.25 * exact + 0.75 * max(close, 0.5) ^ 2 - -abs(-0)",
             "graders": {
               "exact": {"type": "string_check", "name": "exact", "operation": "eq", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"},
               "close": {"type": "text_similarity", "name": "close", "evaluation_metric": "fuzzy_match", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}}}
            """);
        Assert.Equal(0.25 + 0.75, Grade(grader, """{"answer": "kitten"}""", "kitten"), 12);
        Assert.Equal(0.75 * Math.Pow(8.0 / 13, 2), Grade(grader, """{"answer": "sitting"}""", "kitten"), 12);
        Assert.Equal(0.75 * 0.25, Grade(grader, """{"answer": "abc"}""", "xyz"), 12);   // max(0, 0.5)^2
    }

    [Theory]
    [InlineData("1 + 2 * 3", 7)]
    [InlineData("(1 + 2) * 3", 9)]
    [InlineData("2 ^ 3 ^ 2", 512)]
    [InlineData("-2 ^ 2", -4)]
    [InlineData("10 / 4 - 1", 1.5)]
    [InlineData("min(a, b, 3) + max(a)", 1 + 1)]
    [InlineData("floor(2.7) + ceil(2.1) + sqrt(16) + exp(0) + log(1)", 2 + 3 + 4 + 1 + 0)]
    [InlineData("1e-1 * b", 0.2)]
    public void FormulasFollowArithmeticPrecedence(string formula, double expected) =>
        Assert.Equal(expected, Formula.Parse(formula, new HashSet<string> { "a", "b" }, "f").Evaluate(new Dictionary<string, double> { ["a"] = 1, ["b"] = 2 }), 12);

    [Theory]
    [InlineData("a +", "ends where a value is expected")]
    [InlineData("a + c", "'c' is not one of the graders")]
    [InlineData("(a", "')' is missing")]
    [InlineData("abs(a, b)", "abs takes 1 argument")]
    [InlineData("a b", "unexpected 'b'")]
    [InlineData("__import__('os')", "not one of the graders")]
    public void BadFormulasNameTheProblem(string formula, string message)
    {
        var error = Assert.Throws<GraderException>(() => Formula.Parse(formula, new HashSet<string> { "a", "b" }, "g.calculate_output"));
        Assert.Contains(message, error.Message);
        Assert.Equal("g.calculate_output", error.Param);
    }

    [Theory]
    [InlineData("""{"type": "nope", "name": "x"}""", "method.reinforcement.grader.type", "Unknown grader type 'nope'")]
    [InlineData("""{"type": "python", "name": "x", "source": "def grade(s, i): return 1"}""", "method.reinforcement.grader.type", "python graders run user code")]
    [InlineData("""{"type": "multi", "name": "m", "calculate_output": "x", "graders": {"x": {"type": "bogus"}}}""", "method.reinforcement.grader.graders.x.type", "Unknown grader type 'bogus'")]
    [InlineData("""{"type": "multi", "name": "m", "calculate_output": "x", "graders": {"x": {"type": "python", "source": ""}}}""", "method.reinforcement.grader.graders.x.type", "python")]
    [InlineData("""{"type": "string_check", "name": "x", "operation": "regex", "input": "a", "reference": "b"}""", "method.reinforcement.grader.operation", "'eq', 'ne', 'like', 'ilike'")]
    [InlineData("""{"type": "string_check", "name": "x", "operation": "eq", "reference": "b"}""", "method.reinforcement.grader.input", "Missing required parameter")]
    [InlineData("""{"type": "string_check", "name": "x", "operation": "eq", "input": "{{answer}}", "reference": "b"}""", "method.reinforcement.grader.input", "not a template reference")]
    [InlineData("""{"type": "string_check", "name": "x", "operation": "eq", "input": "{{data.answer}}", "reference": "b"}""", "method.reinforcement.grader.input", "only 'item' and 'sample'")]
    [InlineData("""{"type": "string_check", "name": "x", "operation": "eq", "input": "{{sample.text}}", "reference": "b"}""", "method.reinforcement.grader.input", "sample.output_text")]
    [InlineData("""{"type": "text_similarity", "name": "x", "evaluation_metric": "cosine", "input": "a", "reference": "b"}""", "method.reinforcement.grader.evaluation_metric", "embedding")]
    [InlineData("""{"type": "text_similarity", "name": "x", "evaluation_metric": "rouge_9", "input": "a", "reference": "b"}""", "method.reinforcement.grader.evaluation_metric", "Unknown evaluation_metric")]
    [InlineData("""{"type": "score_model", "name": "x", "model": "m", "input": []}""", "method.reinforcement.grader.input", "non-empty array")]
    [InlineData("""{"type": "score_model", "name": "x", "model": "m", "input": [{"role": "judge", "content": "a"}]}""", "method.reinforcement.grader.input[0].role", "'user'")]
    [InlineData("""{"type": "score_model", "name": "x", "model": "m", "range": [1, 1], "input": [{"role": "user", "content": "a"}]}""", "method.reinforcement.grader.range", "low < high")]
    [InlineData("""{"type": "score_model", "name": "x", "model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}""", "method.reinforcement.grader.input[0].content[0].type", "'input_text'")]
    public void InvalidGradersNameTheirJsonPath(string json, string param, string message)
    {
        var error = Assert.Throws<GraderException>(() => Parse(json));
        Assert.Equal(param, error.Param);
        Assert.Contains(message, error.Message);
    }

    sealed class FixedJudge(string reply) : IJudge
    {
        public List<(string Model, IReadOnlyList<JudgeMessage> Messages)> Asked { get; } = [];
        public Task<bool> ExistsAsync(string model, CancellationToken cancel = default) => Task.FromResult(model == "judge");
        public Task<string> ReplyAsync(string model, IReadOnlyList<JudgeMessage> messages, JudgeSampling sampling, CancellationToken cancel = default)
        {
            Asked.Add((model, messages));
            return Task.FromResult(reply);
        }
    }

    [Fact]
    public void ScoreModelAsksItsJudgeWithTemplatedMessagesAndReadsTheScore()
    {
        var grader = Parse("""
            {"type": "score_model", "name": "judge", "model": "judge", "range": [0, 10], "sampling_params": {"temperature": 0, "max_completions_tokens": 8},
             "input": [{"role": "system", "content": "Grade 0-10."}, {"role": "user", "content": [{"type": "input_text", "text": "Answer: {{sample.output_text}} Expected: {{item.answer}}"}]}]}
            """);
        Assert.Equal([("judge", "method.reinforcement.grader.model")], grader.JudgeModels);
        var judge = new FixedJudge("I'd say 7/10.");
        Assert.Equal(7, Grade(grader, """{"answer": "4"}""", "four", judge));
        Assert.Equal("Answer: four Expected: 4", judge.Asked.Single().Messages[1].Content);
        Assert.Equal("system", judge.Asked.Single().Messages[0].Role);
    }

    [Theory]
    [InlineData("""{"result": 0.25, "steps": ["3 is close"]}""", 0.25)]
    [InlineData("""{"score": 2}""", 1)]            // clamped to the range
    [InlineData("Score: -3", 0)]
    [InlineData("0.5", 0.5)]
    [InlineData("The answer is .75 correct", 0.75)]
    [InlineData("no idea", 0)]                     // no number: the low end
    public void JudgeRepliesAreReadRobustly(string reply, double expected) =>
        Assert.Equal(expected, ScoreModelGrader.ReadScore(reply, (0, 1)), 12);
}
