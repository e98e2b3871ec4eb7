import builtins
import contextlib
import io
import keyword
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catcache.proxy.codenorm import (
    MAX_AST_CHARS,
    looks_like_code,
    normalise_code,
    split_fenced,
)

PROGRAM = '''\
import math as {m}

def {f}({a}, {b}=2):
    """Sum things."""
    {t} = {a} + {b}
    for {i} in range({b}):
        {t} += {i} * 2
    return [{x} * {t} for {x} in range({a})]

class {C}:
    scale = 3

    def grow(self, {v}):
        return self.scale * {v} + {m}.floor(1.5)

{r} = {f}(3, 4)
print({r}, {C}().grow(len({r})))
'''
SLOTS = "mfabtixCvr"
TEMPLATE_WORDS = {"math", "floor", "ceil", "scale", "grow", "self", "Sum", "things", "_"}

identifier = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,7}", fullmatch=True).filter(
    lambda s: not keyword.iskeyword(s) and not keyword.issoftkeyword(s)
    and s not in dir(builtins) and s not in TEMPLATE_WORDS)
names = st.lists(identifier, min_size=len(SLOTS), max_size=len(SLOTS), unique=True).map(
    lambda xs: dict(zip(SLOTS, xs)))

MUTATIONS = [
    ("{a} + {b}", "{a} - {b}"),
    ("{i} * 2", "{i} * 3"),
    ("{i} * 2", "{i} ** 2"),
    ("range({b})", "range({a})"),
    ("{m}.floor(1.5)", "{m}.ceil(1.5)"),
    ("len({r})", "sum({r})"),
    ("scale = 3", "scale = 3.0"),
    ("{f}(3, 4)", "{f}(4, 3)"),
    ('"""Sum things."""', '"""Sum other things."""'),
    ("print(", "repr("),
]


def python(template: str, slots: dict) -> str:
    return normalise_code(template.format(**slots), "python")


def run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<snippet>", "exec"), {"__name__": "snippet"})
    return out.getvalue()


@st.composite
def reformatted(draw, template: str) -> str:
    """The template with comments, blank lines, another indent unit and other spacing."""
    unit = draw(st.sampled_from(["  ", "    ", "\t", "        "]))
    lines = []
    for line in template.splitlines():
        stripped = line.lstrip(" ")
        line = unit * ((len(line) - len(stripped)) // 4) + stripped
        if draw(st.booleans()):
            line = re.sub(r" ([+*=]) ", r"\1", line)
        if line.strip() and draw(st.booleans()):
            line += "  # " + draw(st.text("abc xyz'\"#", max_size=12))
        lines.append(line)
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "   ", "# note", unit + "# indented note"])))
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None)
@given(names, names)
def test_consistent_renaming_is_the_same_code(one, other):
    assert python(PROGRAM, one) == python(PROGRAM, other)


@settings(max_examples=40, deadline=None)
@given(names, st.data())
def test_reformatting_is_the_same_code(slots, data):
    text = data.draw(reformatted(PROGRAM)).format(**slots)
    assert normalise_code(text, "py") == python(PROGRAM, slots)


@settings(max_examples=25, deadline=None)
@given(names)
def test_normal_form_runs_like_the_original(slots):
    code = PROGRAM.format(**slots)
    assert run(normalise_code(code, "python")) == run(code)


@settings(max_examples=60, deadline=None)
@given(names, names, st.sampled_from(MUTATIONS))
def test_a_changed_operator_literal_or_call_is_other_code(one, other, mutation):
    old, new = mutation
    assert old in PROGRAM
    assert python(PROGRAM.replace(old, new), one) != python(PROGRAM, other)


def test_what_is_renamed_and_what_is_not():
    code = ("import os\nimport numpy as np\nfrom json import dumps as d, loads\n"
            "def f(a, b):\n    return os.path.join(a, b.upper(), key=np, x=d(loads))\n")
    assert normalise_code(code, "python") == (
        "import os\nimport numpy as _v0\nfrom json import dumps as _v1, loads\n\n"
        "def _v2(_v3, _v4):\n    return os.path.join(_v3, _v4.upper(), key=_v0, x=_v1(loads))")


@pytest.mark.parametrize("one, other", [
    ("print(x)", "len(x)"),                    # a builtin is never renamed
    ("y = x + 1", "y = z + 1"),                # names only read refer outside the snippet
    ("obj.append(1)", "obj.extend(1)"),        # attribute names
    ("f(a=1)", "f(b=1)"),                      # keyword arguments
    ("import os", "import sys"),               # imported modules
    # x is free in f but bound in g: renaming it by spelling would merge the two programs
    ("def f():\n    return x\ndef g(x):\n    return x",
     "def f():\n    return y\ndef g(y):\n    return y"),
    # a parameter named by a keyword argument is the callee's interface
    ("def f(a):\n    return a\nf(a=1)", "def f(b):\n    return b\nf(a=1)"),
    # class attributes are visible to callers (fields, methods, schemas)
    ("class A:\n    x = 1\nprint(A.x)", "class A:\n    y = 1\nprint(A.x)"),
    # names a string may look up
    ("x = 1\nprint(eval('x'))", "y = 1\nprint(eval('x'))"),
    ("x = 1\nprint(getattr(m, 'x'))", "y = 1\nprint(getattr(m, 'x'))"),
    # a kept name spelt like a renamed one
    ("a = 1\nprint(_v0)", "a = 1\nprint(a)"),
    # mangled names depend on the class name
    ("class Foo:\n    def m(self):\n        self.__x = 1\nprint(Foo()._Foo__x)",
     "class Bar:\n    def m(self):\n        self.__x = 1\nprint(Bar()._Foo__x)"),
    ("a + b", "a - b"),
    ("x = 'a  b'", "x = 'a b'"),
    ("x = 1", "x = 1.0"),
])
def test_different_python_stays_different(one, other):
    assert normalise_code(one, "python") != normalise_code(other, "python")


