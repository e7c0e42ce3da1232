"""``mqttlb.Worker``: the supported way to write a worker, and ``mqttlb worker``.

A worker speaks the SPEC's wire protocol so its author does not have to:
retained heartbeats with its pool, weight and load, a will that marks it down,
a persistent session whose messages are acknowledged only once the handler is
done (what it held when it crashed comes back when it restarts), and a drain
on SIGTERM or ``stop()``. The handler runs on a thread of its own, one message
at a time (per-device order), never on the network thread.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import orjson

from .config import BrokerSettings, Config
from .logs import RateLimited
from .topics import key_problem
from .transport import Client, Inbound

log = logging.getLogger("mqttlb.worker")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One routed message, as the handler receives it."""

    device: str | None
    """The routing key (the device id) when the route has one and the broker speaks MQTT 5."""
    topic: str
    """The device's original topic."""
    payload: bytes
    route: str | None
    properties: tuple[tuple[str, str], ...]
    """The MQTT 5 user properties of the forward, the device's own included."""


Handler = Callable[[Delivery], None]


class Worker:
    """Connects, heartbeats, hands each routed message to ``handler``, drains on stop."""

    def __init__(self, worker_id: str, handler: Handler, *, broker: BrokerSettings, pool: str = "default",
                 weight: float = 1.0, interval: float = 2.0, heartbeat_topic: str = "mqttlb/workers/+/heartbeat",
                 inbox: str = "mqttlb/workers/{worker}/in/", drain_quiet: float = 1.0) -> None:
        problem = key_problem(worker_id)
        if problem is not None:
            raise ValueError(f"worker id {worker_id!r}: {problem}")
        self.worker_id, self.pool, self.weight, self.interval = worker_id, pool, weight, interval
        self._handler = handler
        self._heartbeat_topic = heartbeat_topic.replace("+", worker_id, 1)
        self.inbox = inbox.format(worker=worker_id)
        self._drain_quiet = drain_quiet
        self._queue: queue.Queue[Inbound | None] = queue.Queue()
        self._busy = 0
        self._last_arrival = time.monotonic()
        self._state = "up"
        self._stopped = threading.Event()
        self._failures = RateLimited(log)
        self.received = self.handled = self.failed = 0
        will = (self._heartbeat_topic, orjson.dumps({"worker": worker_id, "state": "down"}))
        self._client = Client(broker, f"mqttlb-worker-{worker_id}", persistent=True, manual_ack=True, will=will,
                              on_message=self._arrived, on_connect=self._beat)
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_config(cls, config: Config, worker_id: str, handler: Handler, **options: object) -> Worker:
        """A worker for the broker and heartbeat topic of the router's config."""
        return cls(worker_id, handler, broker=config.broker, heartbeat_topic=config.heartbeat.topic,
                   **options)  # type: ignore[arg-type]

    @property
    def inflight(self) -> int:
        """Messages taken from the broker and not yet handled."""
        return self._queue.qsize() + self._busy

    def start(self) -> Worker:
        self._client.subscribe(self.inbox + "#", 1)
        self._client.start()
        for target in (self._handle_loop, self._heartbeat_loop):
            thread = threading.Thread(target=target, name=f"worker-{self.worker_id}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def run(self) -> None:
        """Start, and block until SIGTERM or SIGINT, then drain and return."""
        done = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Announce draining, finish what arrives and what is held, announce down, disconnect."""
        give_up = time.monotonic() + timeout
        self._state = "draining"
        self._beat()
        while time.monotonic() < give_up and (
                self.inflight or time.monotonic() - self._last_arrival < self._drain_quiet):
            time.sleep(0.02)
        self._state = "down"
        self._stopped.set()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(max(0.1, give_up - time.monotonic()))
        self._client.publish(self._heartbeat_topic, self._heartbeat(), qos=1, retain=True).wait_for_publish(5)
        self._client.stop()

    # -- threads ---------------------------------------------------------------------

    def _arrived(self, message: Inbound) -> None:  # network thread: hand on, nothing more
        self._last_arrival = time.monotonic()
        self.received += 1
        self._queue.put(message)

    def _handle_loop(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            self._busy = 1
            try:
                self._handler(self._delivery(message))
                self.handled += 1
            except Exception as error:  # a bad message or a bug in the handler: count, log, go on
                self.failed += 1
                self._failures.warning("handler", time.monotonic(), "handler failed on %s: %r",
                                       message.topic[:200], error)
            finally:
                self._busy = 0
            self._client.ack(message)

    def _heartbeat_loop(self) -> None:
        while not self._stopped.wait(self.interval):
            self._beat()

    def _delivery(self, message: Inbound) -> Delivery:
        user = dict(message.user_properties)
        topic = user.get("mqttlb-topic") or message.topic.removeprefix(self.inbox)
        return Delivery(device=user.get("mqttlb-key"), topic=topic, payload=message.payload,
                        route=user.get("mqttlb-route"), properties=message.user_properties)

    def _heartbeat(self) -> bytes:
        return orjson.dumps({"worker": self.worker_id, "pool": self.pool, "state": self._state,
                             "weight": self.weight, "inflight": self.inflight, "interval": self.interval,
                             "ts": time.time()})

    def _beat(self) -> None:
        self._client.publish(self._heartbeat_topic, self._heartbeat(), qos=1, retain=True)


def main(args: argparse.Namespace, config: Config) -> int:
    """``mqttlb worker``: a worker that counts what it gets and logs it."""
    per_device: Counter[str] = Counter()
    last_report = [time.monotonic()]

    def count(delivery: Delivery) -> None:
        per_device[delivery.device or delivery.topic] += 1
        now = time.monotonic()
        if now - last_report[0] >= 5.0:
            last_report[0] = now
            log.info("worker %s: %d messages from %d devices", worker.worker_id, sum(per_device.values()),
                     len(per_device))

    worker = Worker.from_config(config, args.id, count, pool=args.pool, weight=args.weight, interval=args.interval)
    log.info("worker %s: pool %s, weight %g, inbox %s#", worker.worker_id, worker.pool, worker.weight,
             worker.inbox)
    worker.run()
    log.info("worker %s stopped: %d messages from %d devices, %d handler failures", worker.worker_id,
             sum(per_device.values()), len(per_device), worker.failed)
    return 0
