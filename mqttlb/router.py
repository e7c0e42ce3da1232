"""The routing decision: a message in, actions out, and no I/O.

``Router`` matches a message to a route, extracts and checks its key, asks the
route's balancer for a healthy worker and answers with a ``Forward`` or a
``DeadLetter``. While a pool has no healthy worker its messages are held (the
transport keeps them unacknowledged) and released in arrival order as soon as
one appears, or dead-lettered as ``no_worker`` once ``dead_letter.hold`` has
passed, or sooner when held messages would take more than
``router.max_held`` of the broker's in-flight window while another pool could
use it. Workers that die are reported as a ``Departure``. Heartbeats and the clock come in as calls, so all of this is tested
without a broker and without sleeping.

A balancer's ``update`` costs as much as its pool is big, and thousands of
workers joining at once would make it run thousands of times over thousands of
workers. So a pool whose healthy set changed is only marked stale, and its
balancers catch up once at the next tick, or at once when messages wait for
the pool or a pick falls on a worker that is no longer healthy: nothing is
ever routed to a worker the fleet no longer counts as healthy, and a new worker
gets its first messages within a tick.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar, Union

from . import balancers
from .config import Config, RouteSettings
from .errors import BadHeartbeat, BadKey
from .pool import Departure, Fleet, Heartbeat
from .topics import MAX_TOPIC_BYTES

Ref = TypeVar("Ref")
"""Whatever the transport needs to acknowledge an inbound message later."""


@dataclass(frozen=True, slots=True)
class Message(Generic[Ref]):
    topic: str
    payload: bytes
    ref: Ref
    arrived: float


@dataclass(frozen=True, slots=True)
class Forward(Generic[Ref]):
    message: Message[Ref]
    topic: str
    qos: int
    route: str
    key: str | None
    worker: str


@dataclass(frozen=True, slots=True)
class DeadLetter(Generic[Ref]):
    message: Message[Ref]
    topic: str
    reason: str
    detail: str
    route: str | None
    keep_payload: bool = True


Action = Union[Forward[Ref], DeadLetter[Ref], Departure]


class Reason:
    BAD_KEY = "bad_key"
    TOO_LARGE = "too_large"
    NO_WORKER = "no_worker"
    NO_ROUTE = "no_route"
    BAD_TOPIC = "bad_topic"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class _Route:
    settings: RouteSettings
    balancer: balancers.Balancer


@dataclass(frozen=True, slots=True)
class _Held(Generic[Ref]):
    message: Message[Ref]
    route: _Route
    captures: dict[str, str]
    key: str | None
    deadline: float


class Router(Generic[Ref]):
    """Routes messages for one config over one fleet."""

    def __init__(self, config: Config, fleet: Fleet, rng: random.Random) -> None:
        self.config = config
        self.fleet = fleet
        self.bad_heartbeats = 0
        self._routes = [
            _Route(r, balancers.create(r.algorithm, rng=rng, **config.balancers.get(r.algorithm, {})))
            for r in config.routes
        ]
        self._held_by_pool: dict[str, deque[_Held[Ref]]] = {}
        self._stale: dict[str, dict[str, int]] = {}
        """Pools whose balancers have not been handed their latest healthy set, with the loads reported since
        (a balancer ignores the load of a worker it does not know yet)."""
        for pool in {r.pool for r in config.routes}:
            self._update_pool(pool)

    # -- messages -------------------------------------------------------

    def route(self, message: Message[Ref]) -> list[Action[Ref]]:
        """Decide what to do with one inbound message; [] means it is held."""
        found = self._match(message.topic)
        if found is None:
            return [self._dead_letter(message, Reason.NO_ROUTE, "no route matches the topic", None)]
        route, captures = found
        settings = route.settings
        if len(message.payload) > self.config.dead_letter.max_payload:
            detail = f"{len(message.payload)} bytes > {self.config.dead_letter.max_payload}"
            return [self._dead_letter(message, Reason.TOO_LARGE, detail, settings.name, keep_payload=False)]
        key = None
        if settings.key is not None:
            try:
                key = settings.key.extract(captures, message.payload)
            except BadKey as error:
                return [self._dead_letter(message, Reason.BAD_KEY, str(error), settings.name)]
        item = _Held(message, route, captures, key, message.arrived + self.config.dead_letter.hold)
        held = self._held_by_pool.get(settings.pool)
        if held:  # keep arrival order behind what already waits for this pool
            held.append(item)
            return self._make_room()
        return self._dispatch(item) or self._make_room()

    def _match(self, topic: str) -> tuple[_Route, dict[str, str]] | None:
        for route in self._routes:
            captures = route.settings.match.match(topic)
            if captures is not None:
                return route, captures
        return None

    def _dispatch(self, item: _Held[Ref]) -> list[Action[Ref]]:
        """Forward ``item`` to a worker, or hold it when its pool has none."""
        message, settings, key = item.message, item.route.settings, item.key
        worker = item.route.balancer.pick(key)
        if settings.pool in self._stale and (worker is None or not self.fleet.is_healthy(settings.pool, worker)):
            self._update_pool(settings.pool)
            worker = item.route.balancer.pick(key)
        if worker is None:
            self._held_by_pool.setdefault(settings.pool, deque()).append(item)
            return []
        self.fleet.assigned(worker)
        values = dict(item.captures)
        values.update(worker=worker, topic=message.topic, route=settings.name, pool=settings.pool)
        if key is not None:
            values["key"] = key
        topic = settings.forward.render(values)
        if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
            return [self._dead_letter(message, Reason.BAD_TOPIC, "forward topic too long", settings.name)]
        return [Forward(message, topic, settings.qos, settings.name, key, worker)]

    def _dead_letter(self, message: Message[Ref], reason: str, detail: str, route: str | None,
                     keep_payload: bool = True) -> DeadLetter[Ref]:
        template = self.config.dead_letter.topic
        topic = template.render({"reason": reason, "topic": message.topic, "route": route or "none"})
        encoded = topic.encode("utf-8")
        if len(encoded) > MAX_TOPIC_BYTES:  # keep the reason; cut the original topic to fit
            topic = encoded[:MAX_TOPIC_BYTES].decode("utf-8", "ignore")
        return DeadLetter(message, topic, reason, detail, route, keep_payload)

    @property
    def held(self) -> int:
        """Messages waiting for a healthy worker."""
        return sum(len(held) for held in self._held_by_pool.values())

    def _make_room(self) -> list[Action[Ref]]:
        """Past ``router.max_held``, dead-letter the oldest held message if another pool has a worker.

        Held messages stay unacknowledged, so the broker counts them against the router's in-flight
        window: left alone they would stall the pools that do have workers. With no pool able to
        take anything, there is nothing to make room for, and the rest waits at the broker.
        """
        limit = self.config.router.held_limit
        if self.held <= limit or not any(self.fleet.serves(route.settings.pool) for route in self._routes):
            return []
        oldest = min((held for held in self._held_by_pool.values() if held), key=lambda held: held[0].message.arrived)
        item = oldest.popleft()
        pool = item.route.settings.pool
        if not oldest:
            del self._held_by_pool[pool]
        return [self._dead_letter(item.message, Reason.NO_WORKER,
                                  f"no healthy worker in pool {pool!r}, and {limit} messages were waiting "
                                  f"(router.max_held) while other pools had workers", item.route.settings.name)]

    def take_held(self) -> list[Message[Ref]]:
        """Every held message, oldest first, no longer held here (a reloaded router routes them again)."""
        items = sorted((item for held in self._held_by_pool.values() for item in held),
                       key=lambda item: item.message.arrived)
        self._held_by_pool = {}
        return [item.message for item in items]

    def forget_held(self, belongs_to_lost_connection: Callable[[Ref], bool]) -> int:
        """Drop the held messages the broker will deliver again (their connection is gone); returns how many."""
        forgotten = 0
        for pool, held in list(self._held_by_pool.items()):
            kept = deque(item for item in held if not belongs_to_lost_connection(item.message.ref))
            forgotten += len(held) - len(kept)
            if kept:
                self._held_by_pool[pool] = kept
            else:
                del self._held_by_pool[pool]
        return forgotten

    def refused(self, forward: Forward[Ref]) -> DeadLetter[Ref]:
        """The broker refused a forward (an MQTT 5 reason code): it becomes a dead letter."""
        return self._dead_letter(forward.message, Reason.REFUSED, f"the broker refused the forward to "
                                 f"{forward.worker!r}", forward.route)

    # -- heartbeats and time --------------------------------------------

    def heartbeat(self, worker: str, payload: bytes, now: float) -> list[Action[Ref]]:
        """Take a heartbeat in; may release held messages. Raises BadHeartbeat."""
        try:
            beat = Heartbeat.parse(worker, payload)
            self.fleet.check_allowed(beat)
        except BadHeartbeat:
            self.bad_heartbeats += 1
            raise
        changed = self.fleet.apply(beat, now)
        for pool in changed:
            self._stale.setdefault(pool, {})
        loads = self._stale.get(beat.pool)
        if loads is not None:
            loads[beat.worker] = beat.inflight
        for pool in changed & self._held_by_pool.keys():  # messages wait for it: no waiting for the tick
            self._update_pool(pool)
        if loads is None:
            self._report_load(beat.pool, beat.worker, beat.inflight)
        return [*self.fleet.take_departures(), *self._release_all(changed)]

    def tick(self, now: float) -> list[Action[Ref]]:
        """Apply heartbeat timeouts and hold deadlines; balancers catch up with the pools that changed."""
        changed = self.fleet.tick(now)
        for pool in self._stale.keys() | changed:
            self._update_pool(pool)
        actions: list[Action[Ref]] = [*self.fleet.take_departures(), *self._release_all(changed)]
        for held in self._held_by_pool.values():
            while held and held[0].deadline <= now:
                item = held.popleft()
                actions.append(self._dead_letter(item.message, Reason.NO_WORKER,
                                                 f"no healthy worker in pool {item.route.settings.pool!r}",
                                                 item.route.settings.name))
        return actions

    def _release_all(self, pools: set[str]) -> list[Action[Ref]]:
        actions: list[Action[Ref]] = []
        for pool in sorted(pools):
            actions.extend(self._release(pool))
        return actions

    def _update_pool(self, pool: str) -> None:
        loads = self._stale.pop(pool, {})
        healthy = self.fleet.healthy(pool)
        for route in self._routes:
            if route.settings.pool == pool:
                route.balancer.update(healthy)
        for worker, inflight in loads.items():
            self._report_load(pool, worker, inflight)

    def _report_load(self, pool: str, worker: str, inflight: int) -> None:
        for route in self._routes:
            if route.settings.pool == pool:
                route.balancer.report_load(worker, inflight)

    def _release(self, pool: str) -> list[Action[Ref]]:
        held = self._held_by_pool.pop(pool, None)
        if not held:
            return []
        actions: list[Action[Ref]] = []
        while held:
            released = self._dispatch(held.popleft())
            if not released:  # the pool emptied again: the rest keeps waiting, in order
                self._held_by_pool[pool].extend(held)
                break
            actions.extend(released)
        return actions
