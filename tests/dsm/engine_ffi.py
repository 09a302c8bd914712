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
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from hypervisor.cenum import enum_members, lowercase
from native.cdefgen import cdef_of

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
ENGINE_C = NATIVE / "engine.c"
ENGINE_H = NATIVE / "engine.h"
CDEFGEN = NATIVE / "cdefgen.py"

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

int ivy_test_read_fault_write_soon(struct ivy_engine *e, uint64_t page, struct ivy_actions *out)
{ IVY_TEST_CALL(ivy_engine_read_fault_write_soon(e, page, out)); }

int ivy_test_message(struct ivy_engine *e, const struct ivy_msg *m, struct ivy_actions *out)
{ IVY_TEST_CALL(ivy_engine_message(e, m, out)); }

int ivy_test_hold_event(struct ivy_engine *e, uint64_t page, unsigned event, struct ivy_actions *out)
{ IVY_TEST_CALL(ivy_engine_hold_event(e, page, event, out)); }

int ivy_test_prefetch(struct ivy_engine *e, uint64_t page, struct ivy_actions *out)
{ IVY_TEST_CALL(ivy_engine_prefetch(e, page, out)); }

int ivy_test_check(const struct ivy_engine *e, const struct ivy_msg *m, struct ivy_verdict *v)
{ IVY_TEST_CALL(*v = ivy_engine_check(e, m)); }

int ivy_test_map_owned(struct ivy_engine *e, uint64_t page, struct ivy_actions *out, bool *mapped)
{ IVY_TEST_CALL(*mapped = ivy_engine_map_owned(e, page, out)); }

