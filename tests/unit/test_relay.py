"""hypervisor/relay.py: node lines pass whole until the supervisor mutes them, and the node never blocks."""
from __future__ import annotations

import os
import threading

from hypervisor.relay import StderrRelay


def test_lines_pass_until_muted_then_are_drained_unsaid() -> None:
    node_read, node_write = os.pipe()
    out_read, out_write = os.pipe()
    relay = StderrRelay(os.fdopen(node_read, "rb"), "relay-test", out_fd=out_write)
    os.write(node_write, b"ivyvm: node 1: before\n")
    # Read it back before muting: what was said before the stop is news.
    assert os.read(out_read, 100) == b"ivyvm: node 1: before\n"
    relay.mute()
    # Far more than a pipe holds: were the muted lines not read, this write would block forever.
    noise = b"ivyvm: node 1: node 0 stopped answering\n" * 4096
    writer = threading.Thread(target=lambda: os.write(node_write, noise))
    writer.start()
    writer.join(10.0)
    assert not writer.is_alive(), "the node blocked on its stderr pipe"
    os.close(node_write)
    relay.join(10.0)
    os.close(out_write)
    assert os.read(out_read, 1 << 20) == b""
    os.close(out_read)


def test_a_line_cut_by_the_node_exiting_still_passes() -> None:
    node_read, node_write = os.pipe()
    out_read, out_write = os.pipe()
    relay = StderrRelay(os.fdopen(node_read, "rb"), "relay-test", out_fd=out_write)
    os.write(node_write, b"ivyvm: node 1: one\nivyvm: node 1: tw")
    os.close(node_write)
    relay.join(10.0)
    os.close(out_write)
    assert os.read(out_read, 1000) == b"ivyvm: node 1: one\nivyvm: node 1: tw"
    os.close(out_read)