def test_python_that_does_not_parse_loses_comments_only():
    one = 'print "a  b"   # py2\n\n\nprint  "c"\n'
    assert normalise_code(one, "python") == 'print "a  b"\nprint "c"'
    assert normalise_code('print "a b"', "python") != normalise_code('print "a  b"', "python")


def test_large_snippets_skip_the_parser():
    code = "x = 1  # c\n" * (MAX_AST_CHARS // 10)
    assert normalise_code(code, "python") == "\n".join(["x = 1"] * (MAX_AST_CHARS // 10))


JS = '''\
function total(a, b) {
    const sum = a + b;
    return `${sum} is "${a}"` + "x // y" + '/* z */';
}
console.log(total(1, 2));
'''
C = '''\
#include <stdio.h>
int main(void) {
    char *s = "a  // b";
    printf("%s %c\\n", s, '"');
    return 0;
}
'''
comment_text = st.text("abc xyz'\"`", max_size=10)


@st.composite
def commented(draw, code: str) -> str:
    """Code with // and /* */ comments, blank lines and other indentation and spacing."""
    out = []
    for line in code.splitlines():
        indent = draw(st.sampled_from(["", " ", "\t", "        "]))
        line = indent + line.strip()
        if draw(st.booleans()):
            line = line.replace(" = ", draw(st.sampled_from([" =  ", "\t=\t", " /* c */ = "])))
        if draw(st.booleans()):
            line += " // " + draw(comment_text)
        out.append(line)
        if draw(st.booleans()):
            out.append(draw(st.sampled_from(["", "  ", "/* " + draw(comment_text) + " */"])))
    return "\n".join(out)


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from([("javascript", JS), ("js", JS), ("c", C), ("cpp", C)]))
def test_comments_and_layout_do_not_count(data, case):
    lang, code = case
    assert normalise_code(data.draw(commented(code)), lang) == normalise_code(code, lang)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["js", "c", "java", "go", "rust", "python", "sh"]),
       st.text(" ab/*#-", min_size=1, max_size=8), st.text(" ab/*#-", min_size=1, max_size=8))
def test_string_literals_are_kept_exactly(lang, one, other):
    # comment markers and runs of spaces inside a string literal are its value
    template = 'x = "{}";  // c' if lang != "sh" else 'x="{}"   # c'
    if lang == "python":
        template = 'print "{}"  # c'
    a, b = normalise_code(template.format(one), lang), normalise_code(template.format(other), lang)
    assert (a == b) == (one == other)


@pytest.mark.parametrize("lang, one, other", [
    ("js", "a = b + c; // x", "a = b - c; // x"),
    ("sql", "SELECT a -- c\nFROM t WHERE x = 'a -- b'", "SELECT a -- c\nFROM t WHERE x = 'a -- c'"),
    ("sql", "SELECT 1--1", "SELECT 1--2"),            # MySQL reads this as 1 - -1
    ("sh", "echo a\\  b", "echo a\\ b"),                # an escaped space is a character
    ("sh", "echo a#b", "echo a#c"),                     # # starts a comment only at a word start
    ("sh", "echo a \\\n\necho b", "echo a \\\necho b"),  # a line continuation
    ("c", "#define X 1 /* a\n b */ + 2", "#define X 1\n + 2"),  # a comment is a space in C
    ("c", "// c \\\nint x;", "int x;"),                 # backslash-newline continues a comment
    ("js", "x = /[/*]/.test(b) */ + 1", "x = /[/*]/.test(c) */ + 1"),  # a regex literal
    ("js", "return <a>see // here</a>", "return <a>see // there</a>"),  # JSX text
    ("rust", "fn f<'a>() { let s = \"it's  ok\"; }", "fn f<'a>() { let s = \"it's ok\"; }"),
    ("yaml", "a:\n  b:\n    c: 1", "a:\n  b:\n  c: 1"),  # unknown languages stay verbatim
    (None, "a  b", "a b"),                              # so do untagged blocks that are not Python
])
def test_different_code_stays_different(lang, one, other):
    assert normalise_code(one, lang) != normalise_code(other, lang)


def test_untagged_python_is_recognised():
    assert normalise_code("for i in range(3):\n    print( i )", None) == \
        "for _v0 in range(3):\n    print(_v0)"
    assert normalise_code("x = a // b", None) == "x = a // b"  # could be JS with a comment


def test_fences_follow_commonmark():
    pieces = split_fenced("a\n  ````py extra\n  x\n  ```\n  ````\nb")
    assert pieces[0] == "a\n" and pieces[2] == "b"
    assert pieces[1].info == "py extra" and pieces[1].body == "x\n```"
    assert split_fenced("x ``` y") == ["x ``` y"]


@pytest.mark.parametrize("text, expected", [
    ("How do I sort a list in Python?", False),
    ("Tell me about the French revolution; it was long.", False),
    ("def f(x):\n    return x", True),
    ("x = [i * i for i in range(10)]", True),
    ("#include <stdio.h>\nint main() { return 0; }", True),
    ("const x = 1;", True),
    ("SELECT * FROM t", True),
])
def test_looks_like_code(text, expected):
    assert looks_like_code(text) is expected
