"""The ``mqttlb`` command line: argument parsing and exit codes, nothing more.

Exit status 2 means the operator must fix something (a bad config file or bad
arguments); problems are printed one per line, never as a traceback.
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

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
        sub.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        sub.add_argument("--log-format", default="text", choices=["text", "json"])
        return sub

    command("run", "run the router")
    command("check", "validate the config file")
    return parser


def _load(path: str) -> config_module.Config:
    return config_module.load(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        config = _load(args.config)
    except ConfigError as error:
        for problem in error.problems:
            print(f"{args.config}: {problem}" if not problem.startswith(args.config) else problem, file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(f"{args.config}: ok ({len(config.routes)} routes)")
        return 0
    from .service import Service

    return Service(config).run()
