"""``mqttlb run --processes N``: N routers from one file, one per core, in the config's share group.

One router is one thread: a machine with cores to spare runs several, and the
broker splits the stream between them through ``router.share_group``. Every
instance is a full router with its own client id (``<client_id>-<i>``), so its
own persistent session, its own stats topic (``<stats.topic>/<i>``) and, when
the metrics port is fixed, its own port (``port + i``). Consistent hashing
depends only on the workers, so the instances agree on every device's worker;
per-device order holds within an instance, not across them.

This parent only supervises: it passes SIGTERM, SIGINT and SIGHUP on, starts
again an instance that crashes, and exits when they all have. An instance that
cannot start (its metrics port taken, say) would crash again at once: each
exit that comes soon after its start doubles the wait before the next start,
up to a minute, and the parent watches the others and the signals meanwhile.

More routers pay only with cores to run them. The broker is one thread too,
and on a 2-core machine with the broker on it, the broker, the clients and
one router already fill both cores at QoS 1: a second router there only
adds its overhead (``mqttlb bench scale``: 0.8-1.1x at QoS 1, README "Scaling
out"). ``--processes auto`` runs one router per core the broker leaves, and
a count that leaves none is warned about.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from types import FrameType

from .core.config import Config
from .errors import EXIT_CONFIG

log = logging.getLogger("mqttlb.processes")

RESTART_DELAY = 1.0
"""Seconds before an instance that exited is started again, the first time."""
MAX_RESTART_DELAY = 60.0
STEADY = 60.0
"""An instance that ran this long before it exited is started again after ``RESTART_DELAY``, however often it
exited before."""


def restart_delay(quick_exits: int) -> float:
    """The wait before starting an instance again, after ``quick_exits`` exits in a row each soon after its start:
    1 s, 2 s, 4 s ... up to a minute."""
    return min(MAX_RESTART_DELAY, RESTART_DELAY * 2.0 ** min(quick_exits, 16))


AUTO = "auto"


def count_option(text: str) -> int | str:
    """``--processes``: a count of at least 1, or ``auto``."""
    if text == AUTO:
        return AUTO
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a number of at least 1, or {AUTO}, got {text!r}")
    return count


def broker_is_local(host: str) -> bool:
    """Whether the broker runs on this machine, as far as its address says (loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auto_count(broker_host: str, cores: int) -> int:
    """One router per core, less the broker's own core when it runs here: 1 on a 2-core machine with the broker."""
    return max(1, cores - 1 if broker_is_local(broker_host) else cores)


def too_many(count: int, broker_host: str, cores: int) -> str | None:
    """Why ``count`` routers will not be faster than fewer here, or None."""
    if count <= auto_count(broker_host, cores):
        return None
    beside = " and the broker" if broker_is_local(broker_host) else ""
    return (f"{count} routers{beside} on {cores} cores: the routers past {auto_count(broker_host, cores)} have no "
            f"core of their own and may make the whole slower (--processes {AUTO} picks the count)")


def instance_config(config: Config, index: int) -> Config:
    """The config of instance ``index``: its own session, stats topic and metrics port."""
    listen = config.metrics.listen
    if listen is not None and listen[1] != 0:
        listen = (listen[0], listen[1] + index)
    return replace(config,
                   broker=replace(config.broker, client_id=f"{config.broker.client_id}-{index}"),
                   stats=replace(config.stats, topic=f"{config.stats.topic}/{index}"),
                   metrics=replace(config.metrics, listen=listen))


def main(args: argparse.Namespace, config: Config) -> int:
    if config.router.share_group is None:
        print(f"{args.config}: router.share_group: --processes needs a share group, so that the broker splits "
              "the stream between the routers", file=sys.stderr)
        return EXIT_CONFIG
    command = [sys.executable, "-m", "mqttlb", "run", "-c", args.config, "--log-level", args.log_level,
               "--log-format", args.log_format]
    children = {i: subprocess.Popen([*command, "--instance", str(i)]) for i in range(args.processes)}
    stopping: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            stopping.append(signum)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("%d routers in share group %s", len(children), config.router.share_group)
    warning = too_many(args.processes, config.broker.host, os.cpu_count() or 1)
    if warning is not None:
        log.warning("%s", warning)
    codes: dict[int, int] = {}
    started = dict.fromkeys(children, time.monotonic())
    quick_exits = dict.fromkeys(children, 0)
    restart_at: dict[int, float] = {}
    """Instances that exited, and when each starts again."""
    while len(codes) < len(children):
        now = time.monotonic()
        for index, child in children.items():
            code = child.poll()
            if code is None or index in codes:
                continue
            if stopping or code == EXIT_CONFIG:
                codes[index] = code  # a crashed one waiting to start again is not: the signal came after
                if not stopping:  # a config the instances refuse: stop them all
                    forward(signal.SIGTERM, None)
            elif index not in restart_at:
                if now - started[index] >= STEADY:
                    quick_exits[index] = 0
                delay = restart_delay(quick_exits[index])
                quick_exits[index] += 1
                restart_at[index] = now + delay
                log.error("router %d exited with status %d; starting it again in %.0f s", index, code, delay)
            elif now >= restart_at[index]:
                del restart_at[index]
                children[index] = subprocess.Popen([*command, "--instance", str(index)])
                started[index] = now
        time.sleep(0.1)
    return max(codes.values())
