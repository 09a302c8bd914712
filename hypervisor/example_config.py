"""The commented cluster.toml that ``ivyvm node --example-config`` prints.

tests/unit/test_small_things.py parses it with the config loader, so it
cannot drift from what the loader accepts.
"""

EXAMPLE_CONFIG = """\
# ivyvm cluster description: give every host this same file, then run
#     ivyvm node --config cluster.toml --id K
# on host K. Node 0 loads the image, prints the console and exits with the
# guest's status.

[cluster]
# The guest (guest ABI v1). A relative path is resolved against the
# directory holding this file, not the current directory. Node 0 loads it;
# every other node checks that its own copy has the same sha256.
image = "guest.elf"
vcpus = 2
mem = "64M"                    # a multiple of 2M, 4M..4G

# The cluster secret, at least 16 bytes, the same on every host; relative to
# this file too. IVYVM_SECRET in the environment takes precedence. Make one:
#     head -c 32 /dev/urandom | base64 > secret
secret_file = "secret"

# Optional, with their defaults:
# read_ownership = "giantvm"   # or "ivy": whether a read moves page ownership
# manager = "dynamic"          # or "central", "fixed": how a fault finds a page's owner
# map_owned = true             # false: node 0 does not map its pages at start (its first touches fault)
# first_touch = "read"         # or "write" (with map_owned = false): node 0's first read of an untouched page gets write access
# prefetch = false            # true: sequential read faults bring the following pages ahead (ivy reads)
# batch = true                 # false: every frame leaves in its own send() (docs/dsm.md, "Batching")
# migratory = false            # true: a page read then written by one node moves whole on its next read;
#                              # reads predicted to be followed by a write are granted writable (write-soon)
# setup_timeout = 20           # seconds every node has to join
# poll_us = 0                  # busy-poll for an awaited page (pays with a spare core per node)
# hold_us = 50                 # a page just granted stays this long for the woken vCPU
# timeout = 600                # stop every node after this many seconds (status 9); default: no limit
# stall_warn = 2               # name a page fault outstanding this long, with every node's state of its page

# One [[node]] per host, ids 0..N-1 in order. The DSM listens on address;
# the control channel on control_port (default: the DSM port + 1). Keep both
# on a private network: the DSM port serves guest memory.
[[node]]
address = "192.0.2.10:7000"
# control_port = 7001
# vcpus = [0]                  # default: contiguous ranges, vCPU i on node i*N/vcpus

[[node]]
address = "192.0.2.11:7000"
"""