const char *ivy_test_failure(void) { return ivy_test_msg; }
"""

_TEST_CDEF = """
int ivy_test_init(struct ivy_engine *e, const struct ivy_config *cfg, struct ivy_page *pages);
int ivy_test_set_version(struct ivy_engine *e, uint64_t page, uint64_t version);
int ivy_test_fault(struct ivy_engine *e, uint64_t page, bool write, struct ivy_actions *out);
int ivy_test_read_fault_write_soon(struct ivy_engine *e, uint64_t page, struct ivy_actions *out);
int ivy_test_message(struct ivy_engine *e, const struct ivy_msg *m, struct ivy_actions *out);
int ivy_test_hold_event(struct ivy_engine *e, uint64_t page, unsigned event, struct ivy_actions *out);
int ivy_test_prefetch(struct ivy_engine *e, uint64_t page, struct ivy_actions *out);
int ivy_test_check(const struct ivy_engine *e, const struct ivy_msg *m, struct ivy_verdict *v);
int ivy_test_map_owned(struct ivy_engine *e, uint64_t page, struct ivy_actions *out, bool *mapped);
const char *ivy_test_failure(void);
"""


class EngineAssertion(AssertionError):
    """An IVY_ASSERT inside engine.c failed."""


# Test-only mutants of engine.c: one handler broken by source edits made
# here (old, new; or several such pairs), compiled into its own test module
# (never into the real one), to show that the simulator's sweep catches a
# wrong transition.
MUTANTS: dict[str, tuple[str, str] | tuple[tuple[str, str], ...]] = {
    # serve_read_keep forgets to add the reader to the copyset, so a later
    # writer never invalidates that reader's copy.
    "serve_read_keep_forgets_reader": (
        "    downgrade_to_shared(p, page, out);\n    p->copyset |= NODE_BIT(m->requester);\n",
        "    downgrade_to_shared(p, page, out);\n"),
    # serve_read_migratory grants the page whole but the server keeps its
    # copy mapped: the reader's write then leaves a stale readable copy.
    "serve_read_migratory_keeps_copy": (
        "    serve_write(e, p, page, m, out);\n}\n",
        "    serve_write(e, p, page, m, out);\n    out->a[0].kind = IVY_ACT_WRPROTECT;\n}\n"),
    # prefetch_request maps the bytes it still has instead of asking: a copy
    # that was invalidated (or never fetched) is read as if it were current.
    "prefetch_maps_without_asking": (
        "    fault_request_read(e, p, page, m, out);\n}\n\nstatic void prefetch_needless(",
        "    (void)m;\n    p->state = IVY_SHARED;\n    emit(out, IVY_ACT_MAP_RO, page);\n}\n\n"
        "static void prefetch_needless("),
    # a hinted READ is granted whole and writable while a third node still
    # holds a copy, and the reply forgets that copy: two nodes then access it.
    "write_soon_ignores_copies": (
        ("return migratory_on(e) && (m->flags & IVY_REQ_WRITE_SOON) && p->copyset == NODE_BIT(e->cfg.self);",
         "return migratory_on(e) && (m->flags & IVY_REQ_WRITE_SOON);"),
        ("    IVY_ASSERT(p->copyset == NODE_BIT(e->cfg.self));\n    serve_whole(",
         "    p->copyset = NODE_BIT(e->cfg.self);\n    serve_whole(")),
}


def _source_hash(mutant: str | None) -> str:
    h = hashlib.sha256()
    for path in (ENGINE_C, ENGINE_H, CDEFGEN, Path(__file__)):
        h.update(path.read_bytes())
    h.update((mutant or "").encode())
    return h.hexdigest()[:16]


def _engine_source(mutant: str | None) -> str:
    source = ENGINE_C.read_text()
    if mutant is None:
        return '#include "engine.c"\n'
    edits = MUTANTS[mutant]
    for old, new in (edits,) if isinstance(edits[0], str) else edits:  # type: ignore[assignment]
        if source.count(old) != 1:
            raise RuntimeError(f"mutant {mutant}: the code it breaks is no longer in engine.c")
        source = source.replace(old, new)
    return source


_modules: dict[str | None, ModuleType] = {}


def load(mutant: str | None = None) -> ModuleType:
    """Compile (once per source change) and import the engine test module,
    or the module of one of MUTANTS."""
    if mutant in _modules:
        return _modules[mutant]
    import cffi

    digest = _source_hash(mutant)
    name = f"_ivy_engine_test_{digest}"
    build_dir = ROOT / "build" / f"dsm-engine-{digest}"
    built = sorted(build_dir.glob(f"{name}*.so")) if build_dir.exists() else []
    if not built:
        ffi = cffi.FFI()
        ffi.cdef(cdef_of(ENGINE_H.read_text()) + _TEST_CDEF)
        ffi.set_source(
            name,
            _TEST_PRELUDE + _engine_source(mutant) + _TEST_WRAPPERS,
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
    _modules[mutant] = module
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
    migratory: bool = False
    write_soon: bool = False


# The engine's names, with the values of this very build (engine.h is their one source).
_ffi, _lib = load().ffi, load().lib
INITIAL, INVALID, SHARED, MODIFIED = _lib.IVY_INITIAL, _lib.IVY_INVALID, _lib.IVY_SHARED, _lib.IVY_MODIFIED
IDLE, WANT_READ, WANT_WRITE = _lib.IVY_IDLE, _lib.IVY_WANT_READ, _lib.IVY_WANT_WRITE
WAIT_ACKS, READ_STALE, HOLDING = _lib.IVY_WAIT_ACKS, _lib.IVY_READ_STALE, _lib.IVY_HOLDING
READ_GIANTVM, READ_IVY = _lib.IVY_READ_GIANTVM, _lib.IVY_READ_IVY
MGR_DYNAMIC, MGR_CENTRAL, MGR_FIXED = _lib.IVY_MGR_DYNAMIC, _lib.IVY_MGR_CENTRAL, _lib.IVY_MGR_FIXED
MSG_READ, MSG_WRITE, MSG_REPLY = _lib.IVY_MSG_READ, _lib.IVY_MSG_WRITE, _lib.IVY_MSG_REPLY
MSG_INVALIDATE, MSG_INV_ACK = _lib.IVY_MSG_INVALIDATE, _lib.IVY_MSG_INV_ACK
REPLY_DATA, REPLY_OWNERSHIP = _lib.IVY_REPLY_DATA, _lib.IVY_REPLY_OWNERSHIP
REPLY_MIGRATORY, REPLY_WRITABLE, REQ_WRITE_SOON = _lib.IVY_REPLY_MIGRATORY, _lib.IVY_REPLY_WRITABLE, _lib.IVY_REQ_WRITE_SOON
ACT_SEND, ACT_MAP_RO, ACT_MAP_RW, ACT_ZAP = _lib.IVY_ACT_SEND, _lib.IVY_ACT_MAP_RO, _lib.IVY_ACT_MAP_RW, _lib.IVY_ACT_ZAP
ACT_WRPROTECT, ACT_WAKE, ACT_PARK = _lib.IVY_ACT_WRPROTECT, _lib.IVY_ACT_WAKE, _lib.IVY_ACT_PARK
ACT_UNPARK, ACT_DONE, ACT_HOLD = _lib.IVY_ACT_UNPARK, _lib.IVY_ACT_DONE, _lib.IVY_ACT_HOLD
TOUCH_READ, TOUCH_WRITE = _lib.IVY_TOUCH_READ, _lib.IVY_TOUCH_WRITE
EV_READ_FAULT, EV_WRITE_FAULT = _lib.IVY_EV_READ_FAULT, _lib.IVY_EV_WRITE_FAULT
EV_HOLD_EXPIRED, EV_STORE_SEEN = _lib.IVY_EV_HOLD_EXPIRED, _lib.IVY_EV_STORE_SEEN
EV_MAP_OWNED = _lib.IVY_EV_MAP_OWNED
EV_PREFETCH = _lib.IVY_EV_PREFETCH
EV_READ_FAULT_WRITE_SOON = _lib.IVY_EV_READ_FAULT_WRITE_SOON
ROW_NOT_OWNER, ROW_OWNER = _lib.IVY_ROW_NOT_OWNER, _lib.IVY_ROW_OWNER

ACTION_NAMES = {value: name for name, value in enum_members(_ffi, "enum ivy_action_kind", "IVY_ACT_").items()}
MSG_NAMES = {value: name for name, value in enum_members(_ffi, "enum ivy_msg_type", "IVY_MSG_").items()}
READ_OWNERSHIP = lowercase(enum_members(_ffi, "enum ivy_read_ownership", "IVY_READ_"))
MANAGERS = lowercase(enum_members(_ffi, "enum ivy_manager", "IVY_MGR_"))
FIRST_TOUCH = lowercase(enum_members(_ffi, "enum ivy_first_touch", "IVY_TOUCH_"))
STATE_NAMES = {value: name for name, value in enum_members(_ffi, "enum ivy_state", "IVY_").items()}
PENDING_NAMES = {value: name for name, value in enum_members(_ffi, "enum ivy_pending", "IVY_").items()}
EVENT_NAMES = {value: _ffi.string(_lib.ivy_event_name(value)).decode()
               for value in enum_members(_ffi, "enum ivy_event", "IVY_EV_").values()}


@dataclass(frozen=True)
class Row:
    """One row of the transition table, as names (engine.c's ROWS, the model's ROWS)."""

    name: str
    handler: str
    events: tuple[str, ...]
    states: tuple[str, ...]
    pendings: tuple[str, ...]
    owner: tuple[str, ...]  # "owner", "not owner"
    when: str | None
    guard: str | None
    effect: str = ""

    def key(self) -> tuple:
        """What the C table and the model must agree on (the effect is prose)."""
        return (self.name, self.handler, self.events, self.states, self.pendings, self.owner,
                self.when, self.guard)


def _names(mask: int, names: dict[int, str]) -> tuple[str, ...]:
    return tuple(name for value, name in sorted(names.items()) if mask >> value & 1)


def c_rows() -> list[Row]:
    """engine.c's transition table, read through ivy_engine_row()."""
    mod = load()
    ffi, lib = mod.ffi, mod.lib

    def text(ptr: Any) -> str | None:
        return ffi.string(ptr).decode() if ptr != ffi.NULL else None

    rows = []
    for i in range(lib.ivy_engine_nrows()):
        r = lib.ivy_engine_row(i)
        owner = tuple(n for bit, n in ((ROW_OWNER, "owner"), (ROW_NOT_OWNER, "not owner"))
                      if r.owner & bit)
        rows.append(Row(text(r.name) or "", text(r.handler) or "", _names(r.events, EVENT_NAMES),
                        _names(r.states, STATE_NAMES), _names(r.pendings, PENDING_NAMES), owner,
                        text(r.when_name), text(r.guard_name), text(r.effect) or ""))
    return rows


