"""ivyvm: a small KVM hypervisor in Python whose guests can span several hosts.

``run_guest`` boots a guest from Python (hypervisor/api.py, docs/api.md).
Its names load on first use, so ``python -m hypervisor.cli`` (what every
node process runs) does not import the CLI twice.
"""
from __future__ import annotations

from typing import Any

__all__ = ["run_guest", "GuestResult", "RunError", "UsageError", "ImageRefused", "GuestError", "HostError",
           "ClusterError", "GuestTimeout", "InternalError", "Interrupted"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hypervisor import api
        return getattr(api, name)
    raise AttributeError(f"module 'hypervisor' has no attribute {name!r}")
