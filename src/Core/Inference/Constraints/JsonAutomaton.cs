using static AdapterService.Core.Inference.Constraints.JsonGrammar;

namespace AdapterService.Core.Inference.Constraints;

/// <summary>
/// A pushdown automaton over UTF-8 bytes for the values of a <see cref="JsonGrammar"/>. A cursor is an immutable stack
/// of <see cref="Frame"/>s (the open containers and the value being written); a state is the set of cursors still
/// possible (anyOf and optional properties branch; a byte that fits none ends a branch). Stacks share their tails, so
/// stepping one byte allocates only the new top.
///
/// Whitespace policy: none at the start or end of the document or inside numbers and literals; between tokens of an
/// object or array (after '{' '[' ',' ':' and before ',' ':' '}' ']') at most <see cref="MaxWhitespace"/> space, so
/// compact JSON and Python's json.dumps style (<c>{"a": 1, "b": [1, 2]}</c>) are possible, but a model cannot spend its
/// tokens on whitespace (a small model at temperature 1 fills any larger allowance with tabs and newlines). Strings are valid
/// UTF-8 (no overlong forms, no surrogates, no raw control characters), with JSON's escapes (no \u surrogates).
/// </summary>
public static class JsonAutomaton
{
    /// <summary>Spaces allowed in one gap between structural characters.</summary>
    public const int MaxWhitespace = 1;

    public enum FrameKind : byte { Root, Object, Array, String, Number, Literal }

    // Root phases
    const int RootStart = 0, RootInValue = 1, RootDone = 2;
    // Object phases (B: property index, C: whitespace count or key byte position)
    const int ObjOpen = 0, ObjKey = 1, ObjFreeKey = 2, ObjColon = 3, ObjAfterColon = 4, ObjInValue = 5, ObjAfterValue = 6, ObjAfterComma = 7;
    // Array phases (B: items so far, C: whitespace count)
    const int ArrOpen = 0, ArrInItem = 1, ArrAfterItem = 2, ArrAfterComma = 3;
    // Number phases (B: digits in the current part)
    const int NumSign = 0, NumZero = 1, NumInt = 2, NumDot = 3, NumFrac = 4, NumExp = 5, NumExpSign = 6, NumExpDigits = 7;

    /// <summary>One level of a cursor: kind, grammar node, three small counters, and the frame below (shared).</summary>
    public sealed class Frame : IEquatable<Frame>
    {
        public readonly Frame? Parent;
        public readonly FrameKind Kind;
        public readonly Node? Node;
        public readonly int A, B, C;
        /// <summary>Objects and arrays open at and below this frame.</summary>
        public readonly int Depth;
        readonly int hash;

        public Frame(Frame? parent, FrameKind kind, Node? node, int a, int b = 0, int c = 0)
        {
            (Parent, Kind, Node, A, B, C) = (parent, kind, node, a, b, c);
            Depth = (parent?.Depth ?? 0) + (kind is FrameKind.Object or FrameKind.Array ? 1 : 0);
            hash = HashCode.Combine(parent?.hash ?? 0, kind, node?.Id ?? -1, a, b, c);
        }

        Frame With(int a, int b, int c) => new(Parent, Kind, Node, a, b, c);

        public bool Equals(Frame? other)
        {
            for (Frame? x = this, y = other; ; x = x.Parent, y = y.Parent)
            {
                if (ReferenceEquals(x, y)) return true;
                if (x is null || y is null || x.hash != y.hash || x.Kind != y.Kind || x.Node != y.Node || x.A != y.A || x.B != y.B || x.C != y.C) return false;
            }
        }

        public override bool Equals(object? obj) => Equals(obj as Frame);
        public override int GetHashCode() => hash;

        internal Frame WithPhase(int a, int b, int c) => With(a, b, c);
    }

    /// <summary>The start state: one cursor expecting the grammar's root value.</summary>
    public static Frame Start(JsonGrammar grammar) => new(null, FrameKind.Root, grammar.Root, RootStart);

    /// <summary>Whether the document is finished on this cursor (the root value complete, possibly extendable, as "12").</summary>
    public static bool IsComplete(Frame f)
    {
        while (true)
        {
            if (f.Kind == FrameKind.Root) return f.A == RootDone;
            if (!CanEnd(f)) return false;
            f = Completed(f.Parent!);
        }
    }

