"""``mqttlb simulate``: a device fleet publishing to the topics the routes match.

Why: to watch the router work (the demo uses it), to smoke-test a deployment
and to load one, without real devices. Each route's filter becomes one topic
per device: every ``+`` level, named capture or not, holds the device id and a
trailing ``#`` becomes ``data``; a route keyed on ``payload.<path>`` finds the
device id at that path. Payloads are JSON objects ``{"device", "seq", "ts"}``
where ``seq`` counts the messages of one topic (one device on one route) from
0, so a receiver can check order and loss.

The schedule is pure: message ``i`` comes from device ``i mod N`` on route
``(i div N) mod R``, so what was sent follows from the count alone
(``Devices.identity``). Only ``Simulator`` touches the broker, through
``mqtt.client.Client``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from ..core.config import Config, RouteSettings
from ..errors import EXIT_CONFIG, TransportError
from ..mqtt.client import Client

log = logging.getLogger("mqttlb.simulate")

SUFFIX = "data"
"""What stands for a trailing ``#``."""
OWN_FIELDS = ("device", "seq", "ts")
MAX_UNACKED = 1000
"""QoS 1 publishes the broker has not acknowledged yet before the simulator waits."""
SETTLE_TIMEOUT = 10.0
"""Seconds to wait at the end for the broker's acknowledgements."""
TICK = 0.01
"""The longest sleep between two looks at the clock."""
MAX_BURST = 0.1
"""Seconds of messages sent at most between two looks at the clock, when behind."""

Progress = Callable[[int, float], None]
"""Called with the messages sent so far and the rate achieved."""


class Published(Protocol):
    """What ``Client.publish`` returns, as far as the simulator needs it."""

    @property
    def rc(self) -> int: ...

    def is_published(self) -> bool: ...


def device_ids(count: int, prefix: str = "dev") -> tuple[str, ...]:
    return tuple(f"{prefix}-{number:04d}" for number in range(1, count + 1))


@dataclass(frozen=True, slots=True)
class TopicMaker:
    """The topic and payloads of one route, for any device."""

    route: str
    levels: tuple[str | None, ...]
    """The topic's levels; None stands for the device id."""
    key_path: tuple[str, ...] = ()
    """Where in the payload the route looks for the device id; empty when the key is not in the payload."""

    @classmethod
    def for_route(cls, route: RouteSettings) -> TopicMaker:
        """Raises ValueError when the route's payload key would overwrite the simulator's own fields."""
        levels = tuple(None if level == "+" else SUFFIX if level == "#" else level
                       for level in route.match.mqtt.split("/"))
        path = route.key.path if route.key is not None and route.key.needs_payload else ()
        if path and path != ("device",) and path[0] in OWN_FIELDS:
            raise ValueError(f"route {route.name}: key {route.key} collides with the simulator's own "
                             f"field {path[0]!r} ({', '.join(OWN_FIELDS)})")
        return cls(route.name, levels, path)

    def topic(self, device: str) -> str:
        return "/".join(device if level is None else level for level in self.levels)

    def payload(self, device: str, seq: int, ts: float) -> bytes:
        body: dict[str, object] = {"device": device, "seq": seq, "ts": ts}
        if self.key_path:
            value: object = device
            for part in reversed(self.key_path[1:]):
                value = {part: value}
            body[self.key_path[0]] = value
        return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class Devices:
    """The simulated devices and the routes they publish to, in a fixed round-robin order."""

    makers: tuple[TopicMaker, ...]
    ids: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Config, count: int) -> Devices:
        if count < 1:
            raise ValueError(f"a fleet needs at least one device, got {count}")
        devices = cls(tuple(TopicMaker.for_route(route) for route in config.routes), device_ids(count))
        for maker in devices.makers:
            _warn_if_shadowed(config, maker.route, maker.topic(devices.ids[0]))
        return devices

    def identity(self, index: int) -> tuple[TopicMaker, str, int]:
        """Message ``index``: its route's maker, its device and its seq."""
        round_, device = divmod(index, len(self.ids))
        seq, route = divmod(round_, len(self.makers))
        return self.makers[route], self.ids[device], seq

    def message(self, index: int, ts: float) -> tuple[str, bytes]:
        """The topic and payload of message ``index``."""
        maker, device, seq = self.identity(index)
        return maker.topic(device), maker.payload(device, seq, ts)


def _warn_if_shadowed(config: Config, route: str, topic: str) -> None:
    first = next((r.name for r in config.routes if r.match.match(topic) is not None), route)
    if first != route:
        log.warning("route %s: its simulated topic %s is taken by route %s first", route, topic, first)


