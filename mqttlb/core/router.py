"""The routing decision: a message in, actions out, and no I/O.

``Router`` matches a message to a route, extracts and checks its key, asks the
route's balancer for a healthy worker and answers with a ``Forward`` or a
``DeadLetter``. While a pool has no healthy worker its messages are held (the
transport keeps them unacknowledged) and released in arrival order as soon as
one appears, or dead-lettered as ``no_worker`` once ``dead_letter.hold`` has
passed, or sooner when held messages would take more than
``router.max_held`` of the broker's in-flight window, or more than
``router.max_held_bytes`` of memory, while another pool could use it.
Workers that die are reported as a ``Departure``. Heartbeats and the clock
come in as calls, so all of this is tested without a broker and without
sleeping.

Every forward and dead letter is measured against the broker's limits
(``limits``) before it is handed out: one that the broker would refuse, and
drop the router's connection for, becomes a dead letter instead, shortened
when even the dead letter would break a limit. A message whose routing fails
in a way nobody foresaw (a balancer registered by a user that raises, say)
becomes an ``internal`` dead letter carrying the error: one message never
stops the router, nor can it stop it again after a restart.

A balancer's ``update`` costs as much as its pool is big, and thousands of
workers joining at once would make it run thousands of times over thousands of
workers. So a pool whose healthy set changed is only marked stale, and its
balancers catch up once at the next tick, or at once when messages wait for
the pool or a pick falls on a worker that is no longer healthy: nothing is
ever routed to a worker the fleet no longer counts as healthy, and a new worker
gets its first messages within a tick.

While what a departed worker left in its session is being reclaimed
(``reclaim``, rule 5), the new messages of the devices that were its own wait
behind it: the router asks a shadow balancer that still counts the departed
worker (with its last weight) whom each key belonged to, and keeps those of
the departed worker's keys in arrival order until ``release_departed``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from ..errors import BadKey
from . import balancers
from .config import Config, RouteSettings
from .held import HeldQueues
from .limits import BrokerLimits, UserProperties, plain
from .pool import Departure, Fleet, Heartbeat

Ref = TypeVar("Ref")
"""Whatever the transport needs to acknowledge an inbound message later."""


class Message(NamedTuple, Generic[Ref]):
    """A device's message as the router sees it. Named tuples, this and ``Forward``: one of each is made for
    every message, and a frozen dataclass costs twice as much to make."""

    topic: str
    payload: bytes
    ref: Ref
    arrived: float
    properties_size: int = 0
    """Bytes of the message's own MQTT 5 properties, which its forward carries on."""


class Forward(NamedTuple, Generic[Ref]):
    message: Message[Ref]
    topic: str
    qos: int
    route: str
    key: str | None
    worker: str
    user_properties: UserProperties = ()
    """Ours, after the message's own (MQTT 5)."""


if TYPE_CHECKING:
    def message_of(fields: tuple[str, bytes, Ref, float, int], /) -> Message[Ref]:
        """``Message(*fields)`` at half the cost, for the hot path: a named tuple's own constructor runs a
        ``__new__`` written in Python that only calls ``tuple.__new__``."""

    def forward_of(fields: tuple[Message[Ref], str, int, str, str | None, str, UserProperties], /) -> Forward[Ref]:
        """``Forward(*fields)``, as ``message_of``."""
else:
    message_of = partial(tuple.__new__, Message)
    forward_of = partial(tuple.__new__, Forward)


@dataclass(frozen=True, slots=True)
class DeadLetter(Generic[Ref]):
    message: Message[Ref]
    topic: str
    reason: str
    detail: str
    route: str | None
    keep_payload: bool = True
    user_properties: UserProperties = ()
    keep_properties: bool = True
    """Whether the message's own MQTT 5 properties go too (not when the dead letter had to be shortened)."""
    error: BaseException | None = None
    """For ``internal``: what went wrong, for the log."""


Action = Forward[Ref] | DeadLetter[Ref] | Departure


