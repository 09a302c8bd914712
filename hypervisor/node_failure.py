"""How a node's failures are worded and which status each one ends the run with.

The DSM core says what kind of failure stopped it (native/runtime.h, enum
ivy_rt_fail_kind); the status and the user's line are decided on that kind,
never on the text.
"""
from __future__ import annotations

from .base import say
from .dsm import DsmFailure, DsmNode
from .native_consts import FailKind
from .status import Status


class NodeError(Exception):
    """The node cannot join or keep its cluster; the message is the user's one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class StoppedWhileJoining(Exception):
    """Node 0 was interrupted before GO and said so; like a signal to this node, said only unsupervised."""


# How each kind of DSM core failure ends the run.
DSM_FAILURE_STATUS = {
    FailKind.PEER_LOST: Status.CLUSTER,
    FailKind.PEER_LEFT: Status.CLUSTER,
    FailKind.PEER_GARBAGE: Status.CLUSTER,
    FailKind.PROTOCOL: Status.INTERNAL,
    FailKind.ENGINE: Status.INTERNAL,
    FailKind.HOST: Status.HOST,
}
# Failures every node's operator must hear of on their own host, not only node 0's.
SAID_BY_EVERY_NODE = (Status.CLUSTER, Status.INTERNAL)


def dsm_failure_line(failure: DsmFailure) -> str:
    """The user's line for a DSM core failure: an ivyvm bug is called one, naming the transition that refused."""
    if failure.internal:
        return (f"node {failure.node}: internal error (a bug in ivyvm, not a fault of the cluster): {failure.text}; "
                f"refused by the transition {failure.what}")
    return failure.line


def dsm_failure(node_id: int, dsm: DsmNode) -> tuple[str, int]:
    """The DSM core's line (it names the page it awaited) and the status its kind of failure means."""
    failure = dsm.failure
    if failure is None:
        return f"node {node_id}: the DSM core stopped", Status.CLUSTER
    return dsm_failure_line(failure), DSM_FAILURE_STATUS[failure.kind]


def waiting_for(node_id: int, waiting_vcpus: list[int]) -> str:
    """What this node was waiting for from the lost peer, for the user's one line."""
    if waiting_vcpus:
        who = (f"vCPU {waiting_vcpus[0]} was" if len(waiting_vcpus) == 1
               else f"vCPUs {', '.join(map(str, waiting_vcpus))} were")
        return f"while {who} waiting for forwarded I/O"
    if node_id == 0:
        return "while waiting for its heartbeat, forwarded I/O and interrupts"
    return "while waiting for node 0's heartbeat, I/O results and interrupts"


def report(status: int, line: str) -> int:
    say(line)
    return status
