"""The `ivyvm` console script.

Importing the CLI takes tens of milliseconds; a Ctrl-C in that window used
to end in a KeyboardInterrupt traceback. Here the import happens inside the
same guard as the command, so an early Ctrl-C is the usual one line and
status 130. (Python's own start-up, before any of this runs, is the only
window left.)
"""
from __future__ import annotations

import sys

from hypervisor import stopsignals


def main() -> int:
    stopsignals.install()      # before the slow import: SIGTERM too must find its handler
    try:
        from hypervisor.cli import main as cli_main
        return cli_main()
    except KeyboardInterrupt:
        return stopsignals.report_interrupted()
