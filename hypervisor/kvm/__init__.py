"""The KVM layer: one table of ioctl numbers and structs (abi), one object per
file descriptor (objects) and typed exits (exits)."""
from hypervisor.kvm.objects import Kvm, KvmError, Vcpu, Vm

__all__ = ["Kvm", "KvmError", "Vcpu", "Vm"]
