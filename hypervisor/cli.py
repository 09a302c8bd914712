"""The `ivyvm` command line.

`ivyvm run GUEST.elf` boots a guest on this host. The parser is built from
subcommands so that cluster commands (`node`, `--nodes N`) slot in beside `run`.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m hypervisor.cli` (how nodes are started) takes the console script's path, whose
    # signal handlers and guard are in place before the imports below, as they must be for a
    # Ctrl-C or SIGTERM then to be one line rather than a traceback or a silent death.
    from hypervisor.entry import main as _guarded_main
    sys.exit(_guarded_main())

import argparse  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, NoReturn, Sequence  # noqa: E402

from hypervisor import config, netns, profile, report, stopsignals  # noqa: E402
from hypervisor.base import SECRET_ENV, StdoutConsole  # noqa: E402
from hypervisor.cluster import launch_local  # noqa: E402
from hypervisor.config import FIRST_TOUCH, MANAGERS, MIB, READ_OWNERSHIP, ClusterOptions, ConfigError  # noqa: E402
from hypervisor.dsm import HOLD_US_DEFAULT  # noqa: E402
from hypervisor.example_config import EXAMPLE_CONFIG  # noqa: E402
from hypervisor.loader import STACK_SIZE, LoaderError, load_image  # noqa: E402
from hypervisor.machine import Machine, MachineError  # noqa: E402
from hypervisor.node import run_node  # noqa: E402
from hypervisor.runlimit import TimeLimit, timeout_line  # noqa: E402
from hypervisor.status import Status  # noqa: E402
from hypervisor.trace import TraceError, check_output_path, merge_files, part_path  # noqa: E402

# --timeout counts from here, as near the command's start as this process can see.
PROCESS_STARTED = time.monotonic()
MIN_VCPUS, MAX_VCPUS = 1, 64
DEFAULT_MEM, DEFAULT_VCPUS = 64 * MIB, 1

EXIT_STATUSES = """\
exit statuses:
  0-255  the guest wrote this value to port 0xf4; 0 also when every vCPU parked
  2      bad command line, config or cluster secret
  3      guest image refused
  4      guest error: unhandled port I/O, MMIO, bad 0xf6 write
  5      guest error: triple fault (shutdown)
  6      guest error: VM entry failure or KVM internal error
  7      host error: /dev/kvm missing or refusing, out of resources
  8      cluster error: a node died, was cut off, or refused the handshake
  9      time limit (--timeout) reached: every node was stopped
  10     internal error: a bug in ivyvm (the line names what refused)
  130    interrupted: SIGINT (Ctrl-C) or SIGTERM
