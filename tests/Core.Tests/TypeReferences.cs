using Mono.Cecil;

namespace AdapterService.Tests.Shared;

/// <summary>The types a compiled type uses, read with Mono.Cecil: what the layering tests check.</summary>
public static class TypeReferences
{
    public static TypeReference Outermost(TypeReference type)
    {
        while (type.DeclaringType is not null) type = type.DeclaringType;
        return type;
    }

    /// <summary>Every type a type's own code names: base, interfaces, attributes, members' signatures, locals and instructions.</summary>
    public static IEnumerable<TypeReference> Of(TypeDefinition type)
    {
        var found = new List<TypeReference>();
        void Add(TypeReference? t)
        {
            switch (t)
            {
                case null: return;
                case GenericInstanceType g:
                    Add(g.ElementType);
                    foreach (var a in g.GenericArguments) Add(a);
                    return;
                case TypeSpecification s:
                    Add(s.ElementType);
                    return;
                case GenericParameter:
                    return;
                default:
                    found.Add(t);
                    return;
            }
        }
        void Attributes(ICustomAttributeProvider p) { foreach (var a in p.CustomAttributes) Add(a.AttributeType); }

        Add(type.BaseType);
        Attributes(type);
        foreach (var i in type.Interfaces) Add(i.InterfaceType);
        foreach (var f in type.Fields) { Add(f.FieldType); Attributes(f); }
        foreach (var p in type.Properties) { Add(p.PropertyType); Attributes(p); }
        foreach (var m in type.Methods)
        {
            Attributes(m);
            Add(m.ReturnType);
            foreach (var p in m.Parameters) Add(p.ParameterType);
            if (!m.HasBody) continue;
            foreach (var v in m.Body.Variables) Add(v.VariableType);
            foreach (var instruction in m.Body.Instructions)
                switch (instruction.Operand)
                {
                    case TypeReference t: Add(t); break;
                    case MethodReference r:
                        Add(r.DeclaringType);
                        Add(r.ReturnType);
                        foreach (var p in r.Parameters) Add(p.ParameterType);
                        if (r is GenericInstanceMethod gm) foreach (var a in gm.GenericArguments) Add(a);
                        break;
                    case FieldReference f: Add(f.DeclaringType); Add(f.FieldType); break;
                }
        }
        return found;
    }
}
