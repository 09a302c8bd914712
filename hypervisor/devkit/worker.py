"""One DSM node process for the multi-process tests and the benchmark.

Driven by JSON lines on stdin, answering JSON lines on stdout:
  {"cmd": "init", "node", "nnodes", "pages", "secret", "options", "host"} -> {"port"}
      (and "insecure_plaintext": true for the benchmark's unsealed baseline only)
  {"cmd": "connect", "addresses", "image"} -> {"ok"}  (image {page: u64} written before start; mesh, start)
  {"cmd": "run", "workload", ...}    -> {"ok", ...results}
  {"cmd": "read", "offsets"}         -> {"values"}  (64-bit loads through the guest view)
  {"cmd": "run", "background": true, ...} -> {"ok"} at once; {"cmd": "join"} -> {"alive", "result"}
  {"cmd": "wait_failed", "seconds"}  -> {"failed", "error", "elapsed"}
  {"cmd": "stop"}                    -> {"stats", "error"} and exit
Guest-view accesses happen in C (testkit.c) from Python threads with the GIL
released, exactly as vCPU threads would touch guest RAM.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import traceback

from hypervisor._ivy_native import ffi
from hypervisor._ivy_testkit import lib
from hypervisor.dsm import DsmNode, DsmOptions
from hypervisor.handshake import ClusterShape, connect_mesh, listen
from hypervisor.memory import GuestRam
from hypervisor.native_consts import PAGE_SIZE

# RAM layout shared by the workloads (page numbers).
COUNTER_PAGES = (0, 1)      # counters at page 0 offsets 0 and 8, page 1 offset 0
FLAG_PAGE = 2               # flag[i] at 8*i: the round node i last published
ACK_PAGE = 3                # ack[i] at 8*i: consumers that verified node i's round
REGION_BASE, REGION_PAGES = 16, 8   # node i publishes pages REGION_BASE + i*REGION_PAGES ...
DISJOINT_BASE = 128
WAIT_NS = 20_000_000_000


class Worker:
    def __init__(self) -> None:
        self.node: DsmNode | None = None
        self.ram: GuestRam | None = None

    def addr(self, page: int, offset: int = 0) -> int:
        assert self.ram is not None
        return self.ram.guest_addr + page * PAGE_SIZE + offset

    def init(self, msg: dict) -> dict:
        self.id, self.nnodes, self.pages = msg["node"], msg["nnodes"], msg["pages"]
        self.secret = bytes.fromhex(msg["secret"])
        self.options = DsmOptions(**msg.get("options", {}))
        self.insecure_plaintext = bool(msg.get("insecure_plaintext", False))
        self.ram = GuestRam(self.pages * PAGE_SIZE, f"ivy-test-node{self.id}")
        self.listener = listen(msg.get("host", "127.0.0.1"), 0)
        return {"port": self.listener.getsockname()[1]}

    def connect(self, msg: dict) -> dict:
        assert self.ram is not None
        shape = ClusterShape.of(self.nnodes, self.ram.size, self.options)
        addresses = [tuple(a) for a in msg["addresses"]]
        peers = connect_mesh(self.id, addresses, self.secret, shape, listener=self.listener, timeout=15.0)
        self.listener.close()
        self.node = DsmNode(self.id, self.nnodes, self.ram, peers, self.options,
                            insecure_plaintext=self.insecure_plaintext)
        image = {int(p): v for p, v in msg.get("image", {}).items()}
        for page, value in image.items():  # as a loader would: through the VMM view, before start
            lib.ivy_test_store64(self.ram.vmm_addr + page * PAGE_SIZE, value)
        self.node.mark_loaded(image)
        self.node.start()
        return {"ok": True}

    def threads(self, target, nthreads: int) -> list:
        results: list = [None] * nthreads
        def run(i: int) -> None:
            results[i] = target(i)
        ts = [threading.Thread(target=run, args=(i,)) for i in range(nthreads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return results

    def run(self, msg: dict) -> dict:
        if msg.get("background"):
            # Keep taking commands (wait_failed, stop) while this workload blocks in a fault.
            self.background = {}
            def go() -> None:
                try:
                    self.background = self.workload(msg)
                except Exception as err:
                    self.background = {"exception": f"{type(err).__name__}: {err}", "traceback": ""}
            self.background_thread = threading.Thread(target=go)
            self.background_thread.start()
            return {"ok": True, "background": True}
        return self.workload(msg)

    def join(self, msg: dict) -> dict:
        self.background_thread.join(msg.get("seconds", 10.0))
        return {"alive": self.background_thread.is_alive(), "result": self.background}

    def workload(self, msg: dict) -> dict:
        workload = msg["workload"]
        if "start_at" in msg:  # a common wall-clock start, so the nodes really contend
            time.sleep(max(0.0, msg["start_at"] - time.time()))
        t0 = time.monotonic()
        if workload == "counter":
            iters = msg["iters"]
            targets = [self.addr(0, 0), self.addr(0, 8), self.addr(1, 0)]
            def add(i: int) -> None:
                # Small batches, round robin: the counter pages keep changing hands.
                for _ in range(iters // 10):
                    for a in targets:
                        lib.ivy_test_atomic_add(a, 1, 10)
            self.threads(add, msg["threads"])
            result = {}
        elif workload == "hammer":
            # One word of one page, locked increments in a tight loop: the page
            # changes hands after almost every access when nodes contend.
            addr = self.addr(msg["page"])
            self.threads(lambda i: lib.ivy_test_atomic_add_yielding(addr, msg["iters"]), msg["threads"])
            result = {}
        elif workload == "publish":
            result = {"bad": self.publish(msg["rounds"])}
        elif workload == "disjoint":
            mine = [p for p in range(DISJOINT_BASE, self.pages) if p % self.nnodes == self.id]
            def fill(i: int) -> int:
                bad = 0
                for r in range(msg["rounds"]):
                    for p in mine[i::msg["threads"]]:
                        seed = (self.id << 32) | (p << 8) | r
                        lib.ivy_test_fill(self.addr(p), PAGE_SIZE, seed)
                        bad += lib.ivy_test_verify(self.addr(p), PAGE_SIZE, seed) != -1
                return bad
            result = {"bad": sum(self.threads(fill, msg["threads"]))}
        elif workload == "touch_timed":
            ns = [int(lib.ivy_test_touch_timed(self.addr(p), int(msg["write"]))) for p in msg["pages_list"]]
            result = {"ns": ns}
        elif workload == "write_pages":
            for p in msg["pages_list"]:
                lib.ivy_test_store64(self.addr(p), msg.get("value", 1))
            result = {}
        elif workload == "pingpong":
            result = {"ns": self.pingpong(msg["rounds"], msg["page"])}
        else:
            raise ValueError(f"unknown workload {workload!r}")
        return {"ok": True, "seconds": time.monotonic() - t0, **result}

    def publish(self, rounds: int) -> list[str]:
        """Node i fills its region, raises flag[i]; every other node waits, verifies, acks."""
        bad: list[str] = []
        others = [j for j in range(self.nnodes) if j != self.id]
        region = lambda j: self.addr(REGION_BASE + j * REGION_PAGES)  # noqa: E731
        nbytes = REGION_PAGES * PAGE_SIZE

        def produce(_: int) -> None:
            for r in range(1, rounds + 1):
                # Overwrite only after every consumer has checked the previous round.
                if lib.ivy_test_wait_value(self.addr(ACK_PAGE, 8 * self.id), (r - 1) * len(others), WAIT_NS):
                    bad.append(f"node {self.id}: acks for round {r - 1} never came")
                    return
                lib.ivy_test_fill(region(self.id), nbytes, (self.id << 16) | r)
                lib.ivy_test_store64(self.addr(FLAG_PAGE, 8 * self.id), r)

        def consume(k: int) -> None:
            j = others[k]
            for r in range(1, rounds + 1):
                if lib.ivy_test_wait_value(self.addr(FLAG_PAGE, 8 * j), r, WAIT_NS):
                    bad.append(f"node {self.id}: flag of node {j} never reached round {r}")
                    return
                first = lib.ivy_test_verify(region(j), nbytes, (j << 16) | r)
                if first != -1:
                    bad.append(f"node {self.id}: node {j} round {r} word {first} wrong")
                lib.ivy_test_atomic_add(self.addr(ACK_PAGE, 8 * j), 1, 1)

        ts = [threading.Thread(target=produce, args=(0,))]
        ts += [threading.Thread(target=consume, args=(k,)) for k in range(len(others))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return bad

    def pingpong(self, rounds: int, page: int) -> list[int]:
        """Nodes 0 and 1 hand one page back and forth with cmpxchg (testkit.c ivy_test_pingpong)."""
        out = ffi.new("uint64_t[]", rounds)
        if lib.ivy_test_pingpong(self.addr(page), self.id, rounds, out, WAIT_NS) != 0:
            raise RuntimeError(f"node {self.id}: ping-pong stalled")
        return list(out)

    def read(self, msg: dict) -> dict:
        return {"values": [int(lib.ivy_test_load64(self.addr(0) + off)) for off in msg["offsets"]]}

    def stats(self, _: dict) -> dict:
        assert self.node is not None
        return {"stats": self.node.stats()}

    def wait_failed(self, msg: dict) -> dict:
        assert self.node is not None
        t0 = time.monotonic()
        failed = self.node.wait_failed(msg["seconds"])
        return {"failed": failed, "error": self.node.error, "elapsed": time.monotonic() - t0}

    def stop(self, _: dict) -> dict:
        assert self.node is not None
        self.node.stop()
        stats = self.node.stats()
        stats["threads_after_stop"] = threading.active_count()
        stats["trace_records"] = len(self.node.trace_records())
        self.node.close()
        return {"stats": stats, "error": stats["error"]}


def main() -> None:
    worker = Worker()
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            reply = getattr(worker, msg["cmd"])(msg)
        except Exception as err:  # the parent shows it; the test fails there
            reply = {"exception": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if msg["cmd"] == "stop":
            return


if __name__ == "__main__":
    main()
