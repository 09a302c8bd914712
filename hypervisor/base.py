"""The bottom layer: what any module of ivyvm may use, importing none of them.

The console writer, the one-line `say` to stderr and the names of the
environment variables through which the processes of one run talk to each
other. (Signals have theirs beside it: hypervisor/stopsignals.py.)
"""
from __future__ import annotations

import errno
import os
import sys

# The cluster secret (never on a command line or in a config file).
SECRET_ENV = "IVYVM_SECRET"
# "DSM_FD,CONTROL_FD": listening sockets bound by `ivyvm run --nodes` and
# inherited, so no other process can take the ports between choice and use.
LISTEN_FDS_ENV = "IVYVM_LISTEN_FDS"
# When every node of a `ivyvm run --timeout` must have stopped (CLOCK_MONOTONIC, shared by the processes).
DEADLINE_ENV = "IVYVM_DEADLINE"
# Each node of `ivyvm run --nodes N` writes its statistics as DIR/node-K.json
# when this names a directory (set by hypervisor.api.run_guest for its supervisor).
STATS_DIR_ENV = "IVYVM_STATS_DIR"


class StdoutConsole:
    """Console bytes to fd 1 as they come; a closed reader must not stop the guest."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.broken = False

    def __call__(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EBADF):
                raise
            self.broken = True


def say(line: str) -> None:
    """One line to stderr in one write(2): every node of `ivyvm run --nodes` shares that pipe,
    and print() writes the text and its newline separately, so lines said at once could mix."""
    write_stderr(f"ivyvm: {line}")


def write_stderr(text: str) -> None:
    """Text and its newline to stderr in one write(2) (see say)."""
    data = f"{text}\n".encode("utf-8", "replace")
    sys.stderr.flush()
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass      # nobody reads stderr any more; the exit status still tells
