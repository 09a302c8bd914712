"""Exit statuses of `ivyvm` (guest ABI v1, section 7): one table for every module."""


class Status:
    USAGE = 2              # bad command line or config
    IMAGE = 3              # guest image refused
    GUEST_IO = 4           # unhandled port I/O, MMIO, bad 0xf6 write
    TRIPLE_FAULT = 5       # shutdown exit
    ENTRY_FAILURE = 6      # VM entry failure or KVM internal error
    HOST = 7               # /dev/kvm missing or refusing, out of resources
    CLUSTER = 8            # a node died, was cut off, or refused the handshake
    TIMEOUT = 9            # --timeout / [cluster] timeout reached: every node stopped
    INTERNAL = 10          # a bug in ivyvm itself (the DSM engine refused an authenticated peer's message)
    INTERRUPTED = 130      # Ctrl-C or SIGTERM
