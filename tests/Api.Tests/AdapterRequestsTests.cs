using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Api.Apis;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;

namespace AdapterService.Api.Tests;

/// <summary>
/// The API's adapter requests and DTOs for every method <see cref="AdapterMethods"/> registers: its type is accepted,
/// and request → config → DTO → request gives the same config and DTO. Today's JSON shapes are pinned per method.
/// </summary>
public sealed class AdapterRequestsTests
{
    static readonly LlamaConfig Tiny = new()
    {
        VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, MaxPositionEmbeddings = 64,
    };

    static readonly JsonSerializerOptions Api = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static TheoryData<string> Methods => new(AdapterMethods.Names);

    static AdapterConfig Parse(AdapterRequest? request)
    {
        var config = AdapterRequests.Parse(request, Tiny, out var error);
        Assert.True(config is not null, error is null ? "no config" : JsonSerializer.Serialize(error.Value, Api));
        return config!;
    }

    [Theory, MemberData(nameof(Methods))]
    public void ItsTypeIsAcceptedAndItsDtoRoundTrips(string type)
    {
        Assert.Contains(type, AdapterMethods.Names);
        var config = Parse(new AdapterRequest(type, JsonSerializer.SerializeToElement(4), null, null, null, NumExperts: 2));
        Assert.Equal(type, config.Method);
        var dto = AdapterDto.From(config);
        Assert.Equal(type, dto.Type);
        Assert.Equal(4, dto.Rank);

        // The DTO read back as a request (as a client copying a job's adapter would send it) asks for the same adapter.
        var again = JsonSerializer.Deserialize<AdapterRequest>(JsonSerializer.Serialize(dto, Api), Api);
        var config2 = Parse(again);
        Assert.Equal(config.ToJson(), config2.ToJson());
        Assert.Equal(JsonSerializer.Serialize(dto, Api), JsonSerializer.Serialize(AdapterDto.From(config2), Api));
    }

    /// <summary>
    /// adapter.rank is read as JSON (a list is a sweep, read by the job's creation): one integer, or one in a string as the
    /// API's JSON options always accepted; anything else is a 400 naming adapter.rank rather than the body's generic one.
    /// </summary>
    [Theory]
    [InlineData("6", 6)]
    [InlineData("\"6\"", 6)]
    [InlineData("null", 8)]
    [InlineData("\"six\"", null)]
    [InlineData("6.5", null)]
    [InlineData("[2, 8]", null)]
    [InlineData("0", null)]
    public void TheRankIsOneIntegerOrANamedRefusal(string json, int? rank)
    {
        var config = AdapterRequests.Parse(new AdapterRequest("lora", JsonDocument.Parse(json).RootElement, null, null, null), Tiny, out var error);
        if (rank is { } r) Assert.Equal(r, ((LoraConfig)config!).Rank);
        else Assert.Equal((400, "adapter.rank"), (error!.StatusCode, error.Value!.Error.Param));
    }

    [Fact]
    public void AnUnknownTypeIsRefusedListingTheRegisteredOnes()
    {
        Assert.Null(AdapterRequests.Parse(new AdapterRequest("mixture", null, null, null, null), Tiny, out var error));
        Assert.Equal(400, error!.StatusCode);
        Assert.Equal(("Adapter type 'mixture' is not supported; supported: 'lora', 'dora', 'lily', 'rlrr', 'mixlora'.", "adapter.type", "unsupported_adapter_type"),
            (error.Value!.Error.Message, error.Value.Error.Param, error.Value.Error.Code));
    }

    /// <summary>MixLoRA on a mixture-of-experts base is a 400 on adapter.type saying why; LoRA's all-linear there names each expert projection once.</summary>
    [Fact]
    public void MixLoraOnAMixtureOfExpertsBaseIsRefused()
    {
        var moe = new Qwen3MoeConfig
        {
            VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, NumExperts = 4,
            NumExpertsPerTok = 2, MoeIntermediateSize = 16,
        };
        Assert.Null(AdapterRequests.Parse(new AdapterRequest("mixlora", null, null, null, null), moe, out var error));
        Assert.Equal((400, "adapter.type"), (error!.StatusCode, error.Value!.Error.Param));
        Assert.Contains("model_type 'qwen3_moe' is a mixture of experts already", error.Value.Error.Message);
        var lora = AdapterRequests.Parse(null, moe, out _)!;
        Assert.Equal(["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"], lora.TargetModules);
    }

    /// <summary>The JSON each method's default adapter shows in a job (options a method does not have are null).</summary>
    [Theory]
    [InlineData(null, """{"type":"lora","rank":8,"alpha":16,"dropout":0,"target_modules":["down_proj","gate_proj","k_proj","o_proj","q_proj","up_proj","v_proj"],"num_experts":null,"scaling":null,"router_mean":null,"monoscale":null,"top_k":null,"router_aux_loss_coef":null}""")]
    [InlineData("dora", """{"type":"dora","rank":8,"alpha":16,"dropout":0,"target_modules":["down_proj","gate_proj","k_proj","o_proj","q_proj","up_proj","v_proj"],"num_experts":null,"scaling":null,"router_mean":null,"monoscale":null,"top_k":null,"router_aux_loss_coef":null}""")]
    [InlineData("lily", """{"type":"lily","rank":8,"alpha":null,"dropout":0,"target_modules":["down_proj","gate_proj","k_proj","o_proj","q_proj","up_proj","v_proj"],"num_experts":4,"scaling":1,"router_mean":"sequence","monoscale":false,"top_k":null,"router_aux_loss_coef":null}""")]
    [InlineData("rlrr", """{"type":"rlrr","rank":1,"alpha":null,"dropout":null,"target_modules":["down_proj","gate_proj","k_proj","o_proj","q_proj","up_proj","v_proj"],"num_experts":null,"scaling":null,"router_mean":null,"monoscale":null,"top_k":null,"router_aux_loss_coef":null}""")]
    [InlineData("mixlora", """{"type":"mixlora","rank":8,"alpha":16,"dropout":0,"target_modules":["k_proj","o_proj","q_proj","v_proj"],"num_experts":8,"scaling":null,"router_mean":null,"monoscale":null,"top_k":2,"router_aux_loss_coef":0.01}""")]
    public void TheDefaultAdapterOfEachMethodShowsAsBefore(string? type, string expected)
    {
        var dto = AdapterDto.From(Parse(type is null ? null : new AdapterRequest(type, null, null, null, null)));
        Assert.True(JsonNode.DeepEquals(JsonNode.Parse(expected), JsonSerializer.SerializeToNode(dto, Api)), JsonSerializer.Serialize(dto, Api));
    }
}
