"""A private cffi build of native/engine.c alone, for the engine's tests.

The engine is compiled with IVY_ASSERT turned into a longjmp back to the
entry point, so a broken invariant surfaces as an EngineAssertion carrying
the line and the condition instead of aborting the test process. The build is
cached under build/dsm-engine-<hash>/ keyed on the engine sources and this
file, so it is compiled once per change (about a second).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
ENGINE_C = NATIVE / "engine.c"
ENGINE_H = NATIVE / "engine.h"

# Test entry points: each arms the assertion trap, calls the engine and
# returns 0, or -1 with the failed condition in ivy_test_failure().
_TEST_PRELUDE = r"""
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

static jmp_buf ivy_test_trap;
static int ivy_test_armed;
static char ivy_test_msg[256];

static void ivy_test_fail(int line, const char *cond)
{
    snprintf(ivy_test_msg, sizeof ivy_test_msg, "engine.c:%d: assertion failed: %s", line, cond);
    if (ivy_test_armed)
        longjmp(ivy_test_trap, 1);
    abort();
}

#define IVY_ASSERT(cond) do { if (!(cond)) ivy_test_fail(__LINE__, #cond); } while (0)
"""

_TEST_WRAPPERS = r"""
#define IVY_TEST_CALL(call) do {            \
        ivy_test_armed = 1;                 \
        if (setjmp(ivy_test_trap)) {        \
            ivy_test_armed = 0;             \
            return -1;                      \
        }                                   \
        call;                               \
        ivy_test_armed = 0;                 \
        return 0;                           \
    } while (0)

int ivy_test_init(struct ivy_engine *e, const struct ivy_config *cfg, struct ivy_page *pages)
{ IVY_TEST_CALL(ivy_engine_init(e, cfg, pages)); }

int ivy_test_set_version(struct ivy_engine *e, uint64_t page, uint64_t version)
{ IVY_TEST_CALL(ivy_engine_set_version(e, page, version)); }

int ivy_test_fault(struct ivy_engine *e, uint64_t page, bool write, struct ivy_actions *out)
{ IVY_TEST_CALL(ivy_engine_fault(e, page, write, out)); }

int ivy_test_message(struct ivy_engine *e, const struct ivy_msg *m, struct ivy_actions *out)
{ IVY_TEST_CALL(ivy_engine_message(e, m, out)); }

