"""One guest clock across nodes: every vCPU of every node gets the same TSC offset.

KVM gives each VM its own TSC offset (guest TSC = host TSC + offset, the
offset chosen when the VM's vCPUs are created), so vCPUs of different node
processes would read clocks apart by the time between their VMs' creation.
Node 0 reads its own vCPUs' offset and sends it in GO; every node then sets
it on each of its vCPUs (the KVM_VCPU_TSC_OFFSET vCPU attribute) before any
vCPU runs. On one host the nodes share the host TSC, so the guest TSC is
then one clock. Across hosts the hosts' TSCs themselves differ: node k adds
the host-TSC offset it measured during the join (hypervisor/tscsync.py).

On hosts without the attribute, or that do not honour it (PVM-style nested
hosts: the attribute exists, but reads 0 whatever is set, because CPL3
guest code reads the host TSC directly), there is nothing to align: such a
host reports offset 0 for every vCPU, and the guest sees the host TSC.
"""
from __future__ import annotations

import struct
from typing import Iterable

from hypervisor.kvm import KvmError, Vcpu
from hypervisor.kvm.abi import KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET

OFFSET = struct.Struct("<q")          # GO's payload: the guest-TSC offset, signed


def supported(vcpu: Vcpu) -> bool:
    return vcpu.has_device_attr(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET)


def offset_of(vcpu: Vcpu) -> int:
    """This vCPU's TSC offset (signed), 0 where KVM has no such attribute."""
    if not supported(vcpu):
        return 0
    raw = vcpu.get_device_attr(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET)
    return raw - (1 << 64) if raw >> 63 else raw


def align(vcpus: Iterable[Vcpu], offset: int) -> list[int]:
    """Give every vCPU `offset`; returns the offsets they report afterwards (for the checks and tests)."""
    seen = []
    for vcpu in vcpus:
        if supported(vcpu):
            try:
                vcpu.set_device_attr(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET, offset)
            except KvmError:
                pass      # refused: the vCPU keeps the offset it reports below
        seen.append(offset_of(vcpu))
    return seen
