"""The ``mqttlb`` command line: argument parsing and exit codes, nothing more.

Each command lives in its own module with a ``main(args, config)``; this one
parses, loads the config once and maps errors to exit codes. Exit status 2
means the operator must fix something (a bad config file or bad arguments);
problems are printed one per line, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import logs
from ..core import config as config_module
from ..errors import EXIT_CONFIG, ConfigError
from ..processes import AUTO, count_option

DEFAULT_CONFIG = "config/mqttlb.yaml"


def _rounds(text: str) -> int:
    """``bench --repeat`` and ``bench scale --repeat``: a count of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a number of at least 1, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mqttlb", description="MQTT broker-side device router")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, config: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if config:
            sub.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                             help=f"config file (default {DEFAULT_CONFIG})")
        sub.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        sub.add_argument("--log-format", default="text", choices=["text", "json"])
        return sub

    run = command("run", "run the router")
    run.add_argument("--processes", type=count_option, default=1, metavar="N",
                     help="run N routers in the config's share group, one per core (default 1); "
                     "auto: one per core the broker leaves")
    run.add_argument("--instance", type=int, default=None, help=argparse.SUPPRESS)
    check = command("check", "validate the config file")
    check.add_argument("--connect", action="store_true",
                       help="also connect to the broker with the file's settings (exit 1 with the reason if refused)")
    worker = command("worker", "run a worker that logs and counts what it gets (demos, smoke tests)")
    worker.add_argument("--id", required=True, help="worker id (one topic level)")
    worker.add_argument("--pool", default=config_module.DEFAULT_POOL)
    worker.add_argument("--weight", type=float, default=1.0)
    worker.add_argument("--interval", type=float, default=2.0, help="seconds between heartbeats")
    simulate = command("simulate", "a device fleet publishing to the topics the routes match")
    simulate.add_argument("--devices", type=int, default=100)
    simulate.add_argument("--rate", type=float, default=100.0, help="messages per second, whole fleet")
    simulate.add_argument("--duration", type=float, default=None, help="seconds (default: until interrupted)")
    simulate.add_argument("--qos", type=int, choices=[0, 1], default=1)
    status = command("status", "the live pools from the router's stats topic: workers, state, weight, share, rate")
    status.add_argument("--once", action="store_true", help="print one snapshot and exit (1: no router reporting)")
    status.add_argument("--json", action="store_true", help="JSON instead of a table")
    credentials = command("credentials", "create or update Mosquitto's password and ACL files for the router, "
                          "workers, monitors and devices; new passwords are printed once")
    credentials.add_argument("--password-file", required=True, help="Mosquitto's password_file")
    credentials.add_argument("--acl-file", required=True, help="Mosquitto's acl_file")
    credentials.add_argument("--router", action="store_true", help="the router, as broker.username of the config")
    for role, what in (("worker", "a worker id (user mqttlb-worker-ID)"), ("device", "a device id (its user name)"),
                       ("monitor", "a user that reads dead letters, stats and heartbeats"), ("remove", "a user")):
        credentials.add_argument(f"--{role}", action="append", default=[], metavar="NAME", help=f"{what}; repeatable")
    credentials.add_argument("--secrets", metavar="FILE", help="take the passwords from lines user:password")
    credentials.add_argument("--device-topic", action="append", metavar="PATTERN",
                             help="what devices may write, %%u standing for the id (default devices/%%u/#)")
    command("demo", "the whole system on this machine, with a worker failure and a summary", config=False)
    bench = command("bench", "throughput and latency beside a plain relay and the broker alone (or: bench balance)",
                    config=False)
    bench.add_argument("--messages", type=int, default=50_000, help="messages per burst (default 50000)")
    bench.add_argument("--repeat", type=_rounds, default=1, metavar="N",
                       help="measure every system N times, round after round, and report medians (default 1)")
    bench.add_argument("--json", action="store_true", help="figures as JSON")
    bench.set_defaults(measure="throughput")
    measures = bench.add_subparsers(dest="measure", required=False, metavar="MEASURE")
    balance = measures.add_parser("balance", help="the hashing algorithms beside uhashring: balance, movement, "
                                  "weights, speed", description="the hashing algorithms beside uhashring")
    balance.add_argument("--keys", type=int, default=100_000, help="device ids to hash (default 100000)")
    balance.add_argument("--workers", default="10,100,1000,10000", help="pool sizes (default 10,100,1000,10000)")
    balance.add_argument("--json", action="store_true", help="figures as JSON")
    soak = measures.add_parser("soak", help="mqttlb at a steady rate for a long while: its memory over time",
                               description="mqttlb at a steady rate for a long while: its memory over time")
    soak.add_argument("--seconds", type=float, default=600.0, help="how long (default 600)")
    soak.add_argument("--rate", type=float, default=2000.0, help="messages per second (default 2000)")
    scale = measures.add_parser("scale", help="msg/s and router CPU per message from 3 to 10,000 workers and "
                                "100 to 1M devices; 1 vs N router processes",
                                description="msg/s and router CPU per message as the fleet grows")
    scale.add_argument("--workers", default="3,100,1000,10000", help="fleet sizes (default 3,100,1000,10000)")
    scale.add_argument("--devices", default="100,100k,1M", help="distinct devices (default 100,100k,1M)")
    scale.add_argument("--qos", default="0,1", choices=["0", "1", "0,1"], help="(default 0,1)")
    scale.add_argument("--messages", type=int, default=100_000, help="messages per burst (default 100000)")
    scale.add_argument("--processes", type=int, default=2, metavar="N",
                       help="also compare mqttlb run with --processes N on 3 workers x 100 devices "
                       "(0: skip; default 2)")
    scale.add_argument("--primed", action="store_true",
                       help="one message from every device before each burst, the cache sized to hold them all: "
                       "a fleet whose devices keep publishing, not one the router meets for the first time")
    scale.add_argument("--repeat", type=_rounds, default=1, metavar="N",
                       help="measure every cell N times, round after round, and report medians (default 1)")
    scale.add_argument("--json", action="store_true", help="figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.command == "demo":
        from . import demo

        return demo.main(args)
    if args.command == "bench" and args.measure == "balance":
        from . import bench_balance

        return bench_balance.main(args)
    if args.command == "bench" and args.measure == "scale":
        from . import bench_scale

        return bench_scale.main(args)
    if args.command == "bench":
        from . import bench_throughput

        return bench_throughput.main(args)
    try:
        if args.command == "credentials":  # the router's own password and TLS files may not exist yet
            from .credentials import load_config

            config = load_config(args.config)
        else:
            config = config_module.load(args.config)
    except ConfigError as error:
        for problem in error.problems:
            print(problem if problem.startswith(args.config) else f"{args.config}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        if args.connect:
            from ..transport import probe

            refused = probe(config.broker)
            if refused is not None:
                print(f"{args.config}: {refused}", file=sys.stderr)
                return 1
        connected = f"; the broker at {config.broker.host}:{config.broker.port} accepts it" if args.connect else ""
        print(f"{args.config}: ok ({len(config.routes)} routes{connected})")
        return 0
    if args.command == "worker":
        from .. import worker

        return worker.main(args, config)
    if args.command == "simulate":
        from . import simulate

        return simulate.main(args, config)
    if args.command == "status":
        from . import status

        return status.main(args, config)
    if args.command == "credentials":
        from . import credentials

        return credentials.main(args, config)
    if args.processes == AUTO:
        from ..processes import auto_count

        args.processes = auto_count(config.broker.host, os.cpu_count() or 1)
    if args.processes > 1:
        from .. import processes

        return processes.main(args, config)
    from ..service import Service

    if args.instance is not None:
        from ..processes import instance_config

        return Service(config, adapt=lambda loaded: instance_config(loaded, args.instance)).run()
    return Service(config).run()
