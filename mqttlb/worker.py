"""``mqttlb.Worker``: the supported way to write a worker, and ``mqttlb worker``.

A worker speaks the SPEC's wire protocol so its author does not have to:
retained heartbeats with its pool, weight and load, a will that marks it down,
and a drain on SIGTERM or ``stop()``. Its session is persistent and a message
is acknowledged to the broker only once the handler is done with it, so what a
worker held when it crashed, and what reached its inbox while it was away,
comes back when it restarts.

Three threads, none holding a lock around user code: the client's network
thread only queues what arrives; one handler thread runs the handler, one message at
a time (per-device order) and acknowledges; a heartbeat thread reports the
load every ``interval``.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson

from .core.config import DEFAULT_POOL, BrokerSettings, Config
from .core.topics import inbox_filter, key_problem, original_topic, with_id
from .errors import EXIT_CONFIG, TransportError
from .logs import RateLimited
from .mqtt.client import Client, Inbound, Publication
from .mqtt.events import Will

log = logging.getLogger("mqttlb.worker")

DEFAULT_INBOX = "mqttlb/workers/{worker}/in/#"
REPORT_EVERY = 5.0
"""Seconds between the progress lines of ``mqttlb worker``."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One routed message, as the handler receives it."""

    device: str | None
    """The routing key (the device id), from the MQTT 5 property ``mqttlb-key``; None on keyless routes or 3.1.1."""
    topic: str
    """The device's original topic."""
    payload: bytes
    """Byte for byte what the device published."""
    route: str | None
    """The name of the route that matched, from ``mqttlb-route`` (MQTT 5)."""
    properties: tuple[tuple[str, str], ...]
    """Every MQTT 5 user property of the forward, the device's own included."""


Handler = Callable[[Delivery], None]


def delivery_of(message: Inbound, inboxes: Iterable[str]) -> Delivery:
    """What the handler gets for ``message``, a forward that arrived on one of the ``inboxes`` filters."""
    user = dict(message.user_properties)
    topic = user.get("mqttlb-topic")
    if topic is None:  # MQTT 3.1.1: the original topic is what follows the inbox's '#'
        topic = original_topic(message.topic, inboxes)
    return Delivery(device=user.get("mqttlb-key"), topic=topic, payload=message.payload,
                    route=user.get("mqttlb-route"), properties=message.user_properties)


def _problems(worker_id: str, pool: str, weight: float, interval: float, heartbeat_topic: str) -> list[str]:
    problems = [f"{what} {value!r}: {problem}" for what, value in (("worker id", worker_id), ("pool", pool))
                if (problem := key_problem(value)) is not None]
    if not weight > 0:
        problems.append(f"weight must be > 0, got {weight!r}")
    if not interval > 0:
        problems.append(f"interval must be > 0, got {interval!r}")
    if heartbeat_topic.split("/").count("+") != 1:
        problems.append(f"heartbeat topic {heartbeat_topic!r} must have exactly one '+' level (the worker id)")
    return problems


