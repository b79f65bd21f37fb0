using System.Text;

namespace AdapterService.Core.Text.Jinja;

enum TokenType
{
    Text, NumericLiteral, StringLiteral, Identifier, Equals, OpenParen, CloseParen, OpenStatement, CloseStatement,
    OpenExpression, CloseExpression, OpenSquareBracket, CloseSquareBracket, OpenCurlyBracket, CloseCurlyBracket,
    Comma, Dot, Colon, Pipe, AdditiveBinaryOperator, MultiplicativeBinaryOperator, ExponentiationBinaryOperator,
    ComparisonBinaryOperator, UnaryOperator, Comment,
    /// <summary>Where a {% generation %} (Value "start") or {% endgeneration %} tag stood.</summary>
    Generation,
}

/// <summary>A token; <see cref="Position"/> is its offset in the original source, for error messages.</summary>
sealed class Token(string value, TokenType type, int position)
{
    public string Value { get; set; } = value;
    public TokenType Type { get; } = type;
    public int Position { get; } = position;
}

/// <summary>
/// The reference's lexer (lexer.ts): the source is preprocessed as text first (a final newline dropped, lstrip_blocks
/// and trim_blocks by pattern, generation tags cut out with the whitespace their '-' asks for), then cut into tokens,
/// '-' markers trimming the neighbouring text. Unlike the reference, the cut-out generation tags leave a token behind
/// so the interpreter can report their spans.
/// </summary>
static class Lexer
{
    static readonly (string Text, TokenType Type)[] Table =
    [
        ("{%", TokenType.OpenStatement), ("%}", TokenType.CloseStatement), ("{{", TokenType.OpenExpression),
        ("}}", TokenType.CloseExpression), ("(", TokenType.OpenParen), (")", TokenType.CloseParen),
        ("{", TokenType.OpenCurlyBracket), ("}", TokenType.CloseCurlyBracket), ("[", TokenType.OpenSquareBracket),
        ("]", TokenType.CloseSquareBracket), (",", TokenType.Comma), (".", TokenType.Dot), (":", TokenType.Colon),
        ("|", TokenType.Pipe), ("<=", TokenType.ComparisonBinaryOperator), (">=", TokenType.ComparisonBinaryOperator),
        ("==", TokenType.ComparisonBinaryOperator), ("!=", TokenType.ComparisonBinaryOperator),
        ("<", TokenType.ComparisonBinaryOperator), (">", TokenType.ComparisonBinaryOperator),
        ("+", TokenType.AdditiveBinaryOperator), ("-", TokenType.AdditiveBinaryOperator), ("~", TokenType.AdditiveBinaryOperator),
        ("**", TokenType.ExponentiationBinaryOperator), ("*", TokenType.MultiplicativeBinaryOperator),
        ("//", TokenType.MultiplicativeBinaryOperator), ("/", TokenType.MultiplicativeBinaryOperator),
        ("%", TokenType.MultiplicativeBinaryOperator), ("=", TokenType.Equals),
    ];

    /// <summary>The preprocessed text, each character's offset in the original, and the generation tags' places.</summary>
    sealed record Preprocessed(string Text, int[] Origin, List<(int Position, bool Start)> Marks);

