"""The running router: config, routing core and transport wired on one thread.

The transport hands messages and heartbeats in; the pure ``Router`` answers
with actions; this module turns them into publishes and acknowledges each
inbound message only once the broker has acknowledged what became of it. It
also owns the clock, the signals and the counters.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from .config import Config
from .errors import BadHeartbeat
from .logs import RateLimited
from .pool import Fleet
from .router import Action, DeadLetter, Forward, Message, Router
from .transport import Outcome, Receipt, Subscription, Transport

log = logging.getLogger("mqttlb.router")

SHUTDOWN_GRACE = 10.0
"""Seconds a stopping router waits for its forwards to be acknowledged."""

TICK = 0.25
"""How often heartbeat timeouts and hold deadlines are applied (their resolution)."""


@dataclass(slots=True)
class Counters:
    """What the router has done, for stats and metrics."""

    forwarded: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(route, worker) -> forwards the broker acknowledged."""
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(route, reason) -> dead letters the broker acknowledged."""
    refused: int = 0
    """Forwards the broker refused (they went to the dead letters instead)."""
    dropped: int = 0
    """Dead letters the broker refused too: logged as errors, the only loss we cannot avoid."""
    bad_heartbeats: int = 0


def subscriptions(config: Config) -> list[Subscription]:
    """The route filters to subscribe, once each, with the shared-subscription prefix if any."""
    prefix = f"$share/{config.router.share_group}/" if config.router.share_group else ""
    qos: dict[str, int] = {}
    for route in config.routes:
        qos[route.match.mqtt] = max(qos.get(route.match.mqtt, 0), route.qos)
    return [Subscription(prefix + f, q) for f, q in qos.items()]


class Service:
    """Runs a router until asked to stop."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.clock = clock
        self.counters = Counters()
        fleet = Fleet(config.heartbeat.timeout, config.heartbeat.expire, _static_weights(config))
        self.router: Router[Receipt] = Router(config, fleet, rng or random.Random())
        self.transport = Transport(config.broker, self, heartbeat_filter=config.heartbeat.topic,
                                   routes=subscriptions(config))
        self._bad_input = RateLimited(log)
        self._stopping = False
        self._next_tick = 0.0

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self.transport.start()
        log.info("router started: %d routes, broker %s:%d", len(self.config.routes),
                 self.config.broker.host, self.config.broker.port)
        while not self._stopping:
            self._turn()
        return self._shutdown()

    def _turn(self) -> None:
        self.transport.poll(max(0.0, self._next_tick - self.clock()))
        now = self.clock()
        if now >= self._next_tick:  # timeouts and hold deadlines, not once per read burst
            self._next_tick = now + TICK
            self._execute(self.router.tick(now))
        self.transport.flush()

    def stop(self) -> None:
        self._stopping = True

    def _shutdown(self) -> int:
        """Finish in-flight forwards, then disconnect; what was not taken stays at the broker."""
        log.info("stopping: waiting for %d forwards", self.transport.pending)
        give_up = self.clock() + SHUTDOWN_GRACE
        while self.transport.pending and self.transport.routing_connected and self.clock() < give_up:
            self.transport.poll(0.05)
        self.transport.close()
        log.info("stopped")
        return 0

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        # Reloading is not there yet; without a handler SIGHUP would kill the router mid-forward.
        signal.signal(signal.SIGHUP, lambda *_: log.warning("SIGHUP: reloading the config is not supported yet; "
                                                           "restart the router to apply a new file"))
        signal.set_wakeup_fd(self.transport.wake_fd, warn_on_full_buffer=False)

    # -- transport events ---------------------------------------------------------

    def on_message(self, topic: str, payload: bytes, receipt: Receipt) -> None:
        if self._stopping:
            return  # not acknowledged: the broker keeps it for the next session
        self._execute(self.router.route(Message(topic, payload, receipt, self.clock())))

    def on_heartbeat(self, topic: str, payload: bytes) -> None:
        now = self.clock()
        levels = topic.split("/")
        worker = levels[self.config.heartbeat.worker_level]
        try:
            actions = self.router.heartbeat(worker, payload, now)
        except BadHeartbeat as error:
            self.counters.bad_heartbeats += 1
            self._bad_input.warning("heartbeat:" + worker[:64], now, "ignoring heartbeat on %s: %s",
                                    topic[:200], error)
            return
        self._execute(actions)

    def on_routing_connected(self, connected: bool) -> None:
        pass

    # -- actions ------------------------------------------------------------------

    def _execute(self, actions: list[Action[Receipt]]) -> None:
        for action in actions:
            if isinstance(action, Forward):
                self._forward(action)
            else:
                self._dead_letter(action)

    def _forward(self, action: Forward[Receipt]) -> None:
        message = action.message
        properties = self.transport.forward_properties(message.ref, action.route, action.key, message.topic)

        def done(outcome: Outcome) -> None:
            if outcome is Outcome.ACKED:
                self.counters.forwarded[(action.route, action.worker)] += 1
                self.transport.ack(message.ref)
            elif outcome is Outcome.REFUSED:
                self.counters.refused += 1
                self._dead_letter(self.router.refused(action))

        self.transport.publish(action.topic, message.payload, action.qos, properties, done)

    def _dead_letter(self, action: DeadLetter[Receipt]) -> None:
        message = action.message
        route = action.route or "none"
        self._bad_input.warning(f"dead:{route}:{action.reason}", self.clock(), "dead letter (%s) on route %s: %s",
                                action.reason, route, action.detail)
        properties = self.transport.dead_letter_properties(message.ref, action.reason, action.detail,
                                                           message.topic)

        def done(outcome: Outcome) -> None:
            if outcome is Outcome.ACKED:
                self.counters.dead_letters[(route, action.reason)] += 1
            elif outcome is Outcome.REFUSED:
                self.counters.dropped += 1
                log.error("the broker refused the dead letter for %s; the message is lost", message.topic[:200])
            if outcome is not Outcome.LOST:
                self.transport.ack(message.ref)

        payload = message.payload if action.keep_payload else b""
        self.transport.publish(action.topic, payload, 1, properties, done)


def _static_weights(config: Config) -> dict[str, dict[str, float]]:
    return {name: {w: o.weight for w, o in pool.workers.items()} for name, pool in config.pools.items()}