class Worker:
    """Connects, heartbeats, hands each routed message to ``handler``, drains on stop.

    One run per instance: ``start()`` then ``stop()``, or ``run()``. The counters ``received``,
    ``handled`` and ``failed`` may be read from any thread.
    """

    def __init__(self, worker_id: str, handler: Handler, *, broker: BrokerSettings, pool: str = DEFAULT_POOL,
                 weight: float = 1.0, interval: float = 2.0, heartbeat_topic: str = "mqttlb/workers/+/heartbeat",
                 inbox: str | Iterable[str] = DEFAULT_INBOX, drain_quiet: float = 1.0) -> None:
        problems = _problems(worker_id, pool, weight, interval, heartbeat_topic)
        if problems:
            raise ValueError("; ".join(problems))
        self.worker_id, self.pool, self.weight, self.interval = worker_id, pool, weight, interval
        self.heartbeat_topic = with_id(heartbeat_topic, worker_id)
        self.inbox = tuple(dict.fromkeys(f.replace("{worker}", worker_id)
                                         for f in ([inbox] if isinstance(inbox, str) else inbox)))
        self.received = self.handled = self.failed = 0
        self._handler = handler
        self._drain_quiet = drain_quiet
        self._queue: queue.Queue[tuple[int, Inbound] | None] = queue.Queue()
        self._generation = 0  # counts connections: an ack is sent only on the one the message came on
        self._last_arrival = 0.0
        self._state = "up"
        self._beat_lock = threading.Lock()  # a heartbeat is composed and queued as one step: "down" stays last
        self._stop_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._closing = threading.Event()
        self._signal: int | None = None
        self._handling = threading.Thread(target=self._handle_loop, name=f"worker-{worker_id}-handler", daemon=True)
        self._beating = threading.Thread(target=self._heartbeat_loop, name=f"worker-{worker_id}-heartbeat",
                                         daemon=True)
        self._failures = RateLimited(log)
        self.session = f"mqttlb-worker-{worker_id}"
        """The client id of its persistent session: heartbeats name it, so the router can reclaim what is queued
        there if this worker never comes back; its will too, for a router that starts after it died."""
        will = Will(self.heartbeat_topic, orjson.dumps({"worker": worker_id, "state": "down", "session": self.session}),
                    qos=1, retain=True)
        self._client = Client(broker, self.session, persistent=True, manual_ack=True, will=will,
                              on_message=self._arrived, on_connect=self._connected)

    @classmethod
    def from_config(cls, config: Config, worker_id: str, handler: Handler, **options: Any) -> Worker:
        """A worker for the router's config: its broker, heartbeat topic and the inboxes its routes forward to."""
        options.setdefault("inbox", [inbox_filter(route.forward, worker_id) for route in config.routes])
        return cls(worker_id, handler, broker=config.broker, heartbeat_topic=config.heartbeat.topic, **options)

    @property
    def inflight(self) -> int:
        """Messages taken from the broker and not yet finished: queued plus the one being handled."""
        return self.received - self.handled - self.failed

    @property
    def state(self) -> str:
        """``up``, ``draining`` or ``down``, as the last heartbeat announced."""
        return self._state

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Worker:
        """Connect, subscribe and start handling; raises TransportError when the broker cannot be reached."""
        for topic_filter in self.inbox:
            self._client.subscribe(topic_filter, 1)
        self._client.start(timeout)
        self._handling.start()
        self._beating.start()
        return self

    def run(self) -> None:
        """Start and block; on SIGTERM or SIGINT (when called on the main thread) or ``stop()``, drain and return."""
        previous = self._trap_signals()
        try:
            self.start()
            while self._signal is None and not self._stop_requested.is_set():
                time.sleep(0.1)  # a signal handler must not touch a lock, so it sets a field this loop reads
            if self._signal is not None:
                log.info("worker %s: %s, draining", self.worker_id, signal.Signals(self._signal).name)
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, timeout: float = 10.0) -> None:
        """Announce draining, handle what still arrives and what is held, announce down, disconnect.

        Gives up after ``timeout`` seconds: what is left unfinished stays unacknowledged at the
        broker, which delivers it again when a worker with this id connects. Called from the
        handler, it returns at once and the drain runs on a thread of its own.
        """
        self._stop_requested.set()
        if threading.current_thread() is self._handling:
            threading.Thread(target=self.stop, args=(timeout,), name=f"worker-{self.worker_id}-stop").start()
            return
        with self._stop_lock:
            if self._state == "down" or self._handling.ident is None:  # stopped already, or never started
                return
            deadline = time.monotonic() + timeout
            self._announce("draining")
            self._drain(deadline)
            self._closing.set()
            self._queue.put(None)
            for thread in (self._handling, self._beating):
                thread.join(max(0.0, deadline - time.monotonic()))
            if self.inflight:
                log.warning("worker %s: %d messages left unfinished; the broker delivers them again when %s "
                            "reconnects", self.worker_id, self.inflight, self.worker_id)
            self._announce("down", wait=min(5.0, max(1.0, deadline - time.monotonic())))
            self._client.stop()
            log.info("worker %s down: %d received, %d handled, %d failed", self.worker_id, self.received,
                     self.handled, self.failed)

    def _drain(self, deadline: float) -> None:
        """Until the inbox has been quiet for ``drain_quiet`` since ``draining`` went out, and nothing is held.

        The quiet spell gives the router time to see the draining heartbeat and lets forwards
        already on their way arrive.
        """
        announced = time.monotonic()
        while (now := time.monotonic()) < deadline:
            if not self.inflight and now - max(announced, self._last_arrival) >= self._drain_quiet:
                return
            time.sleep(0.02)

    def _trap_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def trap(signum: int, frame: FrameType | None) -> None:
            self._signal = signum

        return {sig: signal.signal(sig, trap) for sig in (signal.SIGTERM, signal.SIGINT)}

    # -- network thread: hand on, nothing more ---------------------------------------

    def _connected(self) -> None:
        self._generation += 1
        self._beat()  # at once, and again after every reconnect

    def _arrived(self, message: Inbound) -> None:
        self.received += 1
        self._last_arrival = time.monotonic()
        self._queue.put((self._generation, message))

    # -- handler thread ----------------------------------------------------------------

    def _handle_loop(self) -> None:
        while (item := self._queue.get()) is not None and not self._closing.is_set():
            generation, message = item
            ok = self._handle(message)
            if generation == self._generation:  # else the broker sends it again on the new connection
                self._client.ack(message)
            if ok:
                self.handled += 1
            else:
                self.failed += 1

    def _handle(self, message: Inbound) -> bool:
        """Run the handler; a handler that raises is logged (rate-limited) and the message counted as failed."""
        try:
            self._handler(delivery_of(message, self.inbox))
            return True
        except Exception as error:  # a bad message or a bug in the handler: it must not kill the worker
            self._failures.warning(type(error).__name__, time.monotonic(), "worker %s: handler failed on %s:\n%s",
                                   self.worker_id, message.topic[:200],
                                   "".join(traceback.format_exception(error)).rstrip())
            return False

    # -- heartbeats ------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._closing.wait(self.interval):
            self._beat()

    def _beat(self) -> None:
        with self._beat_lock:
            if self._state != "down":
                self._publish_heartbeat()

    def _announce(self, state: str, wait: float = 0.0) -> None:
        """Change state and say so at once; with ``wait``, up to that many seconds for the broker's PUBACK."""
        with self._beat_lock:
            self._state = state
            info = self._publish_heartbeat()
        if info is not None and wait:
            info.wait_for_publish(wait)
            if not info.is_published():
                log.warning("worker %s: the broker did not acknowledge the %s heartbeat", self.worker_id, state)

    def _publish_heartbeat(self) -> Publication | None:
        if not self._client.connected:  # stale heartbeats must not pile up; on_connect sends a fresh one
            return None
        payload = orjson.dumps({"worker": self.worker_id, "pool": self.pool, "state": self._state,
                                "weight": self.weight, "inflight": self.inflight, "interval": self.interval,
                                "session": self.session, "ts": round(time.time(), 3)})
        return self._client.publish(self.heartbeat_topic, payload, qos=1, retain=True)


