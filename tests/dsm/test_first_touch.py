"""The first_touch option (docs/protocol.md, the worked example) as users select it:
node 0's first read of a page nobody touched is granted write access at once, so
the read-modify-write of a fresh page takes one fault instead of two."""
from __future__ import annotations

import pytest

from hypervisor._ivy_testkit import lib as kit
from hypervisor.dsm import DsmError, DsmNode, DsmOptions
from hypervisor.memory import GuestRam
from hypervisor.native_consts import PAGE_SIZE
from tests.dsm.test_map_owned import settled_faults

NPAGES = 16


@pytest.fixture
def ram():
    r = GuestRam(NPAGES * PAGE_SIZE)
    yield r
    r.close()


@pytest.mark.parametrize("first_touch, access, faults", [("read", 1, 2), ("write", 2, 1)])
def test_first_read_of_an_untouched_page(ram: GuestRam, first_touch: str, access: int, faults: int) -> None:
    # map_owned (on by default) leaves node 0 no untouched page to fault on: the row needs it off.
    with DsmNode(0, 1, ram, {}, DsmOptions(first_touch=first_touch, map_owned=False)) as node:
        node.start()
        addr = ram.guest_addr + 3 * PAGE_SIZE
        kit.ivy_test_load64(addr)
        assert settled_faults(node, "local", 1) == 1
        assert node.access(3) == access
        kit.ivy_test_store64(addr, 7)
        assert settled_faults(node, "local", faults) == faults
        assert node.access(3) == 2
        assert kit.ivy_test_load64(ram.vmm_addr + 3 * PAGE_SIZE) == 7


def test_an_unknown_first_touch_is_refused() -> None:
    with pytest.raises(DsmError, match="first_touch 'always': expected one of read, write"):
        DsmOptions(first_touch="always")
