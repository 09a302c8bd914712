"""`ivyvm node`, with one DSM message lost: the engine mutant of the watchdog's tests.

    python tests/cluster/mutant_node.py TYPE node --config F --id K

runs the node as `ivyvm node --config F --id K` would, except that the
first TYPE message (e.g. REPLY) its engine sends is dropped (the test kit's
ivy_test_drop_sends: the engine's state moves on as if it went out). When
that happens it says so on stderr, naming the page's guest-physical address:

    mutant: dropped REPLY for page 0x2000
"""
from __future__ import annotations

import sys
import threading
import time

from hypervisor import dsm
from hypervisor._ivy_native import ffi
from hypervisor._ivy_testkit import lib as kit
from hypervisor.native_consts import PAGE_SIZE, WireType

PREFIX = "mutant: dropped"


def main() -> int:
    kind = WireType[sys.argv.pop(1)]
    plain_start, plain_close = dsm.DsmNode.start, dsm.DsmNode.close
    closing = threading.Event()
    watchers: list[threading.Thread] = []

    def start(node: dsm.DsmNode) -> None:
        plain_start(node)        # no vCPU runs before every node's DSM is up: nothing was sent yet
        address = int(ffi.cast("uintptr_t", node._rt))
        assert kit.ivy_test_drop_sends(address, kind, 1) == 0

        def tell() -> None:
            while not closing.is_set():
                dropped = kit.ivy_test_dropped_page(address)
                if dropped:
                    sys.stderr.write(f"{PREFIX} {kind.name} for page {(dropped - 1) * PAGE_SIZE:#x}\n")
                    sys.stderr.flush()
                    return
                time.sleep(0.01)
        watchers.append(threading.Thread(target=tell, daemon=True))
        watchers[-1].start()

    def close(node: dsm.DsmNode) -> None:
        closing.set()            # the watcher reads the runtime: it must be done before the runtime is freed
        for watcher in watchers:
            watcher.join()
        plain_close(node)

    dsm.DsmNode.start = start       # type: ignore[method-assign]
    dsm.DsmNode.close = close       # type: ignore[method-assign]
    from hypervisor.cli import main as cli_main
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
