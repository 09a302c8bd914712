"""cffi build script for hypervisor._ivy_netem, the link emulator of `ivyvm run --netns` (native/netem.h).

A module of its own: it has nothing to share with the DSM core, and only the
helper process that shapes the links loads it.
"""
from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent

CDEF = """
#define IVY_NETEM_MAX_PORTS 64
struct ivy_netem_shape { uint64_t delay_ns; uint64_t jitter_ns; uint32_t loss_ppb; uint64_t rate_bps; uint64_t seed; };
struct ivy_netem_stats { uint64_t forwarded; uint64_t dropped_loss; uint64_t dropped_full; uint64_t flooded; };
int ivy_netem_run(const int *tap_fds, int nports, int stop_fd, const struct ivy_netem_shape *shape,
                  struct ivy_netem_stats *stats, char *err, size_t errlen);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "hypervisor._ivy_netem",
    '#include "netem.h"\n',
    sources=[os.path.relpath(NATIVE / "netem.c")],
    include_dirs=[os.path.relpath(NATIVE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(NATIVE.parent), verbose=False)