# -- mqttlb worker ---------------------------------------------------------------------


class Tally:
    """The handler of ``mqttlb worker``: counts messages per device and logs progress now and then."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.per_device: Counter[str] = Counter()
        self._next_report = time.monotonic() + REPORT_EVERY

    def __call__(self, delivery: Delivery) -> None:
        self.per_device[delivery.device or delivery.topic] += 1  # keyless routes: count per topic
        if time.monotonic() >= self._next_report:
            self._next_report = time.monotonic() + REPORT_EVERY
            log.info("%s", self.summary())

    def summary(self) -> str:
        return f"worker {self.worker_id}: {self.per_device.total()} messages from {len(self.per_device)} devices"


def main(args: argparse.Namespace, config: Config) -> int:
    """``mqttlb worker``: run until SIGTERM or SIGINT, then drain and exit 0."""
    tally = Tally(args.id)
    try:
        worker = Worker.from_config(config, args.id, tally, pool=args.pool, weight=args.weight,
                                    interval=args.interval)
    except ValueError as error:
        log.error("%s", error)
        return EXIT_CONFIG
    log.info("worker %s: pool %s, weight %g, inbox %s", worker.worker_id, worker.pool, worker.weight,
             ", ".join(worker.inbox))
    try:
        worker.run()
    except TransportError as error:
        log.error("%s", error)
        return 1
    log.info("%s, %d handler failures (stopped)", tally.summary(), worker.failed)
    return 0