const char *ivy_test_failure(void) { return ivy_test_msg; }
"""

_TEST_CDEF = """
int ivy_test_init(struct ivy_engine *e, const struct ivy_config *cfg, struct ivy_page *pages);
int ivy_test_set_version(struct ivy_engine *e, uint64_t page, uint64_t version);
int ivy_test_fault(struct ivy_engine *e, uint64_t page, bool write, struct ivy_actions *out);
int ivy_test_message(struct ivy_engine *e, const struct ivy_msg *m, struct ivy_actions *out);
const char *ivy_test_failure(void);
"""


class EngineAssertion(AssertionError):
    """An IVY_ASSERT inside engine.c failed."""


def header_cdef(header: str) -> str:
    """engine.h as cffi cdef: comments and guards dropped, constants left to the compiler."""
    text = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#define") and len(stripped.split()) >= 3:
            lines.append(f"#define {stripped.split()[1]} ...")
        elif stripped.startswith("#"):
            continue
        else:
            lines.append(line)
    cdef = "\n".join(lines)
    # Array sizes given by macros are left for the compiler to fill in.
    return re.sub(r"\[\s*IVY_[A-Z_]+\s*\]", "[...]", cdef)


def _source_hash() -> str:
    h = hashlib.sha256()
    for path in (ENGINE_C, ENGINE_H, Path(__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


_module: ModuleType | None = None


def load() -> ModuleType:
    """Compile (once per source change) and import the engine test module."""
    global _module
    if _module is not None:
        return _module
    import cffi

    digest = _source_hash()
    name = f"_ivy_engine_test_{digest}"
    build_dir = ROOT / "build" / f"dsm-engine-{digest}"
    built = sorted(build_dir.glob(f"{name}*.so")) if build_dir.exists() else []
    if not built:
        ffi = cffi.FFI()
        ffi.cdef(header_cdef(ENGINE_H.read_text()) + _TEST_CDEF)
        ffi.set_source(
            name,
            _TEST_PRELUDE + '#include "engine.c"\n' + _TEST_WRAPPERS,
            include_dirs=[str(NATIVE)],
            extra_compile_args=["-std=c11", "-UNDEBUG", "-O1"],
        )
        # Build aside and rename into place, so concurrent test runs never
        # load a half-written module.
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"{build_dir.name}.", dir=build_dir.parent))
        ffi.compile(tmpdir=str(scratch), verbose=False)
        try:
            os.rename(scratch, build_dir)
        except OSError:  # another run won the race; use its build
            shutil.rmtree(scratch, ignore_errors=True)
        built = sorted(build_dir.glob(f"{name}*.so"))
    spec = importlib.util.spec_from_file_location(name, built[0])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _module = module
    return module


@dataclass(frozen=True)
class Msg:
    """A protocol message as plain values (the same shape as struct ivy_msg)."""

    type: int
    flags: int
    requester: int
    sender: int
    hops: int
    page: int
    version: int
    copyset: int
    txid: int


@dataclass(frozen=True)
class Action:
    kind: int
    page: int
    to: int = 0  # SEND only
    msg: Msg | None = None  # SEND and PARK only


@dataclass(frozen=True)
class PageState:
    state: int
    owner: bool
    pending: int
    probowner: int
    copyset: int
    version: int
    acks_missing: int
    txid: int


# Constants mirrored from engine.h (checked against the compiled module in the unit tests).
INITIAL, INVALID, SHARED, MODIFIED = 0, 1, 2, 3
IDLE, WANT_READ, WANT_WRITE, WAIT_ACKS, READ_STALE = 0, 1, 2, 3, 4
READ_GIANTVM, READ_IVY = 0, 1
MGR_DYNAMIC, MGR_CENTRAL, MGR_FIXED = 0, 1, 2
MSG_READ, MSG_WRITE, MSG_REPLY, MSG_INVALIDATE, MSG_INV_ACK = 1, 2, 3, 4, 5
REPLY_DATA, REPLY_OWNERSHIP = 0x1, 0x2
ACT_SEND, ACT_MAP_RO, ACT_MAP_RW, ACT_ZAP, ACT_WRPROTECT = 1, 2, 3, 4, 5
ACT_WAKE, ACT_PARK, ACT_UNPARK, ACT_DONE = 6, 7, 8, 9

ACTION_NAMES = {
    ACT_SEND: "SEND", ACT_MAP_RO: "MAP_RO", ACT_MAP_RW: "MAP_RW", ACT_ZAP: "ZAP",
    ACT_WRPROTECT: "WRPROTECT", ACT_WAKE: "WAKE", ACT_PARK: "PARK", ACT_UNPARK: "UNPARK",
    ACT_DONE: "DONE",
}
MSG_NAMES = {MSG_READ: "READ", MSG_WRITE: "WRITE", MSG_REPLY: "REPLY",
             MSG_INVALIDATE: "INVALIDATE", MSG_INV_ACK: "INV_ACK"}


class CEngine:
    """One node's engine.c instance, with Python values in and out."""

    def __init__(self, self_id: int, nnodes: int, npages: int,
                 read_ownership: int = READ_GIANTVM, manager: int = MGR_DYNAMIC) -> None:
        mod = load()
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        self.npages = npages
        self._engine = self.ffi.new("struct ivy_engine *")
        self._pages = self.ffi.new("struct ivy_page[]", max(npages, 1))
        self._out = self.ffi.new("struct ivy_actions *")
        self._msg = self.ffi.new("struct ivy_msg *")
        cfg = self.ffi.new("struct ivy_config *", {
            "self": self_id, "nnodes": nnodes, "read_ownership": read_ownership,
            "manager": manager, "npages": npages})
        self._check(self.lib.ivy_test_init(self._engine, cfg, self._pages))

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise EngineAssertion(self.ffi.string(self.lib.ivy_test_failure()).decode())

    def set_version(self, page: int, version: int) -> None:
        self._check(self.lib.ivy_test_set_version(self._engine, page, version))

    def fault(self, page: int, write: bool) -> list[Action]:
        self._check(self.lib.ivy_test_fault(self._engine, page, write, self._out))
        return self._actions()

    def message(self, m: Msg) -> list[Action]:
        c = self._msg
        c.type, c.flags, c.requester, c.sender, c.hops = m.type, m.flags, m.requester, m.sender, m.hops
        c.page, c.version, c.copyset, c.txid = m.page, m.version, m.copyset, m.txid
        self._check(self.lib.ivy_test_message(self._engine, c, self._out))
        return self._actions()

    def route(self, page: int) -> int:
        return int(self.lib.ivy_engine_route(self._engine, page))

    def access(self, page: int) -> int:
        return int(self.lib.ivy_engine_access(self._engine, page))

    def page(self, page: int) -> PageState:
        p = self._pages[page]
        return PageState(p.state, bool(p.owner), p.pending, p.probowner, p.copyset, p.version,
                         p.acks_missing, p.txid)

    def _actions(self) -> list[Action]:
        out = self._out
        result = []
        for i in range(out.n):
            a = out.a[i]
            msg = None
            to = 0
            if a.kind in (ACT_SEND, ACT_PARK):
                m = a.msg
                msg = Msg(m.type, m.flags, m.requester, m.sender, m.hops, m.page, m.version,
                          m.copyset, m.txid)
                if a.kind == ACT_SEND:
                    to = a.to
            result.append(Action(a.kind, a.page, to, msg))
        return result


def describe(action: Action) -> str:
    name = ACTION_NAMES.get(action.kind, str(action.kind))
    if action.msg is None:
        return f"{name}(p{action.page})"
    m = action.msg
    flags = "+".join(n for f, n in ((REPLY_DATA, "DATA"), (REPLY_OWNERSHIP, "OWN")) if m.flags & f)
    body = (f"{MSG_NAMES.get(m.type, m.type)} p{m.page} req={m.requester} from={m.sender} "
            f"v={m.version} cs={m.copyset:#x} hops={m.hops}{' ' + flags if flags else ''}")
    return f"{name}->{action.to}({body})" if action.kind == ACT_SEND else f"{name}({body})"