    /// <summary>Whether any byte can follow on this cursor.</summary>
    public static bool CanContinue(Frame f) => !(f.Kind == FrameKind.Root && f.A == RootDone);

    /// <summary>Adds the cursors that <paramref name="b"/> leads to from <paramref name="f"/> to <paramref name="into"/>.</summary>
    public static void Step(Frame f, byte b, List<Frame> into)
    {
        switch (f.Kind)
        {
            case FrameKind.Root:
                if (f.A == RootStart) StartValue(f.WithPhase(RootInValue, 0, 0), f.Node!, b, into);
                return;
            case FrameKind.Object: StepObject(f, b, into); return;
            case FrameKind.Array: StepArray(f, b, into); return;
            case FrameKind.String: StepString(f, b, into); return;
            case FrameKind.Number: StepNumber(f, b, into); break;
            case FrameKind.Literal:
                int child = f.Node!.Literals!.Child(f.A, b);
                if (child >= 0) into.Add(f.WithPhase(child, 0, 0));
                break;
        }
        // Numbers and literals end where the next byte does not extend them: that byte belongs to the container.
        if (CanEnd(f)) Step(Completed(f.Parent!), b, into);
    }

    static bool CanEnd(Frame f) => f.Kind switch
    {
        FrameKind.Number => f.A is NumZero or NumInt or NumFrac or NumExpDigits,
        FrameKind.Literal => f.Node!.Literals!.IsTerminal(f.A),
        _ => false,
    };

    /// <summary>The container after its current child value is finished.</summary>
    static Frame Completed(Frame parent) => parent.Kind switch
    {
        FrameKind.Root => parent.WithPhase(RootDone, 0, 0),
        FrameKind.Object => parent.A == ObjFreeKey ? parent.WithPhase(ObjColon, -1, 0) : parent.WithPhase(ObjAfterValue, parent.B, 0),
        // Without maxItems the count matters only up to minItems: saturating it there keeps the states few.
        _ => parent.WithPhase(ArrAfterItem, parent.Node!.MaxItems == int.MaxValue ? Math.Min(parent.B + 1, parent.Node.MinItems) : parent.B + 1, 0),
    };

    static bool Fits(Frame parent, Node node) => node.MinHeight <= JsonGrammar.MaxDepth - parent.Depth;

    static bool IsWhitespace(byte b) => b == (byte)' ';

    /// <summary>The first byte of a value of <paramref name="node"/> under <paramref name="parent"/> (already in its "in value" phase).</summary>
    static void StartValue(Frame parent, Node node, byte b, List<Frame> into)
    {
        if (!Fits(parent, node)) return;
        switch (node.Kind)
        {
            case Kind.AnyOf:
                foreach (var alternative in node.Alternatives) StartValue(parent, alternative, b, into);
                break;
            case Kind.Object when b == '{': into.Add(new Frame(parent, FrameKind.Object, node, ObjOpen)); break;
            case Kind.Array when b == '[': into.Add(new Frame(parent, FrameKind.Array, node, ArrOpen)); break;
            case Kind.String when b == '"': into.Add(new Frame(parent, FrameKind.String, node, 0)); break;
            case Kind.Number or Kind.Integer:
                if (b == '-') into.Add(new Frame(parent, FrameKind.Number, node, NumSign));
                else if (b == '0') into.Add(new Frame(parent, FrameKind.Number, node, NumZero));
                else if (b is >= (byte)'1' and <= (byte)'9') into.Add(new Frame(parent, FrameKind.Number, node, NumInt, 1));
                break;
            case Kind.Literals:
                int child = node.Literals!.Child(0, b);
                if (child >= 0) into.Add(new Frame(parent, FrameKind.Literal, node, child));
                break;
        }
    }