class Simulator:
    """Publishes a fleet's messages at a steady rate until stopped; ``run`` may be given a thread of its own."""

    def __init__(self, config: Config, devices: int, rate: float, qos: int = 1) -> None:
        if rate <= 0:
            raise ValueError(f"the rate must be above 0 messages a second, got {rate:g}")
        self.devices = Devices.from_config(config, devices)
        self.rate, self.qos = rate, qos
        self.sent = 0
        """Messages handed to the client; message i is ``devices.identity(i)``."""
        self.unconfirmed = 0
        """Of those, how many the broker did not take (QoS 1: no acknowledgement in time; QoS 0: not connected)."""
        self._burst = max(1, int(rate * MAX_BURST))
        self._stop = threading.Event()
        self._client = Client(config.broker, f"mqttlb-simulate-{os.getpid()}-{secrets.token_hex(3)}")

    def stop(self) -> None:
        """Ask ``run`` to finish; any thread or a signal handler may call it."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self, duration: float | None = None, progress: Progress | None = None, every: float = 1.0) -> int:
        """Connect, publish for ``duration`` seconds or until ``stop``, wait for the acks; returns ``sent``.

        Raises TransportError when the broker cannot be reached.
        """
        self._client.start()
        try:
            self._publish(math.inf if duration is None else duration, progress, every)
        finally:
            self._client.stop()
        return self.sent

    def _publish(self, duration: float, progress: Progress | None, every: float) -> None:
        start = time.monotonic()
        next_report = start + every
        outstanding: deque[Published] = deque()
        while not self._stop.is_set():
            now = time.monotonic()
            due = min(int(min(now - start, duration) * self.rate), self.sent + self._burst)
            while self.sent < due and self._window_open(outstanding):
                info = self._publish_next()
                if self.qos:
                    outstanding.append(info)
            if now - start >= duration:
                break
            if progress is not None and now >= next_report:
                next_report = now + every
                progress(self.sent, self.sent / (now - start))
            self._stop.wait(min(TICK, max(0.0, (self.sent + 1) / self.rate - (now - start))))
        self._settle(outstanding, time.monotonic() + SETTLE_TIMEOUT)

    def _publish_next(self) -> Published:
        topic, payload = self.devices.message(self.sent, time.time())
        self.sent += 1
        info = self._client.publish(topic, payload, self.qos)
        if self.qos == 0 and info.rc != 0:
            self.unconfirmed += 1
        return info

    def _window_open(self, outstanding: deque[Published]) -> bool:
        """Drop what the broker acknowledged; wait while too much is unacknowledged. False once stopped."""
        while outstanding and outstanding[0].is_published():
            outstanding.popleft()
        while len(outstanding) >= MAX_UNACKED and not outstanding[0].is_published():
            if self._stop.wait(0.001):
                return False
        return not self._stop.is_set()

    def _settle(self, outstanding: deque[Published], deadline: float) -> None:
        """Wait for the broker to acknowledge what is outstanding; count what it does not by ``deadline``."""
        while outstanding and time.monotonic() < deadline:
            if outstanding[0].is_published():
                outstanding.popleft()
            else:
                time.sleep(0.005)
        self.unconfirmed += len(outstanding)


def main(args: argparse.Namespace, config: Config) -> int:
    """``mqttlb simulate``: exit 0 when done or interrupted, 1 without a broker, 2 for bad arguments."""
    try:
        simulator = Simulator(config, args.devices, args.rate, args.qos)
    except ValueError as error:
        print(f"simulate: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: simulator.stop())
    tty = sys.stderr.isatty()
    start = time.monotonic()
    try:
        simulator.run(args.duration, _show_progress if tty else _log_progress, every=1.0 if tty else 5.0)
    except TransportError as error:
        print(f"simulate: {error}", file=sys.stderr)
        return 1
    finally:
        if tty:
            print(file=sys.stderr)
    planned = math.inf if args.duration is None else int(args.duration * args.rate)
    if simulator.sent < planned and not simulator.stopped:
        log.warning("sent %d of the %d messages asked for: the broker or this machine could not keep up",
                    simulator.sent, planned)
    refused = f" ({simulator.unconfirmed} not taken by the broker)" if simulator.unconfirmed else ""
    print(f"simulate: sent {simulator.sent} messages from {len(simulator.devices.ids)} devices "
          f"in {time.monotonic() - start:.1f} s{refused}")
    return 0


def _show_progress(sent: int, rate: float) -> None:
    print(f"\rsent {sent} msgs, {rate:.1f} msg/s ", end="", file=sys.stderr, flush=True)


def _log_progress(sent: int, rate: float) -> None:
    log.info("sent %d msgs, %.1f msg/s", sent, rate)
