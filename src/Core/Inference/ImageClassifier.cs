using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>One image to classify with a base model and, optionally, an adapter of it.</summary>
public sealed record ClassifyRow(GrayImage Image, ServedAdapter? Adapter);

/// <summary>A row's label and the probability of each label, in the classifier's label order.</summary>
public sealed record Classification(string Label, IReadOnlyList<(string Label, double Probability)> Probabilities);

/// <summary>
/// Serves ViT image classifiers: one batched forward pass per base model in which every row uses its own adapter (the
/// per-row machinery of text serving, <see cref="RowAdapters"/>: row adapters on the linear layers, norms and feed-forward blocks),
/// then each row's classifier: the base's, or the adapter's own when it has new labels. Forward passes take turns under a
/// lock (the model's adapter slots are shared); each runs synchronously on the caller's thread inside one dispose scope.
/// Bases load in <paramref name="precision"/> (<c>Models:Precision</c>; float32 when none is given).
/// </summary>
public sealed class ImageClassifier(long adapterCacheBytes = 256L << 20, BasePrecision? precision = null) : IDisposable
{
    readonly Lock gate = new();
    readonly Dictionary<string, ViTForImageClassification> models = [];

    /// <summary>Adapters in memory, loaded on demand (leases held by callers for the duration of a request).</summary>
    public AdapterCache Adapters { get; } = new(adapterCacheBytes);

    /// <summary>Classifies <paramref name="rows"/> with the base model in <paramref name="baseFolder"/>, in order.</summary>
    public IReadOnlyList<Classification> Classify(string baseFolder, IReadOnlyList<ClassifyRow> rows)
    {
        lock (gate)
        {
            if (!models.TryGetValue(baseFolder, out var model)) models[baseFolder] = model = ModelFolder.Load<ViTForImageClassification>(baseFolder, precision);
            var adapters = rows.Select(r => r.Adapter).ToList();
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            RowAdapters? perRow = null;
            try
            {
                perRow = RowAdapters.Attach(model, adapters, new long[rows.Count], states: null);   // no state: each image is a whole sequence
                var features = model.Features(ImageData.Pixels(rows.Select(r => r.Image).ToList(), model.Config));   // [n, hidden]
                var baseProbabilities = model.classifier.forward(features).softmax(-1);                              // [n, base labels]
                var result = new Classification[rows.Count];
                for (int i = 0; i < rows.Count; i++)
                {
                    var head = adapters[i]?.Head;
                    var probabilities = head is { } h
                        ? nn.functional.linear(features[i].unsqueeze(0), h.Weight, h.Bias).softmax(-1)[0]              // [adapter labels]
                        : baseProbabilities[i];                                                                         // [base labels]
                    var labels = head is null ? model.Config.Labels : adapters[i]!.Config.Labels!;
                    var p = probabilities.data<float>().ToArray();
                    int best = Array.IndexOf(p, p.Max());
                    result[i] = new Classification(labels[best], labels.Select((l, k) => (l, (double)p[k])).ToList());
                }
                return result;
            }
            finally
            {
                TrainableAdapter.Detach(model);
                perRow?.Dispose();
            }
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            foreach (var model in models.Values) model.Dispose();
            models.Clear();
        }
    }
}