    static void StepObject(Frame f, byte b, List<Frame> into)
    {
        var node = f.Node!;
        var props = node.Properties;
        int phase = f.A, j = f.B;
        if (IsWhitespace(b) && phase is ObjOpen or ObjColon or ObjAfterColon or ObjAfterValue or ObjAfterComma)
        {
            if (f.C < MaxWhitespace) into.Add(f.WithPhase(phase, j, f.C + 1));
            return;
        }
        switch (phase)
        {
            case ObjOpen or ObjAfterComma:
                if (b == '}' && phase == ObjOpen && (props is null || node.NextRequired(-1) == props.Length)) into.Add(Completed(f.Parent!));
                if (b != '"') return;
                if (props is null) { into.Add(new Frame(f.WithPhase(ObjFreeKey, -1, 0), FrameKind.String, null, 0)); return; }
                int last = phase == ObjOpen ? -1 : j;
                for (int k = last + 1; k <= Math.Min(node.NextRequired(last), props.Length - 1); k++)
                    if (Fits(f, props[k].Value)) into.Add(f.WithPhase(ObjKey, k, 1));
                return;
            case ObjKey:
                var key = props![j].Key;
                if (key[f.C] != b) return;
                into.Add(f.C + 1 == key.Length ? f.WithPhase(ObjColon, j, 0) : f.WithPhase(ObjKey, j, f.C + 1));
                return;
            case ObjColon:
                if (b == ':') into.Add(f.WithPhase(ObjAfterColon, j, 0));
                return;
            case ObjAfterColon:
                StartValue(f.WithPhase(ObjInValue, j, 0), props is null ? node.FreeValue! : props[j].Value, b, into);
                return;
            case ObjAfterValue:
                if (b == '}' && (props is null || node.NextRequired(j) == props.Length)) into.Add(Completed(f.Parent!));
                if (b == ',' && (props is null || HasNext(f, j))) into.Add(f.WithPhase(ObjAfterComma, j, 0));
                return;
        }
    }

    /// <summary>Whether a property after <paramref name="j"/> may follow (a required one always can: the object's height covers it).</summary>
    static bool HasNext(Frame f, int j)
    {
        var node = f.Node!;
        for (int k = j + 1; k <= Math.Min(node.NextRequired(j), node.Properties!.Length - 1); k++)
            if (Fits(f, node.Properties[k].Value)) return true;
        return false;
    }

    static void StepArray(Frame f, byte b, List<Frame> into)
    {
        var node = f.Node!;
        int phase = f.A, count = f.B;
        if (IsWhitespace(b) && phase != ArrInItem)
        {
            if (f.C < MaxWhitespace) into.Add(f.WithPhase(phase, count, f.C + 1));
            return;
        }
        bool another = count < node.MaxItems && Fits(f, node.Items!);
        switch (phase)
        {
            case ArrOpen:
                if (b == ']' && node.MinItems == 0) into.Add(Completed(f.Parent!));
                else if (another) StartValue(f.WithPhase(ArrInItem, count, 0), node.Items!, b, into);
                return;
            case ArrAfterItem:
                if (b == ']' && count >= node.MinItems) into.Add(Completed(f.Parent!));
                else if (b == ',' && another) into.Add(f.WithPhase(ArrAfterComma, count, 0));
                return;
            case ArrAfterComma:
                StartValue(f.WithPhase(ArrInItem, count, 0), node.Items!, b, into);
                return;
        }
    }