class Reason:
    BAD_KEY = "bad_key"
    TOO_LARGE = "too_large"
    NO_WORKER = "no_worker"
    NO_ROUTE = "no_route"
    BAD_TOPIC = "bad_topic"
    REFUSED = "refused"
    INTERNAL = "internal"
    POISON = "poison"


@dataclass(frozen=True, slots=True)
class _Route:
    settings: RouteSettings
    balancer: balancers.Balancer


_Found = tuple[_Route, dict[str, str], str | None]
"""A message's route, the values its match captured and its key (None if the route has none). A plain tuple: one
is made for every message, and a named one costs several times as much to make."""


@dataclass(frozen=True, slots=True)
class _Held(Generic[Ref]):
    message: Message[Ref]
    route: _Route
    captures: dict[str, str]
    key: str | None
    deadline: float


def _payload_size(held: _Held[Ref]) -> int:
    return len(held.message.payload)


class Router(Generic[Ref]):
    """Routes messages for one config over one fleet."""

    def __init__(self, config: Config, fleet: Fleet, rng: random.Random, limits: BrokerLimits | None = None) -> None:
        self.config = config
        self.fleet = fleet
        self._rng = rng
        self.limits = limits or BrokerLimits(config.broker.protocol == "5", config.broker.max_packet_size)
        """What the broker refuses; the service narrows it with what the broker says when it connects."""
        self._routes = [
            _Route(r, balancers.create(r.algorithm, rng=rng, **config.balancers.get(r.algorithm, {})))
            for r in config.routes
        ]
        self._held_by_pool: HeldQueues[_Held[Ref]] = HeldQueues(_payload_size)
        self.balancer_failures: list[tuple[str, BaseException]] = []
        """Routes whose balancer refused a pool's new healthy set, and why (the service logs and clears them)."""
        self._stale: dict[str, dict[str, int]] = {}
        """Pools whose balancers have not been handed their latest healthy set, with the loads reported since
        (a balancer ignores the load of a worker it does not know yet)."""
        self._departed: dict[str, dict[str, float]] = {}
        """pool -> departed worker -> its last weight: workers whose devices' new messages wait (module docstring)."""
        self._waiting: HeldQueues[_Held[Ref]] = HeldQueues(_payload_size)
        """departed worker -> the new messages of its devices, in arrival order."""
        self._shadows: dict[str, tuple[str, object, balancers.Balancer]] = {}
        """route -> (its pool, the healthy set it was made for, a balancer over that set and the departed workers)."""
        for pool in {r.pool for r in config.routes}:
            self._update_pool(pool)

    # -- messages -------------------------------------------------------

    def route(self, message: Message[Ref], reclaimed: bool = False) -> list[Action[Ref]]:
        """Decide what to do with one inbound message; [] means it is held. A ``reclaimed`` one (taken from a
        departed worker's session) is older than any message waiting for it, so it never waits."""
        return self._decide(message, self._classify(message), reclaimed)

    def route_each(self, messages: Sequence[Message[Ref]]) -> Iterator[list[Action[Ref]]]:
        """``route`` for each message in turn, its actions before the next is decided.

        What depends only on each message (its route, its key) is worked out for all of them first, so that
        their balancers can pick for all their keys together (``Balancer.prefetch``): with a large pool that is
        cheaper, and the picks are the same."""
        classified = [self._classify(message) for message in messages]
        if len(classified) > 1:
            self._prefetch(classified)
        for message, found in zip(messages, classified, strict=True):
            yield self._decide(message, found, False)

    def _prefetch(self, classified: list[_Found | list[Action[Ref]]]) -> None:
        keys: dict[str, tuple[_Route, list[str]]] = {}
        for found in classified:
            if isinstance(found, tuple):
                route, _, key = found
                if key is not None:
                    keys.setdefault(route.settings.name, (route, []))[1].append(key)
        for route, route_keys in keys.values():
            try:
                route.balancer.prefetch(route_keys)
            except Exception:  # noqa: BLE001, S110 - a hint; each pick is made again, and fails on its own message
                pass

    def oversized(self, message: Message[Ref], payload_size: int, size: int) -> list[Action[Ref]]:
        """The dead letter of a message whose payload was never held: the wire reads past a body longer than
        ``dead_letter.max_payload`` and a topic's and properties' worth (``message`` has an empty payload).
        ``size``: its body's bytes; ``payload_size``: its payload's."""
        max_payload = self.config.dead_letter.max_payload
        detail = (f"{payload_size} bytes > {max_payload}" if payload_size > max_payload
                  else f"a message of {size} bytes, {size - payload_size} of them topic and properties")
        matched = self._match(message.topic)
        route = matched[0].settings.name if matched is not None else None
        return [self._dead_letter(message, Reason.TOO_LARGE, detail, route, keep_payload=False)]

    def internal(self, message: Message[Ref], error: BaseException) -> DeadLetter[Ref]:
        """A dead letter for a message whose routing failed unforeseen, carrying the error for the log."""
        return self._dead_letter(message, Reason.INTERNAL, f"{type(error).__name__}: {error}", None, error=error)

    def _classify(self, message: Message[Ref]) -> _Found | list[Action[Ref]]:
        """What the message alone decides: its route, its captures and its key; or the dead letter it is."""
        try:
            matched = self._match(message.topic)
            if matched is None:
                return [self._dead_letter(message, Reason.NO_ROUTE, "no route matches the topic", None)]
            route, captures = matched
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
            return route, captures, key
        except Exception as error:  # noqa: BLE001 - whatever it is, this message must not stop the others
            return [self.internal(message, error)]

    def _decide(self, message: Message[Ref], found: _Found | list[Action[Ref]], reclaimed: bool) -> list[Action[Ref]]:
        """What becomes of a message, given what it alone decides (``_classify``) and the router's state now."""
        if isinstance(found, list):  # a dead letter
            return found
        try:
            return self._dispatch_or_hold(message, found, reclaimed)
        except Exception as error:  # noqa: BLE001 - whatever it is, this message must not stop the others
            return [self.internal(message, error)]

    def _dispatch_or_hold(self, message: Message[Ref], found: _Found, reclaimed: bool) -> list[Action[Ref]]:
        route, captures, key = found
        settings = route.settings
        if key is not None and settings.pool in self._departed and not reclaimed:
            owner = self._former_owner(route, key)
            if owner is not None:  # it waits for what its departed worker left to be reclaimed first
                self._waiting.append(owner, _Held(message, route, captures, key, message.arrived))
                return []
        held = self._held_by_pool.get(settings.pool)
        # held: keep arrival order. A failing pick is _decide's to catch, as _dispatch catches it for the others.
        actions = None if held else self._pick(message, route, captures, key)
        if actions is not None:
            return actions
        self._held_by_pool.append(settings.pool,
                                  _Held(message, route, captures, key, message.arrived + self.config.dead_letter.hold))
        return self._make_room()

    def _match(self, topic: str) -> tuple[_Route, dict[str, str]] | None:
        for route in self._routes:
            captures = route.settings.match.match(topic)
            if captures is not None:
                return route, captures
        return None

    def _dispatch(self, message: Message[Ref], route: _Route, captures: dict[str, str],
                  key: str | None) -> list[Action[Ref]] | None:
        """Forward ``message`` to a worker; None when its pool has none (the caller holds it)."""
        try:
            return self._pick(message, route, captures, key)
        except Exception as error:  # noqa: BLE001 - a balancer's failure costs this message, not the router
            return [self.internal(message, error)]

    def _pick(self, message: Message[Ref], route: _Route, captures: dict[str, str],
              key: str | None) -> list[Action[Ref]] | None:
        settings = route.settings
        worker = route.balancer.pick(key)
        if settings.pool in self._stale and (worker is None or not self.fleet.is_healthy(settings.pool, worker)):
            self._update_pool(settings.pool)
            worker = route.balancer.pick(key)
        if worker is None:
            return None
        self.fleet.assigned(worker)
        values = captures  # the route's own, made for this message; not update(**): that makes a dict of its own
        values["worker"] = worker
        values["topic"] = message.topic
        values["route"] = settings.name
        values["pool"] = settings.pool
        if key is not None:
            values["key"] = key
        topic = settings.forward.render(values)
        limits = self.limits
        problem = limits.topic_problem(topic)
        if problem is not None:
            return [self._dead_letter(message, Reason.BAD_TOPIC, f"forward to {worker!r}: {problem}", settings.name)]
        user = (("mqttlb-route", settings.name), ("mqttlb-key", key), ("mqttlb-topic", message.topic)) \
            if key is not None else (("mqttlb-route", settings.name), ("mqttlb-topic", message.topic))
        forward = forward_of((message, topic, settings.qos, settings.name, key, worker, user))
        if not limits.surely_fits(topic, len(message.payload), message.properties_size, user):
            problem = self._size_problem(forward)
            if problem is not None:
                return [self.too_large(forward, problem)]
        return [forward]

    def _size_problem(self, forward: Forward[Ref]) -> str | None:
        """Why the broker's Maximum Packet Size, as the router knows it, forbids ``forward``, or None."""
        limits, message = self.limits, forward.message
        return limits.size_problem(limits.packet_size(forward.topic, len(message.payload), forward.qos,
                                                      message.properties_size, forward.user_properties))

    def _dead_letter(self, message: Message[Ref], reason: str, detail: str, route: str | None,
                     keep_payload: bool = True, error: BaseException | None = None) -> DeadLetter[Ref]:
        """A dead letter for ``message``; shortened (no original topic in its topic, no payload, only our
        properties) when the broker would refuse it whole, so that it can always be published."""
        template = self.config.dead_letter.topic
        route_name = route or "none"
        topic = template.render({"reason": reason, "topic": message.topic, "route": route_name})
        user = (("mqttlb-topic", message.topic), ("mqttlb-reason", plain(f"{reason}: {detail}")[:1024]))
        payload = len(message.payload) if keep_payload else 0
        if self._fits(topic, payload, message.properties_size, user):
            return DeadLetter(message, topic, reason, detail, route, keep_payload, user, error=error)
        shortened = self.minimal_dead_letter(message, reason, detail, route, error, keep_payload=keep_payload)
        if keep_payload and not self._fits(shortened.topic, payload, 0, shortened.user_properties):
            return replace(shortened, keep_payload=False)
        return shortened

    def _fits(self, topic: str, payload: int, inbound_properties: int, user: UserProperties) -> bool:
        limits = self.limits
        return limits.topic_problem(topic) is None and (limits.max_packet_size is None or limits.size_problem(
            limits.packet_size(topic, payload, 1, inbound_properties, user)) is None)

    def minimal_dead_letter(self, message: Message[Ref], reason: str, detail: str, route: str | None,
                            error: BaseException | None = None, keep_payload: bool = False) -> DeadLetter[Ref]:
        """A dead letter that says what the message was in as few bytes as can be: its topic holds no
        original topic, it carries none of the message's own properties and (unless ``keep_payload``) no
        payload, and the original topic travels (cut to 256 characters, in plain ASCII) in ``mqttlb-reason``."""
        topic = self.config.dead_letter.topic.render({"reason": reason, "topic": "", "route": route or "none"})
        summary = plain(f"{reason}: {detail}; topic {message.topic[:256]!r}, {len(message.payload)} bytes")
        return DeadLetter(message, topic.rstrip("/"), reason, detail, route, keep_payload=keep_payload,
                          user_properties=(("mqttlb-reason", summary[:1024]),), keep_properties=False, error=error)

    @property
    def held(self) -> int:
        """Messages waiting: for a healthy worker, or for a departed worker's session to be reclaimed."""
        return self._held_by_pool.count + self._waiting.count

    @property
    def waiting(self) -> int:
        """Messages waiting for a departed worker's session to be reclaimed."""
        return self._waiting.count

    @property
    def held_bytes(self) -> int:
        """The payload bytes of the messages waiting (``held``)."""
        return self._held_by_pool.size + self._waiting.size

    # -- departed workers' devices --------------------------------------

    def await_departed(self, pool: str, worker: str, weight: float) -> None:
        """From now on, new messages of ``worker``'s devices wait until ``release_departed(worker)``."""
        self._departed.setdefault(pool, {})[worker] = weight
        self._waiting.open(worker)
        self._forget_shadows(pool)

    def awaited(self) -> list[str]:
        """The departed workers whose devices wait, the one whose messages have waited longest first."""
        return [worker for worker, _ in sorted(self._waiting.items(), key=lambda waiting: waiting[1][0].message.arrived
                                               if waiting[1] else float("inf"))]

    def release_departed(self, worker: str) -> list[Action[Ref]]:
        """``worker``'s devices wait no more: what waited is routed now, in the order it came."""
        pool = next((pool for pool, departed in self._departed.items() if worker in departed), None)
        if pool is None:
            return []
        departed = self._departed[pool]
        del departed[worker]
        if not departed:
            del self._departed[pool]
        self._forget_shadows(pool)
        actions: list[Action[Ref]] = []
        joined = False
        for item in self._waiting.pop(worker):
            held = self._held_by_pool.get(pool)
            released = None if held else self._dispatch(item.message, item.route, dict(item.captures), item.key)
            if released is None:  # the pool has no worker now: it waits for one, as any message would
                deadline = item.message.arrived + self.config.dead_letter.hold
                self._held_by_pool.append(pool, replace(item, deadline=deadline))
                joined = True
            else:
                actions.extend(released)
        if joined:  # in among the held, by arrival: deadlines and evictions read the queue from its oldest end
            self._held_by_pool.replace(pool, sorted(self._held_by_pool.get(pool) or (),
                                                    key=lambda item: item.message.arrived))
        return actions

    def _former_owner(self, route: _Route, key: str) -> str | None:
        """The departed worker ``key`` belonged to, if it belonged to one: the pick of a shadow balancer whose
        workers are the healthy ones and the departed ones."""
        if not route.balancer.needs_key:
            return None  # no affinity: no device is any worker's own
        pool = route.settings.pool
        healthy = self.fleet.healthy(pool)
        shadow = self._shadows.get(route.settings.name)
        if shadow is None or shadow[1] is not healthy:
            balancer = balancers.create(route.settings.algorithm, rng=self._rng,
                                        **self.config.balancers.get(route.settings.algorithm, {}))
            balancer.update({**healthy, **self._departed[pool]})
            shadow = self._shadows[route.settings.name] = (pool, healthy, balancer)
        owner = shadow[2].pick(key)
        return owner if owner in self._departed[pool] else None

    def _forget_shadows(self, pool: str) -> None:
        self._shadows = {name: shadow for name, shadow in self._shadows.items() if shadow[0] != pool}

    def over_byte_budget(self) -> bool:
        """Whether the messages waiting take ``router.max_held_bytes`` or more of payload."""
        return self.held_bytes >= self.config.router.max_held_bytes

    def _make_room(self) -> list[Action[Ref]]:
        """Past ``router.max_held`` messages or ``router.max_held_bytes`` of them, dead-letter the oldest held
        messages if another pool has a worker.

        Held messages stay unacknowledged, so the broker counts them against the router's in-flight
        window: left alone they would stall the pools that do have workers. With no pool able to
        take anything, there is nothing to make room for: the router takes nothing more in while they
        are over the byte budget (``over_byte_budget``), and the rest waits at the broker.
        """
        limit, budget = self.config.router.held_limit, self.config.router.max_held_bytes
        letters: list[Action[Ref]] = []
        if not any(self.fleet.serves(route.settings.pool) for route in self._routes):
            return letters
        while self._held_by_pool.count:
            if self.held > limit:
                why = f"{limit} messages were waiting (router.max_held)"
            elif self.held_bytes >= budget:
                why = f"the messages waiting took {budget} bytes or more (router.max_held_bytes)"
            else:
                break
            pool = min((held for held in self._held_by_pool.items() if held[1]),
                       key=lambda held: held[1][0].message.arrived)[0]
            item = self._held_by_pool.popleft(pool)
            if not self._held_by_pool.get(pool):
                self._held_by_pool.pop(pool)
            letters.append(self._dead_letter(item.message, Reason.NO_WORKER, f"no healthy worker in pool {pool!r}, "
                                             f"and {why} while other pools had workers", item.route.settings.name))
        return letters

    def take_held(self) -> list[Message[Ref]]:
        """Every held or waiting message, oldest first, no longer held here (a reloaded router routes them
        again, after it is told again which departed workers' devices wait)."""
        workers = list(self._waiting.names())
        items = sorted([*self._held_by_pool.take_all(), *self._waiting.take_all()],
                       key=lambda item: item.message.arrived)
        for worker in workers:
            self._waiting.open(worker)
        return [item.message for item in items]

    def forget_held(self, belongs_to_lost_connection: Callable[[Ref], bool]) -> int:
        """Drop the held messages the broker will deliver again (their connection is gone); returns how many."""
        forgotten = 0
        for pool, held in self._held_by_pool.items():
            kept = [item for item in held if not belongs_to_lost_connection(item.message.ref)]
            forgotten += len(held) - len(kept)
            if kept:
                self._held_by_pool.replace(pool, kept)
            else:
                self._held_by_pool.pop(pool)
        for worker, waiting in self._waiting.items():
            kept = [item for item in waiting if not belongs_to_lost_connection(item.message.ref)]
            forgotten += len(waiting) - len(kept)
            self._waiting.replace(worker, kept)
        return forgotten

    def refused(self, forward: Forward[Ref], why: str) -> DeadLetter[Ref]:
        """The broker refused a forward (an MQTT 5 reason code, said in ``why``): it becomes a dead letter."""
        return self._dead_letter(forward.message, Reason.REFUSED, f"the broker refused the forward to "
                                 f"{forward.worker!r}: {why}", forward.route)

    def too_large(self, forward: Forward[Ref], problem: str | None = None) -> DeadLetter[Ref]:
        """A forward over the broker's Maximum Packet Size, as a dead letter without its payload: ``problem`` as
        routing measured it, or measured now (the broker lowered its limit, on a reconnect, after the forward
        was made)."""
        problem = problem or self._size_problem(forward) or "over the broker's maximum packet size"
        return self._dead_letter(forward.message, Reason.TOO_LARGE, f"forward to {forward.worker!r}: {problem}",
                                 forward.route, keep_payload=False)

    # -- heartbeats and time --------------------------------------------

    def heartbeat(self, worker: str, payload: bytes, now: float) -> list[Action[Ref]]:
        """Take a heartbeat in; may release held messages. Raises BadHeartbeat."""
        beat = Heartbeat.parse(worker, payload)
        self.fleet.check_allowed(beat)
        changed = self.fleet.apply(beat, now)
        for pool in changed:
            self._stale.setdefault(pool, {})
        loads = self._stale.get(beat.pool)
        if loads is not None:
            loads[beat.worker] = beat.inflight
        for pool in changed & self._held_by_pool.names():  # messages wait for it: no waiting for the tick
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
        for pool, held in self._held_by_pool.items():
            while held and held[0].deadline <= now:
                item = self._held_by_pool.popleft(pool)
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
                try:
                    route.balancer.update(healthy)
                except Exception as error:  # noqa: BLE001 - a balancer's bug: its route keeps the workers it had
                    self.balancer_failures.append((route.settings.name, error))
        for worker, inflight in loads.items():
            self._report_load(pool, worker, inflight)

    def _report_load(self, pool: str, worker: str, inflight: int) -> None:
        for route in self._routes:
            if route.settings.pool == pool:
                route.balancer.report_load(worker, inflight)

    def _release(self, pool: str) -> list[Action[Ref]]:
        held = self._held_by_pool.get(pool)
        actions: list[Action[Ref]] = []
        while held:
            item = held[0]
            released = self._dispatch(item.message, item.route, dict(item.captures), item.key)
            if released is None:  # the pool emptied again: the rest keeps waiting, in order
                return actions
            self._held_by_pool.popleft(pool)
            actions.extend(released)
        self._held_by_pool.pop(pool)
        return actions
