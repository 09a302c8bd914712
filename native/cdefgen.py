"""cffi declarations generated from the C headers, so no declaration is written twice.

The headers in native/ are the one source of every type, constant and
function that Python sees. ``cdef_of(header_text)`` turns one header into
what ``FFI.cdef`` accepts:

- comments, include guards and includes go; ``_Static_assert``s go (the C
  compiler checks them);
- ``#define NAME value`` becomes ``#define NAME ...``: the compiler supplies
  the value, so a Python name can never disagree with C;
- array sizes given by a macro become ``[...]`` in structs and ``[]`` in
  parameters;
- a ``static inline`` function keeps its prototype, and its body goes (cffi
  calls it through a generated wrapper).

Used by native/build.py (the compiled modules) and tests/dsm/engine_ffi.py
(the engine's private test build).
"""
from __future__ import annotations

import re

_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)\s+\S")
_MACRO_ARRAY = re.compile(r"\[\s*[A-Z_][A-Z0-9_]*(\s*[-+*/]\s*[A-Z0-9_]+)*\s*\]")


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _skip_balanced(text: str, start: int, open_: str, close: str) -> int:
    """The index just past the bracket that closes the one at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced {open_}{close} from offset {start}")


def _drop_static_asserts(text: str) -> str:
    out, pos = [], 0
    for match in re.finditer(r"_Static_assert\s*\(", text):
        if match.start() < pos:
            continue
        out.append(text[pos:match.start()])
        end = _skip_balanced(text, match.end() - 1, "(", ")")
        pos = text.index(";", end) + 1
    out.append(text[pos:])
    return "".join(out)


def _inline_to_prototypes(text: str) -> str:
    """`static inline T f(args) { body }` -> `T f(args);`"""
    out, pos = [], 0
    for match in re.finditer(r"\bstatic\s+inline\s+", text):
        if match.start() < pos:
            continue
        body = text.index("{", match.end())
        out.append(text[pos:match.start()])
        params = text[match.end():body].rstrip()
        params = _MACRO_ARRAY.sub("[]", params)
        out.append(params + ";\n")
        pos = _skip_balanced(text, body, "{", "}")
    out.append(text[pos:])
    return "".join(out)


def cdef_of(header: str) -> str:
    """One header's declarations as cffi cdef text."""
    lines = []
    for line in _strip_comments(header).splitlines():
        stripped = line.strip()
        define = _DEFINE.match(stripped)
        if define and "(" not in stripped.split()[1]:
            lines.append(f"#define {define.group(1)} ...")
        elif stripped.startswith("#"):
            continue
        elif stripped:
            lines.append(line)
    text = _inline_to_prototypes(_drop_static_asserts("\n".join(lines)))
    text = re.sub(r"__attribute__\s*\(\(.*?\)\)", "", text)
    return _MACRO_ARRAY.sub("[...]", text)


def public_names(header: str) -> set[str]:
    """Every name a header declares for its users: macros, enum members, functions, structs.

    Macros and functions whose names start with an underscore or that are
    not prefixed ``ivy_``/``IVY_`` are private helpers and left out.
    """
    text = _strip_comments(header)
    names = {m.group(1) for m in re.finditer(r"#\s*define\s+(IVY_\w+)\s+\S", text)}
    names -= {m.group(1) for m in re.finditer(r"#\s*define\s+(IVY_\w+_H)\b", text)}
    for body in re.findall(r"\benum\s*\w*\s*\{(.*?)\}", text, flags=re.S):
        names |= {m.group(1) for m in re.finditer(r"\b(IVY_\w+)\b\s*(?:=|,|$)", body.strip())}
    names |= {m.group(1) for m in re.finditer(r"\b(ivy_\w+)\s*\(", text)}
    names |= {f"struct {m.group(1)}" for m in re.finditer(r"\bstruct\s+(ivy_\w+)\s*\{", text)}
    return names