    // String: A characters so far; B the UTF-8 bytes still to come (low 2 bits) and the range of the next one (above);
    // C the escape: 1 after '\', 2-5 the \u hex digits, 6 a second hex digit after 'd' (no surrogates).
    static void StepString(Frame f, byte b, List<Frame> into)
    {
        int count = f.A, utf8 = f.B, escape = f.C;
        int min = f.Node?.MinLength ?? 0, max = f.Node?.MaxLength ?? int.MaxValue;
        if (escape == 1)
        {
            if (b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t') into.Add(f.WithPhase(count, 0, 0));
            else if (b == 'u') into.Add(f.WithPhase(count, 0, 2));
            return;
        }
        if (escape >= 2)
        {
            bool hex = b is >= (byte)'0' and <= (byte)'9' or >= (byte)'a' and <= (byte)'f' or >= (byte)'A' and <= (byte)'F';
            if (escape == 6) { if (b is >= (byte)'0' and <= (byte)'7') into.Add(f.WithPhase(count, 0, 4)); return; }
            if (!hex) return;
            if (escape == 2 && b is (byte)'d' or (byte)'D') into.Add(f.WithPhase(count, 0, 6));
            else into.Add(f.WithPhase(count, 0, escape == 5 ? 0 : escape + 1));
            return;
        }
        if (utf8 != 0)
        {
            int range = utf8 >> 2;
            var (lo, hi) = range switch { 1 => (0xA0, 0xBF), 2 => (0x80, 0x9F), 3 => (0x90, 0xBF), 4 => (0x80, 0x8F), _ => (0x80, 0xBF) };
            if (b >= lo && b <= hi) into.Add(f.WithPhase(count, (utf8 & 3) - 1, 0));
            return;
        }
        if (b == '"') { if (count >= min) into.Add(Completed(f.Parent!)); return; }
        if (count >= max || b < 0x20) return;
        int next = b switch
        {
            (byte)'\\' => -1,
            < 0x80 => 0,
            >= 0xC2 and <= 0xDF => 1,
            0xE0 => 2 | 1 << 2,
            0xED => 2 | 2 << 2,
            >= 0xE1 and <= 0xEF => 2,
            0xF0 => 3 | 3 << 2,
            >= 0xF1 and <= 0xF3 => 3,
            0xF4 => 3 | 4 << 2,
            _ => -2,
        };
        // Without a maxLength the count matters only up to minLength: saturating it there keeps the states (and cached masks) few.
        int counted = max == int.MaxValue ? Math.Min(count + 1, min) : count + 1;
        if (next == -1) into.Add(f.WithPhase(counted, 0, 1));
        else if (next >= 0) into.Add(f.WithPhase(counted, next, 0));
    }

    static void StepNumber(Frame f, byte b, List<Frame> into)
    {
        bool digit = b is >= (byte)'0' and <= (byte)'9', integer = f.Node!.Kind == Kind.Integer;
        int n = f.B;
        switch (f.A)
        {
            case NumSign:
                if (b == '0') into.Add(f.WithPhase(NumZero, 0, 0));
                else if (digit) into.Add(f.WithPhase(NumInt, 1, 0));
                return;
            case NumZero or NumInt:
                if (digit && f.A == NumInt && n < JsonGrammar.MaxIntegerDigits) into.Add(f.WithPhase(NumInt, n + 1, 0));
                else if (!integer && b == '.') into.Add(f.WithPhase(NumDot, 0, 0));
                else if (!integer && b is (byte)'e' or (byte)'E') into.Add(f.WithPhase(NumExp, 0, 0));
                return;
            case NumDot:
                if (digit) into.Add(f.WithPhase(NumFrac, 1, 0));
                return;
            case NumFrac:
                if (digit && n < JsonGrammar.MaxFractionDigits) into.Add(f.WithPhase(NumFrac, n + 1, 0));
                else if (b is (byte)'e' or (byte)'E') into.Add(f.WithPhase(NumExp, 0, 0));
                return;
            case NumExp:
                if (b is (byte)'+' or (byte)'-') into.Add(f.WithPhase(NumExpSign, 0, 0));
                else if (digit) into.Add(f.WithPhase(NumExpDigits, 1, 0));
                return;
            case NumExpSign:
                if (digit) into.Add(f.WithPhase(NumExpDigits, 1, 0));
                return;
            case NumExpDigits:
                if (digit && n < JsonGrammar.MaxExponentDigits) into.Add(f.WithPhase(NumExpDigits, n + 1, 0));
                return;
        }
    }

    /// <summary>The cursors after <paramref name="b"/> from every cursor of <paramref name="state"/>, without duplicates.</summary>
    public static void Advance(IReadOnlyList<Frame> state, byte b, List<Frame> into)
    {
        into.Clear();
        foreach (var f in state) Step(f, b, into);
        if (into.Count > 1) Deduplicate(into);
    }

    static void Deduplicate(List<Frame> frames)
    {
        for (int i = frames.Count - 1; i > 0; i--)
            for (int k = 0; k < i; k++)
                if (frames[k].Equals(frames[i])) { frames.RemoveAt(i); break; }
    }
}
