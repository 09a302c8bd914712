"""What a failing simulator run prints: only what differs between engine and model."""
from __future__ import annotations

from dataclasses import fields

from tests.dsm.engine_ffi import ACTION_NAMES, PENDING_NAMES, STATE_NAMES, Action, PageState

_SHOWN = {"state": STATE_NAMES, "pending": PENDING_NAMES}


def _show(name: str, value: object) -> str:
    if name in _SHOWN and isinstance(value, int):
        return _SHOWN[name].get(value, str(value))
    if name == "kind" and isinstance(value, int):
        return ACTION_NAMES.get(value, str(value))
    if name in ("copyset", "acks_missing", "txid") and isinstance(value, int):
        return hex(value)
    return str(value)


def state_diff(engine: PageState, model: PageState) -> list[str]:
    """'field: engine X, model Y' for each page-state field that differs."""
    return [f"{f.name}: engine {_show(f.name, getattr(engine, f.name))}, "
            f"model {_show(f.name, getattr(model, f.name))}"
            for f in fields(PageState) if getattr(engine, f.name) != getattr(model, f.name)]


def action_diff(engine: list[Action], model: list[Action]) -> list[str]:
    """Per differing action (by position): the fields that differ, message fields included."""
    lines = []
    for i in range(max(len(engine), len(model))):
        a = engine[i] if i < len(engine) else None
        b = model[i] if i < len(model) else None
        if a == b:
            continue
        if a is None or b is None:
            which, extra = ("model", b) if a is None else ("engine", a)
            lines.append(f"action {i}: only the {which} has {ACTION_NAMES.get(extra.kind)}")  # type: ignore[union-attr]
            continue
        diffs = [f"{f.name}: engine {_show(f.name, getattr(a, f.name))}, "
                 f"model {_show(f.name, getattr(b, f.name))}"
                 for f in fields(Action) if f.name != "msg" and getattr(a, f.name) != getattr(b, f.name)]
        if a.msg != b.msg:
            if a.msg is None or b.msg is None:
                diffs.append(f"msg: engine {a.msg}, model {b.msg}")
            else:
                diffs += [f"msg.{f.name}: engine {_show(f.name, getattr(a.msg, f.name))}, "
                          f"model {_show(f.name, getattr(b.msg, f.name))}"
                          for f in fields(a.msg) if getattr(a.msg, f.name) != getattr(b.msg, f.name)]
        lines.append(f"action {i} ({ACTION_NAMES.get(a.kind)}): " + "; ".join(diffs))
    return lines
