"""Python names for the members of a C enum, read from a compiled cffi module (no numbers restated)."""
from __future__ import annotations

from typing import Any


def enum_members(ffi: Any, ctype: str, prefix: str) -> dict[str, int]:
    """The members of a C enum, prefix cut, in value order; `*_MAX` bounds left out."""
    members = {name[len(prefix):]: int(value) for name, value in ffi.typeof(ctype).relements.items()
               if name.startswith(prefix) and not name.endswith("_MAX")}
    return dict(sorted(members.items(), key=lambda item: item[1]))


def lowercase(members: dict[str, int]) -> dict[str, int]:
    """Members as option names: IVY_MGR_DYNAMIC -> "dynamic"."""
    return {name.lower(): value for name, value in members.items()}
