using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// The one setting for a frozen base's precision (<c>Models:Precision</c> = auto | bf16 | fp32), used by training and
/// serving alike: the type its weight matrices (every <see cref="AdaptableLinear"/> weight and <see cref="EmbeddingTable"/>)
/// are kept and multiplied in. Everything else stays float32: norms, biases, the residual stream, attention, adapters
/// (their inputs and outputs too), the loss and sampling.
/// </summary>
/// <remarks>
/// With bf16, a bf16 file's matrices are used as stored (mapped, not copied), f16 and f32 ones are converted once at load.
/// With fp32, a bf16 or f16 file's matrices are widened once at load (the behaviour before the setting existed): twice the
/// memory, exact float32 arithmetic. <see cref="AsStored"/> is not a setting: merging an adapter and exporting keep each
/// matrix in the file's own type, so a bf16 base exported stays bf16.
/// </remarks>
public sealed record BasePrecision
{
    /// <summary>The type of the weight matrices, or null to keep each in its file's type.</summary>
    public ScalarType? MatrixType { get; }
    /// <summary>The setting's value (bf16, fp32) or "stored"; with how it was chosen for auto.</summary>
    public string Description { get; }

    BasePrecision(ScalarType? matrixType, string description) => (MatrixType, Description) = (matrixType, description);

    public static readonly BasePrecision Float32 = new(ScalarType.Float32, "fp32");
    public static readonly BasePrecision BFloat16 = new(ScalarType.BFloat16, "bf16");
    public static readonly BasePrecision AsStored = new(null, "stored");

    /// <summary>The values <c>Models:Precision</c> takes.</summary>
    public static readonly IReadOnlyList<string> Settings = ["auto", "bf16", "fp32"];

    /// <summary>
    /// Resolves a <c>Models:Precision</c> value (null or empty = auto): auto is bf16 where the CPU multiplies bf16 in
    /// hardware (<see cref="CpuHasBf16Matmul"/>), else fp32. The rest of the code does not assume a CPU: bf16 and fp32
    /// mean the same on any device.
    /// </summary>
    public static BasePrecision Resolve(string? setting) => (setting ?? "").Trim().ToLowerInvariant() switch
    {
        "" or "auto" => CpuHasBf16Matmul() ? new(ScalarType.BFloat16, "bf16 (auto: the CPU has AVX-512 BF16 or AMX)")
            : new(ScalarType.Float32, "fp32 (auto: the CPU lacks AVX-512 BF16 and AMX)"),
        "bf16" or "bfloat16" => BFloat16,
        "fp32" or "float32" => Float32,
        _ => throw new ArgumentException($"Models:Precision is '{setting}'; it must be one of {string.Join(", ", Settings)}"),
    };

    /// <summary>The type a matrix stored as <paramref name="stored"/> is kept in.</summary>
    public ScalarType MatrixTypeFor(ScalarType stored) => MatrixType ?? stored;

    /// <summary>
    /// Whether this CPU has bf16 dot-product instructions (AVX-512 BF16, or AMX tiles), with which oneDNN runs bf16
    /// matmuls at about twice the float32 rate; without them PyTorch emulates bf16 slower than float32. Read from the
    /// flags of /proc/cpuinfo (Linux); elsewhere false, so auto stays float32.
    /// </summary>
    public static bool CpuHasBf16Matmul() => cpuFlags.Value.Overlaps(["avx512_bf16", "amx_bf16"]);

    static readonly Lazy<HashSet<string>> cpuFlags = new(() =>
    {
        try
        {
            if (!File.Exists("/proc/cpuinfo")) return [];
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal));
            return line is null ? [] : [.. line[(line.IndexOf(':') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries)];
        }
        catch (IOException) { return []; }
        catch (UnauthorizedAccessException) { return []; }
    });

    /// <summary>
    /// Converts a model's weight matrices, in place, to this precision's type (a model built in memory, say a random one;
    /// <see cref="ModelFolder.Load(string, BasePrecision?)"/> applies it while loading). Returns the model.
    /// </summary>
    public TModel Apply<TModel>(TModel model) where TModel : TorchSharp.torch.nn.Module
    {
        var matrices = Matrices(model);
        using var noGrad = TorchSharp.torch.no_grad();
        foreach (var owner in matrices)
        {
            var old = owner.Matrix;
            var type = MatrixTypeFor(old.dtype);
            if (old.dtype == type) continue;
            Replace(matrices, old, new TorchSharp.Modules.Parameter(old.detach().to_type(type), requires_grad: old.requires_grad));
        }
        return model;
    }

    /// <summary>The modules whose <c>weight</c> is a matrix this setting governs.</summary>
    internal static List<IStoredMatrix> Matrices(TorchSharp.torch.nn.Module model) =>
        [.. model.named_modules().Select(m => m.module).OfType<IStoredMatrix>()];

    /// <summary>Puts <paramref name="replacement"/> in every module holding <paramref name="old"/> (a tied head holds its embeddings' weight), then frees it.</summary>
    internal static void Replace(IEnumerable<IStoredMatrix> matrices, TorchSharp.Modules.Parameter old, TorchSharp.Modules.Parameter replacement)
    {
        foreach (var holder in matrices.Where(m => ReferenceEquals(m.Matrix, old)).ToList()) holder.ReplaceWeight(replacement);
        old.Dispose();
    }

    public override string ToString() => Description;
}
