using System.IO.Compression;
using System.Text.Json;
using System.Text;
using AdapterService.Api.Apis;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Adapters;
using AdapterService.Core.Builtins;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp;

namespace AdapterService.Api.Tests;

/// <summary>
/// Seeded mutation fuzzing of every parser that reads what users send: each mutated input is either accepted or
/// rejected with the parser's own exception types (which the API turns into 400s), never anything else.
/// </summary>
public sealed class ParserFuzzTests : IDisposable
{
    readonly TempFolder folder = new("adapter-service-fuzz-");
    static readonly (string Path, long In, long Out)[] Layers = [("model.layers.0.self_attn.q_proj", 8, 8), ("model.layers.0.self_attn.v_proj", 8, 4)];

    public ParserFuzzTests() => TorchRuntime.EnsureReady();

    public void Dispose() => folder.Dispose();

    /// <summary>Runs <paramref name="count"/> mutations of the seeds; an exception outside <paramref name="allowed"/> fails with its input.</summary>
    static void Fuzz(int seed, int count, byte[][] seeds, Action<byte[]> parse, params Type[] allowed)
    {
        var mutator = new Mutator(seed);
        int accepted = 0;
        for (int i = 0; i < count; i++)
        {
            var input = mutator.Mutate(seeds[i % seeds.Length]);
            try
            {
                parse(input);
                accepted++;
            }
            catch (Exception e) when (allowed.Any(t => t.IsInstanceOfType(e))) { }
            catch (Exception e)
            {
                Assert.Fail($"input {i} (seed {seed}) threw {e.GetType().Name}: {e.Message}\n{Convert.ToBase64String(input)}\n{e}");
            }
        }
        Assert.InRange(accepted, 1, count - 1);   // the mutations reach both sides: some inputs stay valid, some are rejected
    }

    [Fact]
    public void TrainingFiles()
    {
        byte[][] seeds =
        [
            Encoding.UTF8.GetBytes(string.Join("\n",
                """{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 1}]}""",
                """{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Yo"}]}""")),
            Encoding.UTF8.GetBytes("""{"prompt": "2+2=", "completion": "4"}""" + "\n" + """{"prompt": "", "completion": "x"}""" + "\n"),
        ];
        Fuzz(1, 4000, seeds, input => TrainingFile.Parse(new MemoryStream(input)), typeof(TrainingFileException));
    }

    [Fact]
    public void SafeTensorsHeadersAndTensors()
    {
        var path = Path.Combine(folder.FullName, "t.safetensors");
        using (var scope = torch.NewDisposeScope())
            SafeTensors.Save(path, new Dictionary<string, torch.Tensor>
            {
                ["a"] = torch.arange(6, torch.float32).reshape(2, 3), ["b"] = torch.ones(4, torch.float16), ["c"] = torch.zeros(1, 2, torch.bfloat16),
            }, new Dictionary<string, string> { ["format"] = "pt" });
        byte[][] seeds = [File.ReadAllBytes(path)];
        var fuzzed = Path.Combine(folder.FullName, "f.safetensors");
        Fuzz(2, 2000, seeds, input =>
        {
            File.WriteAllBytes(fuzzed, input);
            SafeTensors.ReadHeader(fuzzed);
        }, typeof(SafeTensorsException));
        Fuzz(3, 600, seeds, input =>
        {
            File.WriteAllBytes(fuzzed, input);
            foreach (var t in SafeTensors.Load(fuzzed).Values) t.Dispose();
        }, typeof(SafeTensorsException));
    }

    [Fact]
    public void AdapterFoldersAndZips()
    {
        var valid = Directory.CreateDirectory(Path.Combine(folder.FullName, "valid")).FullName;
        WriteAdapter(valid);
        byte[] config = File.ReadAllBytes(Path.Combine(valid, LoraConfig.FileName)), weights = File.ReadAllBytes(Path.Combine(valid, LoraAdapter.WeightsFileName));
        var fuzzed = Directory.CreateDirectory(Path.Combine(folder.FullName, "fuzzed")).FullName;
        Type[] rejections = [typeof(InvalidDataException), typeof(IOException), typeof(JsonException)];   // what the import answers 400 for

        // adapter_config.json and adapter_model.safetensors, each mutated on its own.
        void Load(byte[] configBytes, byte[] weightBytes)
        {
            File.WriteAllBytes(Path.Combine(fuzzed, LoraConfig.FileName), configBytes);
            File.WriteAllBytes(Path.Combine(fuzzed, LoraAdapter.WeightsFileName), weightBytes);
            using (ServedAdapter.Load(fuzzed, Layers, [])) { }
        }
        Fuzz(4, 800, [config], input => Load(input, weights), rejections);
        Fuzz(5, 600, [weights], input => Load(config, input), rejections);

        // Whole zips, as /v1/adapters/import receives them.
        var zip = new MemoryStream();
        using (var archive = new ZipArchive(zip, ZipArchiveMode.Create, leaveOpen: true))
            foreach (var file in Directory.GetFiles(valid)) archive.CreateEntryFromFile(file, "adapter/" + Path.GetFileName(file), CompressionLevel.Fastest);
        Fuzz(7, 1200, [zip.ToArray()], input =>
        {
            var target = Directory.CreateDirectory(Path.Combine(folder.FullName, "zip-" + Guid.NewGuid().ToString("N"))).FullName;
            string[] peft = [LoraConfig.FileName, LoraAdapter.WeightsFileName];
            SafeZip.Extract(new MemoryStream(input), target, maxBytes: 1 << 20, peft.Contains, peft);
            using (ServedAdapter.Load(target, Layers, [])) { }
        }, rejections);
    }

    [Fact]
    public void ModelConfigs()
    {
        var path = Path.Combine(folder.FullName, "config.json");
        BuiltinModels.TinyDemo.Config.Save(path);
        byte[][] seeds = [File.ReadAllBytes(path)];
        Fuzz(6, 1500, seeds, input =>
        {
            File.WriteAllBytes(path, input);
            LlamaConfig.Load(path);
        }, typeof(InvalidDataException), typeof(JsonException));
    }

    static void WriteAdapter(string target)
    {
        new LoraConfig { Rank = 2, Alpha = 4, TargetModules = ["q_proj", "v_proj"] }.Save(target);
        using var scope = torch.NewDisposeScope();
        var tensors = new Dictionary<string, torch.Tensor>();
        foreach (var (path, input, output) in Layers)
        {
            tensors[$"base_model.model.{path}.lora_A.weight"] = torch.randn(2, input);
            tensors[$"base_model.model.{path}.lora_B.weight"] = torch.randn(output, 2);
        }
        SafeTensors.Save(Path.Combine(target, LoraAdapter.WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }
}
