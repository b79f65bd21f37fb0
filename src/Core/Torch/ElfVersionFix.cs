using System.Buffers.Binary;
using System.Text;

namespace AdapterService.Core.Torch;

/// <summary>
/// Makes a shared library load on a host whose libstdc++ lacks some symbol versions the library asks for.
/// TorchSharp 0.107.0's libLibTorchSharp.so was built with GCC 13 and needs GLIBCXX_3.4.32 only for
/// <c>std::ios_base_library_init()</c>, a reference no relocation uses. Marking that version requirement
/// weak (VER_FLG_WEAK in .gnu.version_r, a 2-byte edit) lets ld.so skip it instead of refusing the library.
/// </summary>
public static class ElfVersionFix
{
    const uint ShtRela = 4, ShtRel = 9, ShtDynsym = 11;
    const uint ShtVerdef = 0x6ffffffd, ShtVerneed = 0x6ffffffe, ShtVersym = 0x6fffffff;
    const ushort VerFlgWeak = 2;

    /// <summary>Weakens the libstdc++ version needs of <paramref name="library"/> that <paramref name="hostLibstdcxx"/>
    /// does not define. Returns the versions weakened now (empty when nothing had to change).</summary>
    public static IReadOnlyList<string> Apply(string library, string hostLibstdcxx)
    {
        var have = DefinedVersions(File.ReadAllBytes(hostLibstdcxx));
        var bytes = File.ReadAllBytes(library);
        var elf = new Elf(bytes, library);
        var missing = new Dictionary<ushort, string>();   // version index -> name, for libstdc++ versions the host lacks
        var changed = new List<string>();
        var vn = elf.Section(ShtVerneed);
        if (vn is null) return changed;
        long off = (long)vn.Value.Offset;
        for (int i = 0; i < vn.Value.Info; i++)
        {
            ushort cnt = elf.U16(off + 2);
            string file = elf.Str(vn.Value.Link, elf.U32(off + 4));
            long aux = off + elf.U32(off + 8);
            for (int j = 0; j < cnt; j++)
            {
                ushort flags = elf.U16(aux + 4), index = elf.U16(aux + 6);
                string name = elf.Str(vn.Value.Link, elf.U32(aux + 8));
                if (file.StartsWith("libstdc++", StringComparison.Ordinal) && !have.Contains(name))
                {
                    missing[index] = name;
                    if ((flags & VerFlgWeak) == 0)
                    {
                        BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan((int)aux + 4), (ushort)(flags | VerFlgWeak));
                        changed.Add(name);
                    }
                }
                aux += elf.U32(aux + 12);
            }
            off += elf.U32(off + 12);
        }
        if (missing.Count == 0) return changed;

        var used = RelocatedSymbols(elf, missing.Keys.ToHashSet());
        if (used.Count > 0)
            throw new InvalidOperationException(
                $"{library} really uses symbols of {string.Join(", ", missing.Values)} that {hostLibstdcxx} lacks ({string.Join(", ", used)}); " +
                "a newer libstdc++ (GCC 13+) is required.");
        if (changed.Count == 0) return changed;

        // Write beside the original and rename over it, so a concurrent loader never sees a half-written file.
        string temp = $"{library}.{Environment.ProcessId}.tmp";
        File.WriteAllBytes(temp, bytes);
        File.Move(temp, library, overwrite: true);
        return changed;
    }

    /// <summary>Names of the symbol versions a shared library defines (its .gnu.version_d).</summary>
    public static HashSet<string> DefinedVersions(byte[] bytes)
    {
        var elf = new Elf(bytes, "host libstdc++");
        var set = new HashSet<string>(StringComparer.Ordinal);
        var vd = elf.Section(ShtVerdef) ?? throw new InvalidDataException("host libstdc++ has no version definitions");
        long off = (long)vd.Offset;
        for (int i = 0; i < vd.Info; i++)
        {
            set.Add(elf.Str(vd.Link, elf.U32(off + elf.U32(off + 12))));
            off += elf.U32(off + 16);
        }
        return set;
    }

    static List<string> RelocatedSymbols(Elf elf, HashSet<ushort> versionIndexes)
    {
        var result = new List<string>();
        int dynIndex = elf.SectionIndex(ShtDynsym);
        var versym = elf.Section(ShtVersym);
        if (dynIndex < 0 || versym is null) return result;
        var dynsym = elf.Sections[dynIndex];
        var wanted = new Dictionary<ulong, string>();
        for (ulong i = 0; i < dynsym.Size / 24; i++)
            if (versionIndexes.Contains((ushort)(elf.U16((long)(versym.Value.Offset + 2 * i)) & 0x7fff)))
                wanted[i] = elf.Str(dynsym.Link, elf.U32((long)(dynsym.Offset + 24 * i)));
        foreach (var s in elf.Sections.Where(s => (s.Type == ShtRela || s.Type == ShtRel) && s.Link == dynIndex))
        {
            ulong entry = s.Type == ShtRela ? 24UL : 16UL;
            for (ulong r = 0; r < s.Size / entry; r++)
                if (wanted.TryGetValue(elf.U64((long)(s.Offset + r * entry + 8)) >> 32, out var name)) result.Add(name);
        }
        return result;
    }

    readonly record struct SectionHeader(uint Type, ulong Offset, ulong Size, uint Link, uint Info);

    /// <summary>Bounds-checked view of a 64-bit little-endian ELF file's section headers.</summary>
    sealed class Elf
    {
        readonly byte[] bytes;
        public readonly SectionHeader[] Sections;

        public Elf(byte[] bytes, string what)
        {
            this.bytes = bytes;
            if (bytes.Length < 64 || bytes[0] != 0x7f || bytes[1] != 'E' || bytes[2] != 'L' || bytes[3] != 'F' || bytes[4] != 2 || bytes[5] != 1)
                throw new InvalidDataException($"{what} is not a 64-bit little-endian ELF file");
            long shoff = (long)U64(0x28);
            int size = U16(0x3A), count = U16(0x3C);
            Sections = new SectionHeader[count];
            for (int i = 0; i < count; i++)
            {
                long h = shoff + (long)i * size;
                Sections[i] = new SectionHeader(U32(h + 4), U64(h + 24), U64(h + 32), U32(h + 40), U32(h + 44));
            }
        }

        public int SectionIndex(uint type) => Array.FindIndex(Sections, s => s.Type == type);
        public SectionHeader? Section(uint type) => SectionIndex(type) is var i and >= 0 ? Sections[i] : null;

        public ushort U16(long at) => BinaryPrimitives.ReadUInt16LittleEndian(Span(at, 2));
        public uint U32(long at) => BinaryPrimitives.ReadUInt32LittleEndian(Span(at, 4));
        public ulong U64(long at) => BinaryPrimitives.ReadUInt64LittleEndian(Span(at, 8));

        /// <summary>NUL-terminated string at <paramref name="at"/> inside string-table section <paramref name="table"/>.</summary>
        public string Str(uint table, uint at)
        {
            if (table >= Sections.Length) throw new InvalidDataException("string table index out of range");
            long start = (long)Sections[table].Offset + at;
            int end = Array.IndexOf(bytes, (byte)0, (int)Math.Min(start, bytes.Length));
            if (start >= bytes.Length || end < 0) throw new InvalidDataException("string outside the file");
            return Encoding.ASCII.GetString(bytes, (int)start, end - (int)start);
        }

        ReadOnlySpan<byte> Span(long at, int length) =>
            at >= 0 && at + length <= bytes.Length ? bytes.AsSpan((int)at, length) : throw new InvalidDataException("ELF read outside the file");
    }
}