A guest that wants an unambiguous status exits with 0 or 1 (or a value above 10).
The guest ABI is docs/guest-abi.md."""

class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr and status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(Status.USAGE)


def parse_size(text: str) -> int:
    """Bytes from '64M', '1G', '512K', '64MiB' or a plain byte count."""
    try:
        return config.parse_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def mem_size(text: str) -> int:
    size = parse_size(text)
    try:
        return config.check_mem(size)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"memory size {text!r} ({size} bytes) must be a multiple of 2 MiB "
                                         "between 4M and 4G") from None


def _count(what: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number of `what` in low..high."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} count {text!r}") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{what} count {n} outside {low}..{high}")
        return n
    return parse


vcpu_count = _count("vCPU", MIN_VCPUS, MAX_VCPUS)
node_count = _count("node", 1, MAX_VCPUS)


def microseconds(text: str) -> int:
    try:
        us = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid microseconds {text!r}: a whole number is needed") from None
    if not 0 <= us <= config.MAX_TUNING_US:
        raise argparse.ArgumentTypeError(f"{us} us outside 0..{config.MAX_TUNING_US}")
    return us


def package_version() -> str:
    """The installed distribution's version (pyproject.toml is its one source)."""
    try:
        return metadata.version("ivyvm")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: run `make setup`)"


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: a number is needed") from None
    try:
        return config.check_seconds("time", value)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _netns_value(parser_name: str) -> Callable[[str], int]:
    """An argparse type from hypervisor.netns's parsers."""
    def parse(text: str) -> int:
        try:
            return getattr(netns, parser_name)(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def shaping_of(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The emulated network `ivyvm run` asks for (a netns.Shaping), None for loopback; ValueError if misused."""
    shaped = {flag: value for flag, value in (("--delay", args.delay), ("--jitter", args.jitter),
                                               ("--loss", args.loss), ("--rate", args.rate)) if value is not None}
    if not args.netns:
        if shaped:
            raise ValueError(f"{', '.join(shaped)}: link shaping needs --netns")
        return None
    if args.nodes < 2:
        raise ValueError("--netns needs --nodes 2 or more: it puts each node in a namespace of its own")
    return netns.Shaping(args.delay or 0, args.jitter or 0, args.loss or 0, args.rate or 0)


def build_parser(parser_class: type[_Parser] = _Parser) -> _Parser:
    """The whole command line; hypervisor.api passes a parser class that raises instead of exiting."""
    parser = parser_class(prog="ivyvm", description="A small KVM hypervisor whose guests can span several hosts.",
                     epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ivyvm {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", help="boot a guest on this host and stream its console to stdout",
                              description="Boot GUEST.elf (guest ABI v1), stream its console to stdout and "
                                          "exit with the guest's status.",
                              epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("guest", metavar="GUEST.elf", help="static ELF64 x86-64 executable (guest ABI v1)")
    run.add_argument("--vcpus", type=vcpu_count, default=DEFAULT_VCPUS, metavar="N",
                     help=f"number of vCPUs, {MIN_VCPUS}..{MAX_VCPUS} (default {DEFAULT_VCPUS})")
    run.add_argument("--mem", type=mem_size, default=DEFAULT_MEM, metavar="SIZE",
                     help="guest RAM: bytes or with a K/M/G suffix, a multiple of 2M from 4M to 4G (default 64M)")
    run.add_argument("--nodes", type=node_count, default=1, metavar="N",
                     help="run the vCPUs in N node processes on this machine sharing the guest's RAM through "
                          "the DSM over loopback; vCPU i runs on node i*N/vcpus (default 1: no DSM)")
    run.add_argument("--read-ownership", choices=READ_OWNERSHIP, default="giantvm",
                     help="with --nodes: whether a read moves page ownership to the reader (giantvm, default) "
                          "or the owner keeps it (ivy)")
    run.add_argument("--manager", choices=MANAGERS, default="dynamic",
                     help="with --nodes: how a fault finds a page's owner: probable-owner forwarding (dynamic, "
                          "default), node 0 records every owner (central), node p %% N does (fixed)")
    run.add_argument("--first-touch", choices=FIRST_TOUCH, default="read",
                     help="with --nodes: what node 0's first read of a page nobody touched gets: a readable copy "
                          "(read, default) or write access at once (write: a read-modify-write faults once; "
                          "needs --no-map-owned)")
    run.add_argument("--no-map-owned", dest="map_owned", action="store_false",
                     help="with --nodes: node 0 does not map the pages it owns at start, so its guest's first "
                          "touch of each page is a userfaultfd fault (the default maps them: docs/dsm.md)")
    run.add_argument("--migratory", action="store_true",
                     help="with --nodes: migratory pages: a page one node read then wrote is granted whole on "
                          "its next read, and a read the node predicts a write to follow is granted writable "
                          "where no other copy exists (one round trip per read-modify-write; giantvm reads only)")
    run.add_argument("--prefetch", action="store_true",
                     help="with --nodes: a read fault continuing a sequential run asks for the following pages "
                          "as read copies before the vCPU touches them (adaptive window; ivy reads only)")
    run.add_argument("--batch", action=argparse.BooleanOptionalAction, default=ClusterOptions.batch,
                     help="with --nodes: a node's frames to one peer made in one pass of its event loop leave "
                          "together, one send() for many (default on; --no-batch: one send() per frame)")
    run.add_argument("--poll-us", type=microseconds, default=None, metavar="US",
                     help="with --nodes: busy-poll this long for an awaited reply before sleeping (default 0: "
                          "sleep at once; pays only with a CPU to spare per node, see docs/dsm.md)")
    run.add_argument("--hold-us", type=microseconds, default=None, metavar="US",
                     help="with --nodes: after a fault completes, requests that would take the page away wait "
                          f"this long so the woken vCPU gets its access in (default {HOLD_US_DEFAULT})")
    run.add_argument("--stats", action="store_true",
                     help="with --nodes: print every node's DSM profile to stderr at the end (faults, latency, "
                          "messages, vCPU blocked time, hottest pages; docs/profile.md)")
    run.add_argument("--stats-json", type=Path, default=None, metavar="FILE",
                     help="with --nodes: write the same profile as JSON, one object per node (docs/profile.md); "
                          "`ivyvm report FILE` draws it")
    run.add_argument("--timeout", type=seconds, default=None, metavar="SECONDS",
                     help="stop every node after this long (counted from this command's start) with status 9")
    run.add_argument("--stall-warn", type=seconds, default=config.DEFAULT_STALL_WARN, metavar="SECONDS",
                     help="with --nodes: name a page fault outstanding this long, with every node's state "
                          f"for its page, on stderr (default {config.DEFAULT_STALL_WARN:g})")
    run.add_argument("--trace", type=Path, metavar="FILE",
                     help="with --nodes: record every node's DSM events and write one Chrome JSON trace "
                          "(ui.perfetto.dev, chrome://tracing; see docs/trace.md)")
    network = run.add_argument_group("emulated network (with --nodes; needs root, ip and /dev/net/tun)")
    network.add_argument("--netns", action="store_true",
                         help="each node in a network namespace of its own, switched like separate hosts "
                              "(docs/cluster.md); namespaces are removed on every outcome")
    network.add_argument("--delay", type=_netns_value("parse_time"), metavar="TIME",
                         help="with --netns: one-way delay of every frame, e.g. 100us, 1ms")
    network.add_argument("--jitter", type=_netns_value("parse_time"), metavar="TIME",
                         help="with --netns: the delay varies uniformly by up to this much either way")
    network.add_argument("--loss", type=_netns_value("parse_loss"), metavar="PERCENT",
                         help="with --netns: drop this share of frames, e.g. 0.1%%; TCP retransmits them")
    network.add_argument("--rate", type=_netns_value("parse_rate"), metavar="RATE",
                         help="with --netns: each node's link rate, e.g. 1gbit, 100mbit")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="on a guest error, also print the vCPU's registers")
    run.set_defaults(handler=cmd_run)

    node = commands.add_parser("node", help="run one node of a cluster described by a config file",
                               description="Run node ID of the cluster in CONFIG (TOML; --example-config "
                                           "prints a commented one). "
                                           f"The cluster secret comes from ${SECRET_ENV} or the config's "
                                           "secret_file, never from the command line. Node 0 loads the image, "
                                           "prints the console and exits with the guest's status.",
                               epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    node.add_argument("--config", metavar="CONFIG", help="the cluster's TOML file (required)")
    node.add_argument("--id", type=int, metavar="ID", help="this node's id, 0..N-1 (required)")
    node.add_argument("--example-config", action="store_true",
                      help="print a commented cluster.toml to start from, and exit")
    node.add_argument("--stats", action="store_true",
                      help="print this node's DSM profile (faults, latency, messages, vCPU blocked time, "
                           "hottest pages) at the end")
    node.add_argument("--stats-json", type=Path, default=None, metavar="FILE",
                      help="write this node's DSM profile as JSON (docs/profile.md)")
    node.add_argument("--trace", type=Path, metavar="FILE",
                      help="record this node's DSM events to FILE (default: [cluster] trace with .nodeID "
                           "before its suffix); join the nodes' files with `ivyvm trace merge`")
    node.add_argument("-v", "--verbose", action="store_true",
                      help="on a guest error, also print the vCPU's registers")
    node.set_defaults(handler=cmd_node, node_parser=node)

    traces = commands.add_parser("trace", help="work with DSM trace files (docs/trace.md)",
                                 description="Work with the DSM trace files `ivyvm node --trace` writes.")
    actions = traces.add_subparsers(dest="action", metavar="ACTION", required=True)
    merge = actions.add_parser("merge", help="join the nodes' trace files into one Chrome JSON trace",
                               description="Join node trace files (one per node, any hosts) into one Chrome "
                                           "JSON trace, clocks aligned so no message arrow points backwards.")
    merge.add_argument("inputs", nargs="+", type=Path, metavar="NODE_TRACE", help="a file `ivyvm node` wrote")
    merge.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.json", help="the merged trace")
    merge.set_defaults(handler=cmd_trace_merge)
    report = commands.add_parser("report", help="draw a --stats-json profile as PNG files (docs/profile.md)",
                                 description="Draw STATS.json (from --stats-json) as latency.png, timeline.png "
                                             "and pages.png; with TRACE (from --trace) faults over time come "
                                             "from the trace. Needs matplotlib: pip install 'ivyvm[plot]'.")
    report.add_argument("stats", type=Path, metavar="STATS.json")
    report.add_argument("trace", type=Path, nargs="?", default=None, metavar="TRACE")
    report.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="where the PNG files go (default: beside STATS.json)")
    report.set_defaults(handler=cmd_report)
    return parser


@dataclass
class RunOutcome:
    """How a run ended: what `ivyvm run` exits with and the one line it says, if any."""

    status: int
    message: str = ""
    error: bool = False       # True: `message` is said on stderr (an ivyvm-detected failure)


def cmd_run(args: argparse.Namespace) -> int:
    args.started = PROCESS_STARTED
    outcome = execute_run(args, StdoutConsole())
    if outcome.message:
        sys.stderr.write(f"ivyvm: {outcome.message}\n")
    return outcome.status


def as_flag(option: str, value: object) -> str:
    """An `ivyvm run` option set to a value, as typed: --prefetch, --no-map-owned, --read-ownership ivy."""
    flag = option.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def execute_run(args: argparse.Namespace, console: Callable[[bytes], None]) -> RunOutcome:
    """`ivyvm run` after parsing; hypervisor.api.run_guest calls it too (one code path).

    With --nodes the supervisor streams node 0's console to fd 1 and the
    nodes say their lines on fd 2 themselves, so the outcome carries only
    the status; one node runs here, its console going to `console`.
    """
    started = getattr(args, "started", None) or time.monotonic()
    if args.nodes > args.vcpus:
        return RunOutcome(Status.USAGE, f"--nodes {args.nodes} is more than --vcpus {args.vcpus}: "
                                        "every node runs a vCPU", True)
    if args.mem - args.vcpus * STACK_SIZE <= MIB:
        return RunOutcome(Status.USAGE, f"--mem {args.mem} leaves no room for a guest beside {args.vcpus} x "
                                        "64 KiB stacks", True)
    problem = ClusterOptions.taken_from(args).unmet_requirement(as_flag, str)
    if problem:
        return RunOutcome(Status.USAGE, problem, True)
    try:
        shaping = shaping_of(args)
    except ValueError as e:
        return RunOutcome(Status.USAGE, str(e), True)
    try:
        image = load_image(args.guest, args.mem, args.vcpus)
    except LoaderError as e:
        return RunOutcome(Status.IMAGE, str(e), True)
    trace_file = getattr(args, "trace", None)
    stats_json = getattr(args, "stats_json", None)
    if trace_file is not None:
        problem = check_output_path(trace_file)
        if problem:
            return RunOutcome(Status.USAGE, f"--trace {trace_file}: {problem}", True)
        if args.nodes == 1:
            sys.stderr.write("ivyvm: --trace records the DSM, which a single-node run does not use "
                             "(add --nodes 2 or more); no trace written\n")
    if args.nodes > 1:
        return RunOutcome(launch_local(Path(args.guest), args.vcpus, args.mem, args.nodes,
                                       ClusterOptions.taken_from(args), verbose=args.verbose, stats=args.stats,
                                       shaping=shaping, trace_file=trace_file, stats_json=stats_json,
                                       started=started))
    if args.stats or stats_json is not None:
        problem = no_dsm_profile(stats_json)
        if problem:
            return RunOutcome(Status.USAGE, problem, True)
    try:
        machine = Machine(image, vcpus=args.vcpus, mem=args.mem, console=console, verbose=args.verbose)
    except MachineError as e:
        return RunOutcome(Status.HOST, f"cannot create the VM: {e}", True)
    limit = None
    if args.timeout is not None:
        line = timeout_line(args.timeout)
        limit = TimeLimit(started + args.timeout, lambda: machine.stop(Status.TIMEOUT, line, error=True)).start()
    try:
        result = machine.run()
    finally:
        if limit is not None:
            limit.cancel()
        machine.close()
    if result.status == Status.INTERRUPTED and not result.error:
        return RunOutcome(result.status, stopsignals.interrupted_line(), False)
    return RunOutcome(result.status, result.message if result.error else "", result.error)


def cmd_node(args: argparse.Namespace) -> int:
    if args.example_config:
        sys.stdout.write(EXAMPLE_CONFIG)
        return 0
    missing = [flag for flag, value in (("--config", args.config), ("--id", args.id)) if value is None]
    if missing:   # argparse cannot say "required unless --example-config"
        args.node_parser.error(f"the following arguments are required: {', '.join(missing)} "
                               "(or --example-config)")
    try:
        cluster = config.load_config(Path(args.config))
    except ConfigError as e:
        return usage_error(str(e))
    if not 0 <= args.id < cluster.nnodes:
        return usage_error(f"--id {args.id}: {args.config} describes nodes 0..{cluster.nnodes - 1}")
    trace_file = args.trace or (part_path(cluster.trace, args.id) if cluster.trace else None)
    if trace_file is not None:
        problem = check_output_path(trace_file)
        if problem:
            return usage_error(f"trace {trace_file}: {problem}")
    return run_node(cluster, args.id, args.verbose, args.stats, trace_file, args.stats_json)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        doc, trace_faults = report.read_inputs(args.stats, args.trace)
    except report.ReportError as e:
        return usage_error(str(e))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return fail(Status.HOST, report.MISSING_PLOT)
    out_dir = args.output or args.stats.resolve().parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = report.draw(doc, trace_faults, out_dir)
    except OSError as e:
        return fail(Status.HOST, f"cannot write the plots to {out_dir}: {e.strerror or e}")
    for path in paths:
        sys.stdout.write(f"{path}\n")
    return 0


def cmd_trace_merge(args: argparse.Namespace) -> int:
    try:
        merged = merge_files(args.inputs, args.output)
    except TraceError as e:
        return usage_error(str(e))
    except OSError as e:
        return usage_error(f"cannot write {args.output}: {e.strerror or e}")
    info = merged["otherData"]["ivyvm"]
    sys.stderr.write(f"ivyvm: {info['faults']} faults and {info['messages']} messages of nodes "
                     f"{', '.join(map(str, info['nodes']))} written to {args.output}\n")
    return 0


def no_dsm_profile(stats_json: Path | None) -> str | None:
    """One node: say why there is no profile; a --stats-json file still gets a valid, empty document.
    Returns why that file could not be written, if it could not."""
    sys.stderr.write(f"ivyvm: {profile.NO_DSM_LINE}\n")
    if stats_json is None:
        return None
    try:
        profile.write_json(stats_json, profile.document([], note=profile.NO_DSM_LINE))
    except OSError as e:
        return f"cannot write --stats-json {stats_json}: {e.strerror or e}"
    return None


def usage_error(message: str) -> int:
    return fail(Status.USAGE, message)


def fail(status: int, message: str) -> int:
    sys.stderr.write(f"ivyvm: {message}\n")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except KeyboardInterrupt:
        return stopsignals.report_interrupted()
