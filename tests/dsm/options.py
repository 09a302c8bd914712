"""The simulator's protocol options: words of an --options string.

`giantvm` / `ivy` (read ownership), `dynamic` / `central` / `fixed`
(manager), `hold` (the hold window), `touch-write` (node 0's first read of
an untouched page is granted write access), `migratory` (a page read then
written by one node is granted whole on its next read; GiantVM reads only,
so `ivy,migratory` is refused), `prefetch` (the runtime may ask for a page
before any fault; classic Ivy reads only, so `giantvm,prefetch` is refused). Omitted words take the first value;
ALL_OPTIONS is every combination, in the canonical spelling.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from tests.dsm import engine_ffi
from tests.dsm.engine_ffi import MANAGERS, MGR_DYNAMIC, READ_GIANTVM, READ_OWNERSHIP, TOUCH_READ

HOLD = {"no-hold": False, "hold": True}
FIRST_TOUCH = {f"touch-{name}": value for name, value in engine_ffi.FIRST_TOUCH.items()}
MIGRATORY = {"no-migratory": False, "migratory": True}
PREFETCH = {"no-prefetch": False, "prefetch": True}
_DIMENSIONS = (READ_OWNERSHIP, MANAGERS, HOLD, FIRST_TOUCH, MIGRATORY, PREFETCH)


@dataclass(frozen=True)
class EngineOptions:
    read_ownership: int = READ_GIANTVM
    manager: int = MGR_DYNAMIC
    hold: bool = False
    first_touch: int = TOUCH_READ
    migratory: bool = False
    prefetch: bool = False

    def __post_init__(self) -> None:
        if self.migratory and self.read_ownership != READ_GIANTVM:
            raise ValueError("migratory pages need giantvm reads (a read that moves ownership)")
        if self.prefetch and self.read_ownership == READ_GIANTVM:
            raise ValueError("prefetch needs ivy reads (a read copy that leaves ownership in place)")

    def spelled(self) -> str:
        """The canonical --options string: the two base words, then any non-default one."""
        values = (self.read_ownership, self.manager, self.hold, self.first_touch, self.migratory,
                  self.prefetch)
        words = []
        for i, (dim, value) in enumerate(zip(_DIMENSIONS, values)):
            word = next(w for w, v in dim.items() if v == value)
            if i < 2 or word != next(iter(dim)):
                words.append(word)
        return ",".join(words)


def parse_options(text: str) -> EngineOptions:
    """'ivy,central,hold' -> EngineOptions; any word may be omitted."""
    values: list = [next(iter(dim.values())) for dim in _DIMENSIONS]
    for word in filter(None, (w.strip() for w in text.split(","))):
        for i, dim in enumerate(_DIMENSIONS):
            if word in dim:
                values[i] = dim[word]
                break
        else:
            known = ", ".join(w for dim in _DIMENSIONS for w in dim)
            raise ValueError(f"unknown option {word!r}: expected one of {known}")
    return EngineOptions(*values)


ALL_OPTIONS = [EngineOptions(*combo).spelled()
               for combo in itertools.product(*(dim.values() for dim in _DIMENSIONS))
               if not (combo[4] and combo[0] != READ_GIANTVM)
               and not (combo[5] and combo[0] == READ_GIANTVM)]