    public static List<Token> Tokenize(string source)
    {
        var (src, origin, marks) = Preprocess(source);
        var tokens = new List<Token>();
        int cursor = 0, curlyDepth = 0, nextMark = 0;
        int At(int i) => i < origin.Length ? origin[i] : source.Length;
        char Char(int i) => i < src.Length ? src[i] : '\0';
        bool StartsWith(string s) => string.CompareOrdinal(src, cursor, s, 0, s.Length) == 0 && cursor + s.Length <= src.Length;
        JinjaException Error(string message) => new(Parser.Locate(source, At(cursor), message));
        TokenType? Last() => tokens.Count > 0 ? tokens[^1].Type : null;

        // consumeWhile: a string literal's escapes included; reaching the end of input while consuming is an error.
        string ConsumeWhile(Func<char, bool> predicate)
        {
            var sb = new StringBuilder();
            while (cursor < src.Length && predicate(src[cursor]))
            {
                if (src[cursor] == '\\')
                {
                    if (++cursor >= src.Length) throw Error("Unexpected end of input");
                    char escaped = src[cursor++];
                    if (escaped is 'x' or 'u')
                    {
                        int length = escaped == 'x' ? 2 : 4;
                        string hex = src.Substring(cursor, Math.Min(length, src.Length - cursor));
                        if (hex.Length != length || !hex.All(char.IsAsciiHexDigit))
                            throw Error($"Invalid hexadecimal escape sequence: \\{escaped}{hex}");
                        sb.Append((char)Convert.ToInt32(hex, 16));
                        cursor += length;
                        continue;
                    }
                    sb.Append(escaped switch
                    {
                        'n' => '\n', 't' => '\t', 'r' => '\r', 'b' => '\b', 'f' => '\f', 'v' => '\v',
                        '\'' or '"' or '\\' => escaped,
                        _ => throw Error($"Unexpected escaped character: {escaped}"),
                    });
                    continue;
                }
                sb.Append(src[cursor++]);
                if (cursor >= src.Length) throw Error("Unexpected end of input");
            }
            return sb.ToString();
        }

        // {%- and the like trim the text before them, through any generation tags in between.
        void StripTrailingWhitespace()
        {
            for (int i = tokens.Count - 1; i >= 0; i--)
            {
                if (tokens[i].Type == TokenType.Generation) continue;
                if (tokens[i].Type != TokenType.Text) return;
                tokens[i].Value = Js.TrimEnd(tokens[i].Value);
                if (tokens[i].Value.Length > 0) return;
                tokens.RemoveAt(i);
            }
        }

        void SkipLeadingWhitespace()
        {
            while (cursor < src.Length && Js.IsWhiteSpace(src[cursor])) cursor++;
        }

        while (cursor < src.Length)
        {
            var last = Last();
            bool betweenTags = last is null or TokenType.CloseStatement or TokenType.CloseExpression or TokenType.Comment or TokenType.Generation;
            if ((betweenTags || last == TokenType.Text) && nextMark < marks.Count && marks[nextMark].Position <= cursor)
            {
                tokens.Add(new Token(marks[nextMark].Start ? "start" : "end", TokenType.Generation, At(cursor)));
                nextMark++;
                continue;
            }
            if (betweenTags)
            {
                int start = cursor, stop = nextMark < marks.Count ? marks[nextMark].Position : src.Length;
                while (cursor < stop && !(src[cursor] == '{' && Char(cursor + 1) is '%' or '{' or '#')) cursor++;
                if (cursor > start)
                {
                    tokens.Add(new Token(src[start..cursor], TokenType.Text, At(start)));
                    continue;
                }
            }

            if (src[cursor] == '{' && Char(cursor + 1) == '#')
            {
                int position = cursor;
                cursor += 2;
                bool stripBefore = Char(cursor) == '-';
                if (stripBefore) cursor++;
                int start = cursor;
                while (Char(cursor) != '#' || Char(cursor + 1) != '}')
                {
                    if (cursor + 2 >= src.Length) throw Error("Missing end of comment tag");
                    cursor++;
                }
                string comment = src[start..cursor];
                bool stripAfter = comment.EndsWith('-');
                if (stripBefore) StripTrailingWhitespace();
                tokens.Add(new Token(stripAfter ? comment[..^1] : comment, TokenType.Comment, At(position)));
                cursor += 2;
                if (stripAfter) SkipLeadingWhitespace();
                continue;
            }
            if (StartsWith("{%-"))
            {
                StripTrailingWhitespace();
                tokens.Add(new Token("{%", TokenType.OpenStatement, At(cursor)));
                cursor += 3;
                continue;
            }
            if (StartsWith("{{-"))
            {
                StripTrailingWhitespace();
                tokens.Add(new Token("{{", TokenType.OpenExpression, At(cursor)));
                curlyDepth = 0;
                cursor += 3;
                continue;
            }

            ConsumeWhile(Js.IsWhiteSpace);

            if (StartsWith("-%}"))
            {
                tokens.Add(new Token("%}", TokenType.CloseStatement, At(cursor)));
                cursor += 3;
                SkipLeadingWhitespace();
                continue;
            }
            if (StartsWith("-}}"))
            {
                tokens.Add(new Token("}}", TokenType.CloseExpression, At(cursor)));
                cursor += 3;
                SkipLeadingWhitespace();
                continue;
            }
            if (cursor >= src.Length) break;

            char c = src[cursor];
            if (c is '-' or '+')
            {
                last = Last();
                if (last is null or TokenType.Text) throw Error($"Unexpected character: {c}");
                if (last is not (TokenType.Identifier or TokenType.NumericLiteral or TokenType.StringLiteral or TokenType.CloseParen or TokenType.CloseSquareBracket))
                {
                    // A sign, not an operator: (-1), [-1], not -1. With digits after it, it is part of the number.
                    int position = cursor++;
                    string number = ConsumeWhile(char.IsAsciiDigit);
                    if (number.Length > 0 && Char(cursor) == '.' && char.IsAsciiDigit(Char(cursor + 1)))
                    {
                        cursor++;
                        number = $"{number}.{ConsumeWhile(char.IsAsciiDigit)}";
                    }
                    tokens.Add(new Token(c + number, number.Length > 0 ? TokenType.NumericLiteral : TokenType.UnaryOperator, At(position)));
                    continue;
                }
            }

            bool matched = false;
            foreach (var (text, type) in Table)
            {
                if (text == "}}" && curlyDepth > 0) continue;
                if (!StartsWith(text)) continue;
                tokens.Add(new Token(text, type, At(cursor)));
                if (type == TokenType.OpenExpression) curlyDepth = 0;
                else if (type == TokenType.OpenCurlyBracket) curlyDepth++;
                else if (type == TokenType.CloseCurlyBracket) curlyDepth--;
                cursor += text.Length;
                matched = true;
                break;
            }
            if (matched) continue;

            if (c is '\'' or '"')
            {
                int position = cursor++;
                string value = ConsumeWhile(x => x != c);
                tokens.Add(new Token(value, TokenType.StringLiteral, At(position)));
                cursor++;
                continue;
            }
            if (char.IsAsciiDigit(c))
            {
                int position = cursor;
                string number = ConsumeWhile(char.IsAsciiDigit);
                if (Last() != TokenType.Dot && Char(cursor) == '.' && char.IsAsciiDigit(Char(cursor + 1)))
                {
                    cursor++;
                    number = $"{number}.{ConsumeWhile(char.IsAsciiDigit)}";
                }
                tokens.Add(new Token(number, TokenType.NumericLiteral, At(position)));
                continue;
            }
            if (Js.IsWord(c))
            {
                int position = cursor;
                tokens.Add(new Token(ConsumeWhile(Js.IsWord), TokenType.Identifier, At(position)));
                continue;
            }
            throw Error($"Unexpected character: {c}");
        }
        // Tags at the very end (nothing rendered after them) still mark their place.
        for (; nextMark < marks.Count; nextMark++)
            tokens.Add(new Token(marks[nextMark].Start ? "start" : "end", TokenType.Generation, source.Length));
        return tokens;
    }

