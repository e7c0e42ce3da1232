"""``mqttlb simulate``: a device fleet that publishes to the topics the routes match.

For demos, smoke tests and load: every route's filter becomes a topic per
device (each ``+`` level, named or not, holds the device id; a trailing ``#``
becomes ``data``), and every message is a JSON object with the device id and a
per-device sequence number, so a receiver can check order and loss.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections import deque

import orjson

from .config import Config, RouteSettings
from .transport import Client

log = logging.getLogger("mqttlb.simulate")

MAX_UNACKED = 1000
"""QoS 1 publishes outstanding before the simulator waits for the broker."""


def topic_for(route: RouteSettings, device: str) -> str:
    levels = ["data" if level == "#" else device if level == "+" else level for level in route.match.mqtt.split("/")]
    return "/".join(levels)


def payload_for(route: RouteSettings, device: str, seq: int, now: float) -> bytes:
    body: dict[str, object] = {"device": device, "seq": seq, "ts": now}
    if route.key is not None and route.key.capture is None:  # a payload key: put the id where the route looks
        node = body
        for part in route.key.path[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[route.key.path[-1]] = device
    return orjson.dumps(body)


class Simulator:
    """Publishes ``rate`` messages a second, device after device, route after route."""

    def __init__(self, config: Config, devices: int, rate: float, qos: int = 1, prefix: str = "dev") -> None:
        self.routes = config.routes
        self.devices = [f"{prefix}-{i:04d}" for i in range(devices)]
        self.rate, self.qos = rate, qos
        self.sent = 0
        self.seqs: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._client = Client(config.broker, f"mqttlb-simulate-{time.monotonic_ns() % 10**9}")

    def stop(self) -> None:
        self._stop.set()

    def run(self, duration: float | None = None, progress: bool = False) -> int:
        self._client.start()
        try:
            self._publish_until(None if duration is None else time.monotonic() + duration, progress)
        finally:
            self._client.stop()
        return self.sent

    def _publish_until(self, end: float | None, progress: bool) -> None:
        start = last_report = time.monotonic()
        unacked: deque[object] = deque()
        while not self._stop.is_set() and (end is None or time.monotonic() < end):
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                info = self._publish_next()
                if self.qos:
                    unacked.append(info)
                    if len(unacked) >= MAX_UNACKED:
                        unacked.popleft().wait_for_publish(10)  # type: ignore[attr-defined]
            now = time.monotonic()
            if now - last_report >= (1.0 if progress else 5.0):
                last_report = now
                line = f"sent {self.sent} msgs, {self.sent / (now - start):.1f} msg/s"
                if progress:
                    print("\r" + line, end="", file=sys.stderr)
                else:
                    log.info("%s", line)
            time.sleep(0.005)
        for info in unacked:
            info.wait_for_publish(10)  # type: ignore[attr-defined]
        if progress:
            print(file=sys.stderr)

    def _publish_next(self) -> object:
        route = self.routes[(self.sent // len(self.devices)) % len(self.routes)]
        device = self.devices[self.sent % len(self.devices)]
        seq = self.seqs.get((route.name, device), 0)
        self.seqs[(route.name, device)] = seq + 1
        self.sent += 1
        return self._client.publish(topic_for(route, device), payload_for(route, device, seq, time.time()), self.qos)


def main(args: argparse.Namespace, config: Config) -> int:
    simulator = Simulator(config, args.devices, args.rate, args.qos)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: simulator.stop())
    start = time.monotonic()
    sent = simulator.run(args.duration, progress=sys.stderr.isatty())
    print(f"simulate: sent {sent} messages from {len(simulator.devices)} devices in {time.monotonic() - start:.1f} s")
    return 0