class CEngine:
    """One node's engine.c instance, with Python values in and out.

    `row` is the table row that handled the last event (its index)."""

    def __init__(self, self_id: int, nnodes: int, npages: int,
                 read_ownership: int = READ_GIANTVM, manager: int = MGR_DYNAMIC,
                 hold: bool = False, first_touch: int = TOUCH_READ,
                 migratory: bool = False, prefetch: bool = False,
                 mutant: str | None = None) -> None:
        mod = load(mutant)
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        self.npages = npages
        self.row = -1
        self._engine = self.ffi.new("struct ivy_engine *")
        self._pages = self.ffi.new("struct ivy_page[]", max(npages, 1))
        self._out = self.ffi.new("struct ivy_actions *")
        self._msg = self.ffi.new("struct ivy_msg *")
        self._verdict = self.ffi.new("struct ivy_verdict *")
        cfg = self.ffi.new("struct ivy_config *", {
            "self": self_id, "nnodes": nnodes, "read_ownership": read_ownership,
            "manager": manager, "hold": int(hold), "first_touch": first_touch,
            "migratory": int(migratory), "prefetch": int(prefetch), "npages": npages})
        self._check(self.lib.ivy_test_init(self._engine, cfg, self._pages))

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise EngineAssertion(self.ffi.string(self.lib.ivy_test_failure()).decode())

    def set_version(self, page: int, version: int) -> None:
        self._check(self.lib.ivy_test_set_version(self._engine, page, version))

    def fault(self, page: int, write: bool, write_soon: bool = False) -> list[Action]:
        """A local fault; write_soon: a read the runtime predicts a write to follow."""
        if write_soon and not write:
            self._check(self.lib.ivy_test_read_fault_write_soon(self._engine, page, self._out))
        else:
            self._check(self.lib.ivy_test_fault(self._engine, page, write, self._out))
        return self._actions()

    def _fill(self, m: Msg) -> Any:
        c = self._msg
        c.type, c.flags, c.requester, c.sender, c.hops = m.type, m.flags, m.requester, m.sender, m.hops
        c.page, c.version, c.copyset, c.txid = m.page, m.version, m.copyset, m.txid
        return c

    def message(self, m: Msg) -> list[Action]:
        self._check(self.lib.ivy_test_message(self._engine, self._fill(m), self._out))
        return self._actions()

    def hold_event(self, page: int, event: int) -> list[Action]:
        self._check(self.lib.ivy_test_hold_event(self._engine, page, event, self._out))
        return self._actions()

    def prefetch(self, page: int) -> list[Action]:
        self._check(self.lib.ivy_test_prefetch(self._engine, page, self._out))
        return self._actions()

    def map_owned(self, page: int) -> bool:
        """Node 0 maps `page` writable up front; False if no row takes it (nothing changed)."""
        mapped = self.ffi.new("bool *")
        self._check(self.lib.ivy_test_map_owned(self._engine, page, self._out, mapped))
        if mapped[0]:
            self._actions()
        return bool(mapped[0])

    def check(self, m: Msg) -> tuple[int, int, str | None]:
        """(row, refused_by, why): what ivy_engine_check says about m now."""
        self._check(self.lib.ivy_test_check(self._engine, self._fill(m), self._verdict))
        v = self._verdict
        why = self.ffi.string(v.why).decode() if v.why != self.ffi.NULL else None
        return v.row, v.refused_by, why

    def route(self, page: int) -> int:
        return int(self.lib.ivy_engine_route(self._engine, page))

    def access(self, page: int) -> int:
        return int(self.lib.ivy_engine_access(self._engine, page))

    def page(self, page: int) -> PageState:
        p = self._pages[page]
        return PageState(p.state, bool(p.owner), p.pending, p.probowner, p.copyset, p.version,
                         p.acks_missing, p.txid, bool(p.migratory), bool(p.write_soon))

    def _actions(self) -> list[Action]:
        out = self._out
        self.row = out.row
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
    flags = "+".join(n for f, n in ((REPLY_DATA, "DATA"), (REPLY_OWNERSHIP, "OWN"), (REPLY_MIGRATORY, "MIG"),
                                    (REPLY_WRITABLE, "WRITABLE"), (REQ_WRITE_SOON, "WRITE_SOON")) if m.flags & f)
    body = (f"{MSG_NAMES.get(m.type, m.type)} p{m.page} req={m.requester} from={m.sender} "
            f"v={m.version} cs={m.copyset:#x} hops={m.hops}{' ' + flags if flags else ''}")
    return f"{name}->{action.to}({body})" if action.kind == ACT_SEND else f"{name}({body})"
