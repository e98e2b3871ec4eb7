"""Normal forms for code in prompts, so reformatted or consistently renamed code hashes alike.

Two snippets may share a normal form only when they are the same program. Every rewrite here
keeps meaning: Python is parsed and unparsed with only the names it binds, and nothing outside
it can see, renamed; other languages lose comments and layout only where a small lexer knows
its strings. Where a lexer cannot be sure (regex literals, heredocs, raw strings...), or the
language is unknown, the snippet stays verbatim: a missed hit costs one backend call, a false
one serves a wrong answer.
"""

from __future__ import annotations

import ast
import builtins
import functools
import re
import symtable
import warnings
from dataclasses import dataclass

MAX_AST_CHARS = 100_000  # larger snippets skip the ast path: parsing is superlinear in memory

_LINES = re.compile(r"[^\n]*\n|[^\n]+")
_OPEN = re.compile(r"([ \t]*)(`{3,}|~{3,})([^\n]*?)[ \t]*\r?\n?")
_CLOSE = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t]*\r?\n?")


@dataclass(frozen=True)
class Fenced:
    """One fenced block: its fence lines as written, its info string and its body."""

    opening: str
    info: str
    body: str
    closing: str  # "" when the block runs to the end of the text


def split_fenced(text: str) -> list[str | Fenced]:
    """The text as prose strings and fenced blocks, in order (CommonMark fences, any indent)."""
    pieces: list[str | Fenced] = []
    lines = _LINES.findall(text)
    prose: list[str] = []
    i = 0
    while i < len(lines):
        m = _OPEN.fullmatch(lines[i])
        if m is None or (m[2][0] == "`" and "`" in m[3]):
            prose.append(lines[i])
            i += 1
            continue
        indent, fence = m[1], m[2]
        j = i + 1
        body: list[str] = []
        while j < len(lines):
            close = _CLOSE.fullmatch(lines[j])
            if close and close[1][0] == fence[0] and len(close[1]) >= len(fence):
                break
            body.append(_dedent(lines[j], indent))
            j += 1
        if prose:
            pieces.append("".join(prose))
            prose = []
        text_body = "".join(body).replace("\r\n", "\n").removesuffix("\n")
        closing = lines[j] if j < len(lines) else ""
        pieces.append(Fenced(lines[i], m[3].strip(), text_body, closing))
        i = j + 1
    if prose:
        pieces.append("".join(prose))
    return pieces


def _dedent(line: str, indent: str) -> str:
    """Drop as much of the opening fence's indentation as the line has, as Markdown does."""
    k = 0
    while k < len(indent) and k < len(line) and line[k] == indent[k]:
        k += 1
    return line[k:]


_ALIASES = {
    "py": "python", "python3": "python", "py3": "python",
    "js": "javascript", "mjs": "javascript", "cjs": "javascript", "node": "javascript",
    "ts": "typescript",
    "h": "c", "c++": "cpp", "cc": "cpp", "cxx": "cpp", "hpp": "cpp", "hh": "cpp", "hxx": "cpp",
    "cu": "cuda", "objective-c": "objc",
    "cs": "csharp", "c#": "csharp",
    "golang": "go", "rs": "rust",
    "postgres": "postgresql", "psql": "postgresql",
    "shell": "sh", "zsh": "sh", "bash": "sh", "ksh": "sh",
}


def language(info: str | None) -> str | None:
    """The language a fence's info string names (first word, lower case, aliases merged)."""
    words = info.split() if info else []
    if not words:
        return None
    tag = words[0].lower()
    return _ALIASES.get(tag, tag)


@functools.lru_cache(maxsize=1024)  # earlier turns come back with every request of a chat
def normalise_code(code: str, language_tag: str | None) -> str:
    """A bare snippet in normal form; `language_tag` is a fence info string or None."""
    code = code.replace("\r\n", "\n")
    lang = language(language_tag)
    if lang in (None, "python"):
        tree = _parse(code)
        if tree is not None and (lang == "python" or _python_only(tree)):
            try:
                _rename(tree, code)
                return ast.unparse(tree)
            except (RecursionError, ValueError, SyntaxError, MemoryError):
                pass
    lexicon = _LEXICONS.get(lang) if lang else None
    if lexicon is None or "\0" in code:
        return code
    try:
        return _layout(_lex(code, lexicon), lexicon)
    except _Unsure:
        return code


