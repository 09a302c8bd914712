"""Launch and drive N worker processes (hypervisor/devkit/worker.py, one DSM node each) from a test or the benchmark."""
from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

WORKER = "hypervisor.devkit.worker"


class WorkerError(Exception):
    pass


class Worker:
    def __init__(self, node: int, prefix: Sequence[str] = (), cpu: int | None = None) -> None:
        self.node = node
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     bufsize=1, preexec_fn=pin)

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 60.0) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise WorkerError(f"node {self.node}: no answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise WorkerError(f"node {self.node} exited ({self.proc.wait()}): {err[-2000:]}")
        reply = json.loads(line)
        if "exception" in reply:
            raise WorkerError(f"node {self.node}: {reply['exception']}\n{reply['traceback']}")
        return reply

    def call(self, cmd: str, timeout: float = 60.0, **fields: Any) -> dict:
        self.send(cmd, **fields)
        return self.recv(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        if sig == signal.SIGSTOP:
            self.wait_stopped()

    def wait_stopped(self, timeout: float = 5.0) -> None:
        """Until every thread of the process is stopped: a signal takes effect asynchronously."""
        deadline = time.monotonic() + timeout
        task_dir = f"/proc/{self.proc.pid}/task"
        while time.monotonic() < deadline:
            states = []
            for tid in os.listdir(task_dir):
                with open(f"{task_dir}/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            if all(st in ("T", "t") for st in states):
                return
            time.sleep(0.005)
        raise WorkerError(f"node {self.node} did not stop")

    def close(self) -> None:
        self.kill(signal.SIGKILL)
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


class Cluster:
    """N node processes with RAM of `pages` pages, meshed and started.

    `image` maps pages to a 64-bit value node 0 writes through its VMM view
    and marks loaded before start, as the ELF loader does; `cpus[i]` pins
    node i's process to one CPU (the benchmark's placements). `insecure_plaintext`
    sends DSM frames unsealed: the benchmark's baseline for the cost of encryption."""

    def __init__(self, nnodes: int, pages: int = 256, options: dict | None = None,
                 hosts: Sequence[str] | None = None, prefixes: Sequence[Sequence[str]] | None = None,
                 image: dict[int, int] | None = None, cpus: Sequence[int] | None = None,
                 insecure_plaintext: bool = False) -> None:
        self.nnodes = nnodes
        self.workers: list[Worker] = []
        secret = secrets.token_hex(32)
        hosts = hosts or ["127.0.0.1"] * nnodes
        try:
            for i in range(nnodes):
                self.workers.append(Worker(i, prefixes[i] if prefixes else (), cpus[i] if cpus else None))
            for i, w in enumerate(self.workers):
                w.send("init", node=i, nnodes=nnodes, pages=pages, secret=secret, options=options or {},
                       host=hosts[i], insecure_plaintext=insecure_plaintext)
            addresses = [[hosts[i], w.recv()["port"]] for i, w in enumerate(self.workers)]
            for i, w in enumerate(self.workers):
                w.send("connect", addresses=addresses, image=(image or {}) if i == 0 else {})
            for w in self.workers:
                w.recv()
        except BaseException:
            self.close()
            raise

    def run_all(self, timeout: float = 120.0, **fields: Any) -> list[dict]:
        start_at = time.time() + 0.1
        for w in self.workers:
            w.send("run", start_at=start_at, **fields)
        deadline = time.monotonic() + timeout
        return [w.recv(max(1.0, deadline - time.monotonic())) for w in self.workers]

    def stop_all(self) -> list[dict]:
        for w in self.workers:
            w.send("stop")
        return [w.recv() for w in self.workers]

    def close(self) -> None:
        for w in self.workers:
            w.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
