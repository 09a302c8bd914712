"""Batching (DsmOptions.batch, docs/dsm.md "Batching"): a peer's frames of one pass of the
event loop leave in fewer send() calls than frames, with the same bytes in the same order;
without it every frame is one send()."""
from __future__ import annotations

import time

import pytest

from hypervisor._ivy_native import lib
from hypervisor._ivy_testkit import lib as kit
from hypervisor.dsm import DsmError, DsmNode, DsmOptions
from hypervisor.memory import GuestRam
from hypervisor.native_consts import PAGE_SIZE, WIRE_HDR_SIZE, WireType
from tests.dsm import frames
from tests.dsm.sealed_peer import running_pair, sealed_pair

READ, REPLY = WireType["READ"], WireType["REPLY"]
WINDOW = 8          # READs the test's peer sends in one write: one pass of the node's loop
RECORD = WIRE_HDR_SIZE + PAGE_SIZE + lib.IVY_SEAL_OVERHEAD


def frames_sent(stats: dict) -> int:
    return sum(stats["messages_sent"].values())


@pytest.fixture(params=[True, False], ids=["batch", "no-batch"])
def owner(request):
    """Node 0 of 2 owning 16 pages of known bytes; node 1 is the test."""
    ram = GuestRam(16 * PAGE_SIZE)
    for page in range(16):
        kit.ivy_test_fill(ram.vmm_addr + page * PAGE_SIZE, PAGE_SIZE, 500 + page)
    theirs, ours = sealed_pair()
    ours.settimeout(5)
    node = DsmNode(0, 2, ram, {1: theirs}, DsmOptions(map_owned=False, batch=request.param))
    node.mark_loaded(range(16))
    node.start()
    yield node, ours, ram, request.param
    node.close()
    ours.close()
    ram.close()


def test_a_burst_of_replies_takes_fewer_sends_with_batching(owner) -> None:
    node, peer, ram, batch = owner
    peer.sendall(b"".join(frames.pack(READ, page=p, requester=1, sender=1, txid=900 + p) for p in range(WINDOW)))
    for p in range(WINDOW):  # every reply, intact and in the order asked
        reply = frames.recv(peer)
        assert (reply["type"], reply["page"], reply["txid"]) == (REPLY, p, 900 + p)
        assert reply["data"] == ram.read(p * PAGE_SIZE, PAGE_SIZE), f"page {p} bytes"
    s = node.stats()
    assert node.error is None and s["messages_sent"]["REPLY"] == WINDOW and s["sends_queued"] == 0, s
    if batch:
        # The first reply alone, the rest once IVY_RT_BATCH_BYTES wait or at the pass's end.
        bound = 1 + -(-(WINDOW - 1) * RECORD // lib.IVY_RT_BATCH_BYTES)
        assert s["sends"] <= bound + (frames_sent(s) - WINDOW) < frames_sent(s), s
        assert s["frames_batched"] >= WINDOW - bound, s
    else:
        assert s["sends"] == frames_sent(s) and s["frames_batched"] == 0, s


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "no-batch"])
def test_a_prefetch_window_takes_fewer_sends_with_batching(batch: bool) -> None:
    """A sequential read run on node 1: its prefetch windows' READs, and node 0's replies, leave
    in fewer sends than frames with batching, one send each without; every value is exact."""
    npages = 64
    options = DsmOptions(read_ownership="ivy", prefetch=True, batch=batch)
    with running_pair(npages, options) as (nodes, rams):
        for page in range(npages):
            kit.ivy_test_store64(rams[0].guest_addr + page * PAGE_SIZE + 8, 3000 + page)
        for page in range(npages):
            # Let each window's replies land first, so the next window grows (run_prefetch).
            deadline = time.monotonic() + 0.05
            while nodes[1].access(page) == 0 and time.monotonic() < deadline:
                time.sleep(0.002)
            assert kit.ivy_test_load64(rams[1].guest_addr + page * PAGE_SIZE + 8) == 3000 + page
        reader, owner = nodes[1].stats(), nodes[0].stats()
    assert reader["prefetches"] > npages // 2 and reader["error"] is None and owner["error"] is None, reader
    for s in (reader, owner):
        assert s["sends_queued"] == 0, s
        if batch:
            assert s["sends"] < frames_sent(s) and s["frames_batched"] > 0, s
        else:
            assert s["sends"] == frames_sent(s) and s["frames_batched"] == 0, s


def test_batch_options_are_checked() -> None:
    with pytest.raises(DsmError, match="batch 1: expected true or false"):
        DsmOptions(batch=1)
    with pytest.raises(DsmError, match="batch_bytes"):
        DsmOptions(batch_bytes=lib.IVY_RT_BATCH_MAX_BYTES + 1)