# --- Python: parse, rename what the snippet binds, unparse -----------------------------------

_BUILTINS = frozenset(dir(builtins))
_IDENT = re.compile(r"[^\W\d]\w*")
_RENAMED = re.compile(r"_v\d+")
# Any of these lets a program see its own names, so renaming could change what it does.
_REFLECTIVE_NAMES = frozenset({"eval", "exec", "globals", "locals", "vars", "dir", "compile",
                               "__import__", "breakpoint"})
_REFLECTIVE_ATTRS = frozenset({"__dict__", "__code__", "__globals__", "__name__", "__qualname__",
                               "__module__", "__annotations__", "__defaults__", "__kwdefaults__",
                               "__closure__", "f_locals", "f_globals", "co_varnames", "co_names",
                               "co_cellvars", "co_freevars"})
_REFLECTIVE_MODULES = frozenset({"inspect", "dis"})
_PYTHON_ONLY = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom,
                ast.For, ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try,
                ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
                ast.Global, ast.Nonlocal, ast.Match)
# Where a node spells a name the renaming may rewrite; any other node's is its str `name`.
_SPELLING_FIELD = {ast.Name: "id", ast.arg: "arg", ast.alias: "asname", ast.MatchMapping: "rest"}


def _parse(code: str) -> ast.Module | None:
    if len(code) > MAX_AST_CHARS:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # the user's code, not ours to warn about
            return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _python_only(tree: ast.AST) -> bool:
    """Whether the tree has a construct no brace or shell language would parse alike."""
    return any(isinstance(node, _PYTHON_ONLY) for node in ast.walk(tree))


