"""What the profile and the watchdog read from a running node (native/probe.c), against a scripted peer.

A thread that registered as a vCPU and blocks in a remote fault shows up as
an outstanding fault naming its vCPU and page, with the page's engine state
and the request sent for it; once granted, its blocked time is counted. The
test kit's lost message (a reply the engine believes it sent) is the stuck
fault the watchdog exists for.
"""
from __future__ import annotations

import socket
import threading
import time

from hypervisor._ivy_native import ffi, lib
from hypervisor._ivy_testkit import lib as kit
from hypervisor.dsm import PAGE_SIZE, DsmNode
from tests.dsm.test_runtime import READ, REPLY, frame, owner_node, ram, recv_frame, scripted  # noqa: F401

STATE_INITIAL, STATE_SHARED = lib.IVY_INITIAL, lib.IVY_SHARED
WANT_READ, HOLDING = lib.IVY_WANT_READ, lib.IVY_HOLDING


def address(node: DsmNode) -> int:
    """The node's struct ivy_rt as an address: the test kit is a module of its own."""
    return int(ffi.cast("uintptr_t", node._rt))


def vcpu_toucher(node: DsmNode, vcpu: int, addr: int) -> threading.Thread:
    """A thread that registers as vCPU `vcpu`, then reads one guest-view word (blocking in its fault)."""
    registered = threading.Event()

    def run() -> None:
        node.register_vcpu(vcpu, threading.get_native_id())
        registered.set()
        kit.ivy_test_load64(addr)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert registered.wait(5)
    return thread


def test_a_blocked_vcpu_is_named_with_its_page_and_counted_once_granted(scripted) -> None:  # noqa: F811
    node, peer, ram = scripted
    assert node.vcpus() == [] and node.outstanding() == []
    thread = vcpu_toucher(node, 3, ram.guest_addr + 5 * PAGE_SIZE + 16)
    req = recv_frame(peer)
    assert (req["type"], req["page"]) == (READ, 5)
    time.sleep(0.3)
    (stall,) = node.outstanding(0.2)
    assert (stall["vcpu"], stall["page"]) == (3, 5) and stall["age_ns"] >= 0.2e9
    assert node.outstanding(30.0) == []
    (vcpu,) = node.vcpus()
    assert vcpu["waiting"] and vcpu["page"] == 5 and vcpu["faults"] == 1 and vcpu["blocked_ns"] == 0
    info = node.page_info(5)
    assert (info["state"], info["owner"], info["pending"]) == (STATE_INITIAL, 0, WANT_READ)
    assert (info["sent_type"], info["sent_peer"]) == (READ, 0) and info["recv_type"] == 0
    assert info["fault_age_ns"] >= 0.2e9
    peer.sendall(frame(REPLY, 5, 1, 0, version=1, copyset=1, txid=req["txid"],
                       flags=lib.IVY_REPLY_DATA | lib.IVY_REPLY_OWNERSHIP, payload=bytes(PAGE_SIZE)))
    thread.join(5)
    assert not thread.is_alive()
    # The grant wakes the thread; the event loop closes its wait just after (the engine's DONE).
    deadline = time.monotonic() + 5
    while node.vcpus()[0]["waiting"] and time.monotonic() < deadline:
        time.sleep(0.01)
    (vcpu,) = node.vcpus()
    assert not vcpu["waiting"] and vcpu["faults"] >= 1, vcpu
    assert 0.3e9 <= vcpu["blocked_ns"] == vcpu["max_ns"] < 5e9
    assert node.outstanding() == []
    info = node.page_info(5)
    # The new owner holds the page for its woken reader (the hold window is engine state).
    assert (info["state"], info["owner"], info["pending"], info["fault_age_ns"]) == (STATE_SHARED, 1, HOLDING, 0)
    assert (info["recv_type"], info["recv_peer"]) == (REPLY, 0)


def test_a_fault_of_an_unregistered_thread_is_outstanding_without_a_vcpu(scripted) -> None:  # noqa: F811
    node, peer, ram = scripted
    thread = threading.Thread(target=kit.ivy_test_load64, args=(ram.guest_addr + 7 * PAGE_SIZE,), daemon=True)
    thread.start()
    req = recv_frame(peer)
    time.sleep(0.1)
    assert [(s["page"], s["vcpu"]) for s in node.outstanding(0.05)] == [(7, -1)]
    assert node.vcpus() == []
    # Answered, so the thread is done before the fixture unmaps the RAM it reads.
    peer.sendall(frame(REPLY, 7, 1, 0, version=1, copyset=1, txid=req["txid"],
                       flags=lib.IVY_REPLY_DATA | lib.IVY_REPLY_OWNERSHIP, payload=bytes(PAGE_SIZE)))
    thread.join(5)
    assert not thread.is_alive()


def test_the_test_kits_lost_reply_is_never_sent(owner_node) -> None:  # noqa: F811
    node, peer, _ = owner_node
    assert kit.ivy_test_drop_sends(address(node), REPLY, 1) == 0
    assert kit.ivy_test_dropped_page(address(node)) == 0
    peer.sendall(frame(READ, 9, 1, 1, version=0, txid=41))
    deadline = time.monotonic() + 5
    while kit.ivy_test_dropped_page(address(node)) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kit.ivy_test_dropped_page(address(node)) == 9 + 1
    info = node.page_info(9)
    # The engine moved on as if the reply went out: node 0 no longer owns the page.
    assert (info["sent_type"], info["sent_peer"], info["owner"]) == (REPLY, 1, 0)
    assert (info["recv_type"], info["recv_peer"]) == (READ, 1)
    peer.sendall(frame(READ, 10, 1, 1, version=0, txid=42))   # only one was to be lost
    reply = recv_frame(peer)
    assert (reply["type"], reply["page"], reply["txid"]) == (REPLY, 10, 42)
    assert kit.ivy_test_drop_sends(address(node), 99, 1) == -1
