"""ivyvm: a small KVM hypervisor in Python whose guests can span several hosts."""
