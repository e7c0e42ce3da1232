"""The ``mqttlb`` command line: argument parsing and exit codes, nothing more.

Each command lives in its own module with a ``main(args, config)``; this one
parses, loads the config once and maps errors to exit codes. Exit status 2
means the operator must fix something (a bad config file or bad arguments);
problems are printed one per line, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import config as config_module
from . import logs
from .errors import ConfigError

DEFAULT_CONFIG = "config/mqttlb.yaml"
EXIT_CONFIG = 2


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

    command("run", "run the router")
    command("check", "validate the config file")
    worker = command("worker", "run a worker that logs and counts what it gets (demos, smoke tests)")
    worker.add_argument("--id", required=True, help="worker id (one topic level)")
    worker.add_argument("--pool", default="default")
    worker.add_argument("--weight", type=float, default=1.0)
    worker.add_argument("--interval", type=float, default=2.0, help="seconds between heartbeats")
    simulate = command("simulate", "a device fleet publishing to the topics the routes match")
    simulate.add_argument("--devices", type=int, default=100)
    simulate.add_argument("--rate", type=float, default=100.0, help="messages per second, whole fleet")
    simulate.add_argument("--duration", type=float, default=None, help="seconds (default: until interrupted)")
    simulate.add_argument("--qos", type=int, choices=[0, 1], default=1)
    command("demo", "the whole system on this machine, with a worker failure and a summary", config=False)
    bench = command("bench", "measure mqttlb side by side with the alternatives", config=False)
    measures = bench.add_subparsers(dest="measure", required=True, metavar="MEASURE")
    balance = measures.add_parser("balance", help="the hashing algorithms beside uhashring: balance, movement, "
                                  "weights, speed", description="the hashing algorithms beside uhashring")
    balance.add_argument("--keys", type=int, default=100_000, help="device ids to hash (default 100000)")
    balance.add_argument("--json", action="store_true", help="figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.command == "demo":
        from . import demo

        return demo.main(args)
    if args.command == "bench":
        from . import bench_balance

        return bench_balance.main(args)
    try:
        config = config_module.load(args.config)
    except ConfigError as error:
        for problem in error.problems:
            print(problem if problem.startswith(args.config) else f"{args.config}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(f"{args.config}: ok ({len(config.routes)} routes)")
        return 0
    if args.command == "worker":
        from . import worker

        return worker.main(args, config)
    if args.command == "simulate":
        from . import simulate

        return simulate.main(args, config)
    from .service import Service

    return Service(config).run()