def _preorder(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _spellings(node: ast.AST) -> list[str]:
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return node.names
    value = getattr(node, _SPELLING_FIELD.get(type(node), "name"), None)
    return [value] if isinstance(value, str) else []


def _respell(node: ast.AST, mapping: dict[str, str]) -> None:
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        node.names = [mapping.get(name, name) for name in node.names]
        return
    field = _SPELLING_FIELD.get(type(node), "name")
    value = getattr(node, field, None)
    if isinstance(value, str) and value in mapping:
        setattr(node, field, mapping[value])


def _rename(tree: ast.Module, code: str) -> None:
    """Rename, in place and in order of first appearance, the names the snippet binds that
    nothing outside it can see; leave the tree alone when that cannot be made safe."""
    order: dict[str, None] = {}
    fixed: set[str] = set(_BUILTINS)  # names that keep their spelling everywhere
    classes: list[str] = []
    for node in _preorder(tree):
        if isinstance(node, ast.Name) and node.id in _REFLECTIVE_NAMES:
            return
        if isinstance(node, ast.Attribute):
            if node.attr in _REFLECTIVE_ATTRS:
                return
            fixed.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            fixed.add(node.arg)  # may name a parameter of a function defined here
        elif isinstance(node, ast.MatchClass):
            fixed.update(node.kwd_attrs)
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")
            if node.names[0].name == "*" or module[0] in _REFLECTIVE_MODULES:
                return
            fixed.update(module)
        elif isinstance(node, ast.alias):
            if node.name.split(".")[0] in _REFLECTIVE_MODULES:
                return
            fixed.update(node.name.split("."))  # imported names; only `as` aliases are ours
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            value = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            fixed.update(_IDENT.findall(value))  # getattr(m, "f"), __all__, format strings...
        elif isinstance(node, ast.ClassDef):
            classes.append(node.name)
        order.update(dict.fromkeys(_spellings(node)))
    try:
        fixed |= _unrenamable(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return
    fixed.update(name for name in order if name.startswith("__"))  # dunders and mangled names
    fixed.update(c for c in classes if any(x.startswith(f"_{c.lstrip('_')}__") for x in fixed))
    if any(_RENAMED.fullmatch(name) for name in fixed):
        return  # a kept name could be mistaken for a renamed one
    mapping = {name: f"_v{i}" for i, name in enumerate(n for n in order if n not in fixed)}
    for node in ast.walk(tree):
        _respell(node, mapping)


def _unrenamable(code: str) -> set[str]:
    """Names that, somewhere, resolve outside the snippet, or are class attributes (visible to
    callers, dataclass fields, model schemas)."""
    top = symtable.symtable(code, "<snippet>", "exec")
    tables = [top]
    for table in tables:
        tables.extend(table.get_children())
    bound = {s.get_name() for s in top.get_symbols() if s.is_local()}
    for table in tables:
        bound.update(s.get_name() for s in table.get_symbols()
                     if s.is_declared_global() and s.is_assigned())
    kept = set()
    for table in tables:
        in_class = table.get_type() == "class"
        for symbol in table.get_symbols():
            name = symbol.get_name()
            if in_class and symbol.is_local():
                kept.add(name)
            elif symbol.is_local() or symbol.is_parameter() or symbol.is_free():
                continue
            elif not (symbol.is_global() and name in bound):
                kept.add(name)
    return kept


# --- Other languages: a lexer that knows strings and comments --------------------------------

class _Unsure(Exception):
    """The lexer met a construct it cannot follow; the snippet stays verbatim."""


@dataclass(frozen=True)
class _Lexicon:
    """What the layout pass must know of a language to tell strings and comments from code."""

    line: re.Pattern | None = None     # a line comment opener
    block: tuple[str, str] | None = None
    quotes: str = ""                   # string delimiters, backslash escapes inside
    raw_quotes: str = ""               # string delimiters without escapes, may span lines
    multiline: bool = False            # escaped strings may span lines (shell)
    chars: bool = False                # ' is a char literal only when it closes at once (C, Rust)
    triple: bool = False               # Python's triple-quoted strings
    template: bool = False             # JS `...${expr}...`
    shell: bool = False                # # only at a word start; \x escapes outside quotes
    expressions: bool = False          # JS: / or < where an operand is due opens a regex or JSX
    indent: bool = False               # leading white space is syntax
    continued_comments: bool = False   # C: backslash-newline continues a // comment
    block_newline: bool = False        # a block comment with a line break ends a line (JS, Go)
    unsafe: re.Pattern | None = None   # constructs this lexer cannot follow


_C = dict(line=re.compile("//"), block=("/*", "*/"), quotes='"', chars=True)
_C_FAMILY = _Lexicon(**_C, continued_comments=True, unsafe=re.compile(r'R"|\?\?/'))
_JS = _Lexicon(line=re.compile("//"), block=("/*", "*/"), quotes="\"'", template=True,
               expressions=True, block_newline=True, unsafe=re.compile("<!--|-->"))
_LEXICONS: dict[str, _Lexicon] = {
    **dict.fromkeys(["c", "cpp", "cuda", "objc"], _C_FAMILY),
    "java": _Lexicon(**_C, unsafe=re.compile(r'"""|\\u')),
    "csharp": _Lexicon(**_C, unsafe=re.compile(r'@"|\$"|"""')),
    "rust": _Lexicon(**_C, unsafe=re.compile(r'(?<!\w)[bc]?r#*"')),
    "go": _Lexicon(**_C, raw_quotes="`", block_newline=True),
    **dict.fromkeys(["javascript", "typescript", "jsx", "tsx"], _JS),
    **dict.fromkeys(["sql", "mysql", "postgresql", "sqlite"], _Lexicon(
        line=re.compile(r"--(?=[ \t\n]|$)"), block=("/*", "*/"), raw_quotes="'\"`",
        unsafe=re.compile(r"\\|\$\w*\$|#|\["))),
    "sh": _Lexicon(line=re.compile("#"), quotes='"', raw_quotes="'", multiline=True, shell=True,
                   unsafe=re.compile(r"<<|\$'")),
    "python": _Lexicon(line=re.compile("#"), quotes="\"'", triple=True, indent=True,
                       unsafe=re.compile(r"""(?i)(?<!\w)(?:r?f|fr)['"]""")),
}
_CHAR = re.compile(r"'(?:[^'\\\n]|\\[^\n]{1,10}?)'")
_WORD = re.compile(r"[\w$]")
_JS_OPERAND_KEYWORDS = frozenset({"return", "typeof", "instanceof", "in", "of", "new", "delete",
                                  "void", "throw", "case", "do", "else", "yield", "await"})
_SPACES = re.compile(r"[ \t\f\v]+")
_PLACEHOLDER = re.compile("\0(\\d+)\0")


def _lex(code: str, lex: _Lexicon) -> list[tuple[bool, str]]:
    """Runs of (is_code, text); comments are gone (a block one leaves a space or a line break),
    strings, char literals, escapes and continuations are verbatim runs."""
    if lex.unsafe and lex.unsafe.search(code):
        raise _Unsure
    runs: list[tuple[bool, str]] = []
    buf: list[str] = []
    last, word = "", ""     # JS: last significant code character, and the word it ends
    in_word = False
    braces: list[int] = []  # JS: brace depth inside each open ${

    def keep(text: str) -> None:
        nonlocal last, word, in_word
        if buf:
            runs.append((True, "".join(buf)))
            buf.clear()
        runs.append((False, text))
        last, word, in_word = '"', "", False

    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if c == "\\" and (lex.shell or code.startswith("\n", i + 1)):
            keep(code[i:i + 2])
            i += 2
        elif lex.block and code.startswith(lex.block[0], i):
            end = code.find(lex.block[1], i + len(lex.block[0]))
            if end < 0 or lex.block[0] in code[i + len(lex.block[0]):end]:
                raise _Unsure  # unterminated or nested
            buf.append("\n" if lex.block_newline and "\n" in code[i:end] else " ")
            i = end + len(lex.block[1])
        elif lex.line and lex.line.match(code, i) and (not lex.shell or _word_start(code, i)):
            i = _line_end(code, i, lex.continued_comments)
        elif lex.chars and c == "'":
            m = _CHAR.match(code, i)
            if m is None:  # a lifetime, label or digit separator
                buf.append(c)
                last, word, in_word = c, "", False
                i += 1
            else:
                keep(m[0])
                i = m.end()
        elif lex.triple and c in lex.quotes and code.startswith(c * 3, i):
            end = _close(code, i + 3, c * 3, escapes=True, newlines=True)
            keep(code[i:end])
            i = end
        elif c in lex.quotes or c in lex.raw_quotes:
            escapes = c in lex.quotes
            end = _close(code, i + 1, c, escapes, newlines=lex.multiline or not escapes)
            if lex.shell and c == '"' and not _balanced_expansions(code[i + 1:end - 1]):
                raise _Unsure  # a nested quote inside $(...) or ${...} ended it early
            keep(code[i:end])
            i = end
        elif lex.template and (c == "`" or (c == "}" and braces and braces[-1] == 0)):
            if c == "}":
                braces.pop()
            end, opened = _template(code, i + 1)
            keep(code[i:end])
            if opened:
                braces.append(0)
            i = end
        else:
            if lex.expressions and c in "/<" and _operand_due(last, word):
                raise _Unsure  # a regex literal or JSX
            if braces and c in "{}":
                braces[-1] += 1 if c == "{" else -1
            buf.append(c)
            if _WORD.match(c):
                word = word + c if in_word else c
                last, in_word = c, True
            else:
                in_word = False
                if not c.isspace():
                    last, word = c, ""
            i += 1
    if braces:
        raise _Unsure
    if buf:
        runs.append((True, "".join(buf)))
    return runs


def _word_start(code: str, i: int) -> bool:
    return i == 0 or code[i - 1] in " \t\n;&|()<>"


def _line_end(code: str, i: int, continued: bool) -> int:
    end = code.find("\n", i)
    while continued and end > i and code[end - 1] == "\\":
        end = code.find("\n", end + 1)
    return len(code) if end < 0 else end


def _close(code: str, j: int, delim: str, escapes: bool, newlines: bool) -> int:
    """Index just past the string's closing delimiter."""
    while j < len(code):
        if escapes and code[j] == "\\":
            j += 2
        elif code.startswith(delim, j):
            return j + len(delim)
        elif code[j] == "\n" and not newlines:
            raise _Unsure
        else:
            j += 1
    raise _Unsure


def _template(code: str, j: int) -> tuple[int, bool]:
    """Scan a JS template literal's text: (index past it, whether it stopped at ${)."""
    while j < len(code):
        if code[j] == "\\":
            j += 2
        elif code[j] == "`":
            return j + 1, False
        elif code.startswith("${", j):
            return j + 2, True
        else:
            j += 1
    raise _Unsure


def _balanced_expansions(body: str) -> bool:
    """Whether every $(, ${ and ` in a double-quoted shell string closes inside it."""
    if (body.count("`") - body.count("\\`")) % 2:
        return False
    depth = 0
    for i, c in enumerate(body):
        if c in "({" and (depth or body[i - 1:i] == "$"):
            depth += 1
        elif c in ")}" and depth:
            depth -= 1
    return depth == 0


def _operand_due(last: str, word: str) -> bool:
    """Whether JS expects an operand here, so that / would open a regex and < a JSX tag."""
    if not last:
        return True
    if _WORD.match(last):
        return word in _JS_OPERAND_KEYWORDS
    return last not in ")]\""


def _layout(runs: list[tuple[bool, str]], lex: _Lexicon) -> str:
    """Collapse white space in code, drop blank lines; verbatim runs stay as they are."""
    kept: list[str] = []
    parts = []
    for is_code, text in runs:
        if is_code:
            parts.append(text)
        else:
            parts.append(f"\0{len(kept)}\0")
            kept.append(text)
    lines = []
    for line in "".join(parts).split("\n"):
        body = line.lstrip(" \t\f\v")
        indent = line[:len(line) - len(body)] if lex.indent else ""
        body = _SPACES.sub(" ", body).rstrip(" ")
        if body:
            lines.append(indent + body)
    return _PLACEHOLDER.sub(lambda m: kept[int(m[1])], "\n".join(lines))


# --- Does a message look like code? -----------------------------------------------------------

_STRONG = re.compile(r"""
    ^[ \t]*(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(.*\)[ \t]*(?:->.*)?:[ \t]*$
  | ^[ \t]*class[ \t]+\w+[ \t]*(?:\(.*\))?[ \t]*:[ \t]*$
  | ^[ \t]*\#include[ \t]*[<"]
  | ^[ \t]*(?:from[ \t]+[\w.]+[ \t]+)?import[ \t]+[\w.]+(?:[ \t]+as[ \t]+\w+)?[ \t]*;?[ \t]*$
  | ^[ \t]*(?:export[ \t]+)?(?:async[ \t]+)?function\*?[ \t]+\w+[ \t]*\(
  | ^[ \t]*(?:pub[ \t]+)?fn[ \t]+\w+[ \t]*[(<]
  | ^[ \t]*func[ \t]+(?:\([^)]*\)[ \t]*)?\w+[ \t]*\(
  | ^[ \t]*(?:public|private|protected)[ \t]+(?:static[ \t]+)?[\w<>\[\],]+[ \t]+\w+[ \t]*\(
  | ^[ \t]*(?:const|let|var)[ \t]+\w+[ \t]*=[^=]
  | ^[ \t]*(?:SELECT|INSERT[ \t]+INTO|UPDATE|DELETE[ \t]+FROM|CREATE[ \t]+TABLE)\b
  | ^[ \t]*(?:if|for|while)[ \t]*\(.*\)[ \t]*\{[ \t]*$
  | \w\([^()\n]*\)[ \t]*;[ \t]*$
""", re.M | re.X)
_WEAK = re.compile(r"""
    [;{][ \t]*$ | ^[ \t]*\} | ==|!=|<=|>=|&&|\|\||->|=>|::|\+\+|\+=|-=
  | \b[A-Za-z_][\w.]*\([^()\n]*\) | ^[ \t]*(?:return|print)\b
""", re.X)


# Canonicalising a request asks about its query twice (its text, then whether it has code), and
# popular queries come again and again; the guess parses the text with `ast`, the dearest step of
# an exact hit's own code. Short texts' answers are kept: 1,024 of at most 2 KB each.
REMEMBERED_CHARS = 2048


def looks_like_code(text: str) -> bool:
    """A cheap guess that unfenced text is source code rather than prose."""
    return _remembered_guess(text) if len(text) <= REMEMBERED_CHARS else _guess(text)


@functools.lru_cache(maxsize=1024)
def _remembered_guess(text: str) -> bool:
    return _guess(text)


def _guess(text: str) -> bool:
    if _STRONG.search(text):
        return True
    if sum(1 for line in text.split("\n") if _WEAK.search(line)) >= 2:
        return True
    tree = _parse(text)
    return tree is not None and _python_only(tree)
