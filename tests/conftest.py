"""Shared test plumbing: the KVM gate and paths to the built guests.

A test that needs KVM is marked ``requires_kvm``. It is skipped only when
/dev/kvm is absent; with IVYVM_REQUIRE_KVM=1 (set by .ci/run whenever
/dev/kvm exists) such a skip is turned into a failure, so CI can never go
green by skipping the tests that matter.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUEST_BUILD = ROOT / "guest" / "build"

HAVE_KVM = os.path.exists("/dev/kvm")
REQUIRE_KVM = os.environ.get("IVYVM_REQUIRE_KVM") == "1"
IS_ROOT = os.geteuid() == 0
HAVE_IP = shutil.which("ip") is not None

NO_KVM_REASON = "/dev/kvm is absent on this machine"

requires_kvm = pytest.mark.requires_kvm
requires_netns = pytest.mark.requires_netns


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_kvm: needs /dev/kvm")
    config.addinivalue_line("markers", "requires_netns: needs root and iproute2 (ip netns)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "requires_kvm" in item.keywords and not HAVE_KVM:
            item.add_marker(pytest.mark.skip(reason=NO_KVM_REASON))
        if "requires_netns" in item.keywords and not (IS_ROOT and HAVE_IP):
            item.add_marker(pytest.mark.skip(reason="network namespaces need root and the ip command"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    # Any skip of a KVM test fails, except one that also needs namespaces on
    # a machine that cannot make them (not root, no ip): that skip says so.
    netns_unavailable = "requires_netns" in item.keywords and not (IS_ROOT and HAVE_IP)
    if REQUIRE_KVM and report.skipped and "requires_kvm" in item.keywords and not netns_unavailable:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: skipped although IVYVM_REQUIRE_KVM=1 and /dev/kvm exists"


def guest_elf(name: str) -> Path:
    """Path of a built guest program; building guests is `make guests`' job."""
    path = GUEST_BUILD / f"{name}.elf"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make guests` first")
    return path