    /// <summary>The reference's preprocess(), written out by hand so that it runs in linear time on any input.</summary>
    static Preprocessed Preprocess(string source)
    {
        var text = new StringBuilder(source.Length);
        var origin = new List<int>(source.Length);
        int end = source.EndsWith('\n') ? source.Length - 1 : source.Length;

        // lstrip_blocks: /^[ \t]*({[#%-])/gm drops the spaces and tabs before a tag that starts a line.
        for (int i = 0; i < end;)
        {
            bool lineStart = i == 0 || source[i - 1] is '\n' or '\r' or '\u2028' or '\u2029';
            if (lineStart)
            {
                int j = i;
                while (j < end && source[j] is ' ' or '\t') j++;
                if (j + 1 < end && source[j] == '{' && source[j + 1] is '#' or '%' or '-') i = j;
            }
            int lineEnd = i;
            do lineEnd++; while (lineEnd < end && source[lineEnd - 1] is not ('\n' or '\r' or '\u2028' or '\u2029'));
            for (; i < lineEnd; i++) { text.Append(source[i]); origin.Add(i); }
        }

        // trim_blocks: /([#%-]})\n/g drops the newline right after a tag's end.
        var trimmed = new StringBuilder(text.Length);
        var trimmedOrigin = new List<int>(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            trimmed.Append(text[i]);
            trimmedOrigin.Add(origin[i]);
            if (text[i] == '}' && i > 0 && text[i - 1] is '#' or '%' or '-' && i + 1 < text.Length && text[i + 1] == '\n') i++;
        }

        // /(\s*){%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/gs: the tag goes, with the whitespace before it when '{%-'
        // and after it when '-%}'; its place is kept as a mark.
        var result = new StringBuilder(trimmed.Length);
        var resultOrigin = new List<int>(trimmed.Length);
        var marks = new List<(int, bool)>();
        int copied = 0;
        for (int i = 0; i < trimmed.Length; i++)
        {
            if (trimmed[i] != '{' || i + 1 >= trimmed.Length || trimmed[i + 1] != '%') continue;
            if (GenerationTag(trimmed, i) is not var (tagEnd, start, lstrip, rstrip)) continue;
            int before = i;
            while (before > copied && Js.IsWhiteSpace(trimmed[before - 1])) before--;
            int after = tagEnd;
            while (after < trimmed.Length && Js.IsWhiteSpace(trimmed[after])) after++;
            for (int k = copied; k < (lstrip ? before : i); k++) { result.Append(trimmed[k]); resultOrigin.Add(trimmedOrigin[k]); }
            marks.Add((result.Length, start));
            if (!rstrip) for (int k = tagEnd; k < after; k++) { result.Append(trimmed[k]); resultOrigin.Add(trimmedOrigin[k]); }
            copied = after;
            i = after - 1;
        }
        for (int k = copied; k < trimmed.Length; k++) { result.Append(trimmed[k]); resultOrigin.Add(trimmedOrigin[k]); }
        return new Preprocessed(result.ToString(), resultOrigin.ToArray(), marks);
    }

    /// <summary>Matches {%(-?)\s*(?:end)?generation\s*(-?)%} at <paramref name="i"/>.</summary>
    static (int End, bool Start, bool LStrip, bool RStrip)? GenerationTag(StringBuilder s, int i)
    {
        int j = i + 2;
        bool lstrip = j < s.Length && s[j] == '-';
        if (lstrip) j++;
        while (j < s.Length && Js.IsWhiteSpace(s[j])) j++;
        bool start = true;
        if (Matches(s, j, "end")) { start = false; j += 3; }
        if (!Matches(s, j, "generation")) return null;
        j += "generation".Length;
        while (j < s.Length && Js.IsWhiteSpace(s[j])) j++;
        bool rstrip = j < s.Length && s[j] == '-';
        if (rstrip) j++;
        return Matches(s, j, "%}") ? (j + 2, start, lstrip, rstrip) : null;
    }

    static bool Matches(StringBuilder s, int at, string word)
    {
        if (at + word.Length > s.Length) return false;
        for (int k = 0; k < word.Length; k++) if (s[at + k] != word[k]) return false;
        return true;
    }
}
