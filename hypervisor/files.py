"""Reading a file a user named (config, secret, guest image) without trusting it.

Any path may name /dev/zero (endless), a FIFO (open blocks until a writer
comes, read until it leaves), a directory, or a sparse file of many
gigabytes. So a file is opened without blocking, must be a regular file,
and its size is compared with a cap before a byte is read; reading then
stops one byte past that size, so a file growing meanwhile is refused too.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path


class InputFileError(Exception):
    """The file cannot be used; the message (without the path) says why."""


def open_regular(path: str | Path) -> tuple[int, os.stat_result]:
    """An fd on `path` and its fstat, refusing anything but a regular file without blocking on it."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as err:
        raise InputFileError(f"cannot read: {err.strerror}") from None
    except ValueError:       # an embedded NUL byte
        raise InputFileError("cannot read: the path contains a NUL byte") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(f"not a regular file (it is {_kind(info.st_mode)})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_regular(path: str | Path, cap: int, what: str = "file") -> tuple[bytearray, os.stat_result]:
    """The whole of a regular file of at most `cap` bytes, and its fstat.

    Read into one buffer sized from fstat, so the file is in memory once (a
    guest image may be gigabytes); one byte of slack tells a growing file.
    """
    fd, info = open_regular(path)
    try:
        if info.st_size > cap:
            raise InputFileError(f"{what} is {info.st_size} bytes, more than the {cap} allowed")
        buffer = bytearray(info.st_size + 1)
        view = memoryview(buffer)
        total = 0
        while total < len(buffer):
            try:
                count = os.readv(fd, [view[total:]])
            except OSError as err:
                raise InputFileError(f"cannot read: {err.strerror}") from None
            if not count:
                break
            total += count
        view.release()
        if total > info.st_size:
            raise InputFileError(f"{what} grew while being read")
        del buffer[total:]
        return buffer, info
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"
