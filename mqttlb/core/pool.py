"""The fleet of workers, as their heartbeats describe it.

Health lives here and nowhere else: balancers only ever see the snapshot of
healthy workers that ``Fleet.healthy`` returns. A worker is healthy while its
last heartbeat said ``up`` and is younger than the timeout; it is forgotten
after ``expire`` without one. The clock is passed in, so the state machine is
tested without sleeping.

Cost stays flat in the size of the fleet: thousands of workers beat every few
seconds, and each beat is on the path of the forwards. So nothing here scans
the fleet. The healthy sets and the counts of workers by pool and state are
kept up to date one worker at a time; a heartbeat that changes only the load
touches its own record and nothing else. What time does to a worker (a
timeout, a slow-start step, expiry) waits in an agenda, a heap of the moments
each worker is next due, so the passing of time costs only the workers it
concerns. A pool keeps at most ``max_workers`` workers, and the pools the
config does not name share ``DEFAULT_MAX_WORKERS``, so a flood of made-up ids
cannot grow the router without bound.
"""

from __future__ import annotations

import fnmatch
import heapq
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import orjson

from ..errors import BadHeartbeat
from .config import DEFAULT_MAX_WORKERS, DEFAULT_POOL, PoolSettings
from .topics import key_problem

MAX_HEARTBEAT_BYTES = 16384
_SMALLEST_WEIGHT = math.ulp(0.0)
"""5e-324, the smallest float > 0: any weight > 0 is valid, and the balancers cope with all of them."""
UNNAMED_POOLS = "+"
"""How the pools the config does not name appear in refusal counts: together, as one (no pool has this name)."""


class WorkerState(StrEnum):
    UP = "up"
    DRAINING = "draining"
    DOWN = "down"


class Health(StrEnum):
    """What the router makes of a worker: its announced state, or ``timeout``."""

    UP = "up"
    DRAINING = "draining"
    DOWN = "down"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker: str
    pool: str = DEFAULT_POOL
    pool_named: bool = field(default=True, compare=False)
    """False when the payload named no pool, as a will (``{"worker": id, "state": "down"}``) does."""
    state: WorkerState = WorkerState.UP
    weight: float = 1.0
    inflight: int = 0
    session: str | None = None
    """The client id of the worker's persistent broker session, which the router may reclaim once it is gone."""

    @classmethod
    def parse(cls, worker: str, payload: bytes) -> Heartbeat:
        """Read a heartbeat published on ``worker``'s topic; raises BadHeartbeat."""
        problem = key_problem(worker)
        if problem is not None:
            raise BadHeartbeat(f"worker id in topic: {problem}")
        if not payload:
            return cls(worker=worker, state=WorkerState.DOWN, pool_named=False)  # a cleared retained heartbeat
        body = json_object(payload)
        claimed = body.get("worker", worker)
        if claimed != worker:
            raise BadHeartbeat(f"worker {claimed!r} in payload does not match {worker!r} in topic")
        pool = body.get("pool", DEFAULT_POOL)
        if not isinstance(pool, str) or key_problem(pool) is not None:
            raise BadHeartbeat(f"pool must be a non-empty name, got {pool!r}")
        try:
            state = WorkerState(body.get("state", "up"))
        except ValueError:
            raise BadHeartbeat(f"state must be up, draining or down, got {body.get('state')!r}") from None
        weight = body.get("weight", 1.0)
        if not _is_number(weight) or not 0 < weight < math.inf:
            raise BadHeartbeat(f"weight must be a number > 0, got {weight!r}")
        inflight = body.get("inflight", 0)
        if not isinstance(inflight, int) or isinstance(inflight, bool) or inflight < 0:
            raise BadHeartbeat(f"inflight must be an integer >= 0, got {inflight!r}")
        session = body.get("session")
        problem = None if session is None else client_id_problem(session)
        if problem is not None:
            raise BadHeartbeat(f"session must be an MQTT client id, {problem}")
        return cls(worker=worker, pool=pool, state=state, weight=float(weight), inflight=inflight,
                   pool_named="pool" in body, session=session)


def json_object(payload: bytes, what: str = "") -> dict[str, Any]:
    """A heartbeat's JSON object (a worker's, or ``what`` says whose); raises BadHeartbeat."""
    if len(payload) > MAX_HEARTBEAT_BYTES:
        raise BadHeartbeat(f"{what}heartbeat over {MAX_HEARTBEAT_BYTES} bytes")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise BadHeartbeat(f"{what}not JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadHeartbeat(f"{what}not a JSON object")
    return body


def client_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a client id the router connects with (it must be a key: no control characters,
    nothing a topic would mind), or None."""
    if not isinstance(value, str):
        return f"got {value!r}"
    problem = key_problem(value)
    return None if problem is None else f"got {value[:64]!r}: {problem}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the router sees it now (for stats, status and metrics)."""

    worker: str
    pool: str
    health: Health
    weight: float
    inflight: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class Departure:
    """A worker that went down or silent while it may still have held messages."""

    worker: str
    pool: str
    health: Health
    """``down`` (its will or its own word) or ``timeout`` (silent)."""
    holding: int
    """About how many messages it held: the inflight of its last live heartbeat plus what was routed to it
    since. They wait in its session at the broker until it comes back, or the router reclaims them."""
    session: str | None = None
    """Its broker session's client id, when its heartbeats named one: what may be reclaimed."""
    weight: float = 1.0
    """Its weight in the healthy set it left (to tell which devices were its own)."""
    drained: bool = False
    """It was draining, or was first heard gone: its devices had moved on already."""


_LIVE = (Health.UP, Health.DRAINING)


class FleetFull(BadHeartbeat):
    """A heartbeat of a new worker id for a pool that already keeps as many workers as it may."""

    def __init__(self, message: str, pool: str) -> None:
        super().__init__(message)
        self.pool = pool
        """The pool, or UNNAMED_POOLS: a label of bounded cardinality, to count and to rate-limit logs by."""


@dataclass(frozen=True, slots=True)
class Census:
    """The fleet in numbers, kept as it changes: cheap to take whatever the size of the fleet."""

    size: int
    states: Mapping[str, Mapping[str, int]]
    """pool -> health (every one) -> workers, for every pool with a worker."""
    refused: Mapping[tuple[str, str], int]
    """(pool, reason) -> heartbeats of new ids refused; ``pool`` is UNNAMED_POOLS for those the config does not
    name, ``reason`` is ``max_workers``."""


@dataclass(slots=True)
class _Record:
    beat: Heartbeat
    last_seen: float
    health: Health
    """As of the last apply or tick, to notice departures."""
    up_since: float
    """When it last became healthy, for slow start."""
    assigned: int = 0
    """Messages routed to the worker since this heartbeat."""
    due: float | None = None
    """When the agenda looks at the worker next (its entry there); None when it has none."""


class Fleet:
    """Every worker of every pool, fed by heartbeats and the passing of time."""

    SLOW_START_STEPS: int = 10
    """A ramping weight changes in this many steps (10%, 20% ... 100%), not on every tick."""

    def __init__(self, timeout: float, expire: float, pools: Mapping[str, PoolSettings] | None = None) -> None:
        self._timeout = timeout
        self._expire = expire
        self._pools = pools or {}
        self._records: dict[str, _Record] = {}
        self._healthy: dict[str, dict[str, float]] = {}
        """pool -> worker -> weight, changed in place, one worker at a time."""
        self._snapshots: dict[str, Mapping[str, float]] = {}
        """Frozen copies of ``_healthy`` handed out, each dropped when its pool changes."""
        self._touched: dict[str, dict[str, float | None]] = {}
        """pool -> worker -> its weight in the healthy set before this call (None: absent)."""
        self._states: dict[str, Counter[str]] = {}
        self._unnamed = 0
        """Workers of pools the config does not name: they share one budget."""
        self._agenda: list[tuple[float, str]] = []
        """(when, worker): a heap of the moments time changes something for a worker."""
        self._departures: list[Departure] = []
        self._refused: Counter[tuple[str, str]] = Counter()
        self._sessions: dict[str, set[str]] = {}
        """session client id -> the workers whose last heartbeats name it. Any of them alive makes the session
        one not to reclaim: a heartbeat naming a live worker's session, then going down, must not hand it over."""

    def reconfigure(self, timeout: float, expire: float, pools: Mapping[str, PoolSettings], now: float) -> None:
        """New settings from a reloaded config: every worker's record is kept, health is worked out again."""
        self._timeout, self._expire, self._pools = timeout, expire, pools
        records = sorted(self._records.values(), key=lambda record: record.last_seen)
        self._records, self._healthy, self._snapshots, self._states, self._unnamed = {}, {}, {}, {}, 0
        self._agenda = []
        for record in records:
            record.due = None
            self._records[record.beat.worker] = record
            self._count(record, 1)
            self._review(record, now)
        self._changes()

    def check_allowed(self, beat: Heartbeat) -> None:
        """Raise BadHeartbeat when the pool the heartbeat names does not allow its worker id (``allow``)."""
        pool = self._pools.get(beat.pool)
        if beat.state is WorkerState.DOWN and not beat.pool_named:
            return  # a will: it takes nobody into a pool
        if pool is not None and pool.allow and not any(fnmatch.fnmatchcase(beat.worker, p) for p in pool.allow):
            raise BadHeartbeat(f"worker {beat.worker!r} is not allowed in pool {beat.pool!r} "
                               f"(pools.{beat.pool}.allow)")

    def apply(self, beat: Heartbeat, now: float) -> set[str]:
        """Take a heartbeat in; returns the pools whose healthy set changed. Raises FleetFull.

        What time has done by ``now`` is applied first, as ``tick`` would.
        """
        old = self._records.get(beat.worker)
        if old is not None and not beat.pool_named and beat.state is not WorkerState.UP:
            beat = replace(beat, pool=old.beat.pool)  # a will names no pool: the worker stays where it was
        if old is not None and beat.session is None and beat.state is WorkerState.DOWN:
            beat = replace(beat, session=old.beat.session)  # nor a session: it is still the one to reclaim
        if old is None or old.beat.pool != beat.pool:
            self._check_room(beat)
        if old is not None and old.beat.session != beat.session:
            self._unname(old.beat)
        if beat.session is not None:
            self._sessions.setdefault(beat.session, set()).add(beat.worker)
        self._advance(now)
        if old is not None and self._records.get(beat.worker) is not old:
            old = None  # time forgot it just now (expired; its room is free): this heartbeat is a newcomer's
        health = Health(beat.state.value)  # a fresh heartbeat has not timed out
        if old is not None and (old.beat.pool, old.beat.weight, old.health) == (beat.pool, beat.weight, health):
            old.beat, old.last_seen, old.assigned = beat, now, 0  # only the load changed: nothing else to do
            return self._changes()
        if old is None:
            record = self._records[beat.worker] = _Record(beat, now, health, up_since=now)
            if health not in _LIVE and beat.session is not None:
                # First heard gone (its will, retained while no router ran): its session may still hold what was
                # forwarded to it. Its devices moved on long ago, so none waits for the reclaim.
                self._departed(record, health, moved=True)
        else:
            if old.health in _LIVE and health not in _LIVE:
                # a will or a "down" says nothing of the load: what it held is what it last reported
                self._departed(old, health)
            self._count(old, -1)
            self._place(old, None)
            record = old
            if record.health is not Health.UP:
                record.up_since = now
            record.beat, record.last_seen, record.assigned, record.health = beat, now, 0, health
        self._count(record, 1)
        self._place(record, self._weight(record, now) if health is Health.UP else None)
        self._schedule(record, now)
        return self._changes()

    def tick(self, now: float) -> set[str]:
        """Apply timeouts, slow-start steps and expiry; returns the pools whose healthy set changed."""
        self._advance(now)
        return self._changes()

    def assigned(self, worker: str) -> None:
        """Note that a message was routed to ``worker``."""
        record = self._records.get(worker)
        if record is not None:
            record.assigned += 1

    def take_departures(self) -> list[Departure]:
        """The workers that went down or silent since the last call, oldest first."""
        departures, self._departures = self._departures, []
        return departures

    def healthy(self, pool: str) -> Mapping[str, float]:
        """The healthy workers of ``pool`` with their weights: what balancers see. A snapshot, never changed."""
        snapshot = self._snapshots.get(pool)
        if snapshot is None:
            snapshot = self._snapshots[pool] = MappingProxyType(dict(self._healthy.get(pool, {})))
        return snapshot

    def using(self, session: str) -> str | None:
        """A live worker whose heartbeats name ``session`` (the first by id), if any: that session is not to be
        reclaimed."""
        for worker in sorted(self._sessions.get(session, ())):
            record = self._records.get(worker)
            if record is not None and record.beat.session == session and record.health in _LIVE:
                return worker
        return None

    def _unname(self, beat: Heartbeat) -> None:
        """``beat``'s worker no longer names its session."""
        if beat.session is None or beat.session not in self._sessions:
            return
        workers = self._sessions[beat.session]
        workers.discard(beat.worker)
        if not workers:
            del self._sessions[beat.session]

    def live(self, worker: str) -> bool:
        """Whether ``worker`` is up or draining, and heard from within the timeout."""
        record = self._records.get(worker)
        return record is not None and record.health in _LIVE

    def is_healthy(self, pool: str, worker: str) -> bool:
        return worker in self._healthy.get(pool, {})

    def serves(self, pool: str) -> bool:
        """Whether ``pool`` has a healthy worker."""
        return bool(self._healthy.get(pool))

    def staffed(self) -> frozenset[str]:
        """The pools with at least one healthy worker."""
        return frozenset(self._healthy)

    def census(self) -> Census:
        states = {pool: {health.value: counts[health.value] for health in Health}
                  for pool, counts in sorted(self._states.items())}
        return Census(len(self._records), states, dict(self._refused))

    def views(self, now: float) -> list[WorkerView]:
        """Every worker, by id: as long as the fleet is big, so for small fleets or on demand."""
        return [
            WorkerView(worker=w, pool=r.beat.pool, health=self._health(r, now), weight=self._weight(r, now),
                       inflight=r.beat.inflight, last_seen=r.last_seen)
            for w, r in sorted(self._records.items())
        ]

    # -- room -------------------------------------------------------------------------------------

    def _check_room(self, beat: Heartbeat) -> None:
        settings = self._pools.get(beat.pool)
        if settings is not None:
            states = self._states.get(beat.pool)
            if states is None or states.total() < settings.max_workers:
                return
            self._refused[(beat.pool, "max_workers")] += 1
            raise FleetFull(f"pool {beat.pool!r} already has {settings.max_workers} workers "
                            f"(pools.{beat.pool}.max_workers): new worker ids are ignored", beat.pool)
        if self._unnamed < DEFAULT_MAX_WORKERS:
            return
        self._refused[(UNNAMED_POOLS, "max_workers")] += 1
        raise FleetFull(f"the pools the config does not name already have {DEFAULT_MAX_WORKERS} workers "
                        f"between them: new worker ids are ignored (pool {beat.pool!r})", UNNAMED_POOLS)

    def _count(self, record: _Record, delta: int) -> None:
        pool = record.beat.pool
        states = self._states.setdefault(pool, Counter())
        states[record.health.value] += delta
        if not states.total():
            del self._states[pool]
        if pool not in self._pools:
            self._unnamed += delta

    # -- the healthy sets -------------------------------------------------------------------------

    def _place(self, record: _Record, weight: float | None) -> None:
        """Set the worker's weight in its pool's healthy set; None takes it out."""
        pool, worker = record.beat.pool, record.beat.worker
        healthy = self._healthy.setdefault(pool, {})
        before = healthy.get(worker)
        if before == weight:
            return
        self._touched.setdefault(pool, {}).setdefault(worker, before)
        if weight is None:
            del healthy[worker]
        else:
            healthy[worker] = weight

    def _changes(self) -> set[str]:
        """The pools whose healthy set differs from what it was at the start of this call."""
        changed = set()
        for pool, before in self._touched.items():
            healthy = self._healthy.get(pool, {})
            if any(healthy.get(worker) != weight for worker, weight in before.items()):
                changed.add(pool)
                self._snapshots.pop(pool, None)
            if not healthy:
                self._healthy.pop(pool, None)
        self._touched = {}
        return changed

    # -- time -------------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Look at every worker the agenda says is due by ``now``, and only at those."""
        agenda, due = self._agenda, []
        while agenda and agenda[0][0] <= now:
            when, worker = heapq.heappop(agenda)
            record = self._records.get(worker)
            if record is not None and record.due == when:  # else a stale entry: forgotten, or due sooner
                record.due = None
                due.append(record)
        for record in due:  # rescheduled after the loop: one look per worker and call, whatever the rounding
            self._review(record, now)

    def _review(self, record: _Record, now: float) -> None:
        if now - record.last_seen >= self._expire:
            self._count(record, -1)
            self._place(record, None)
            del self._records[record.beat.worker]
            self._unname(record.beat)
            return
        health = self._health(record, now)
        if health is not record.health:
            if record.health in _LIVE and health not in _LIVE:
                self._departed(record, health)
            self._count(record, -1)
            record.health = health
            self._count(record, 1)
        self._place(record, self._weight(record, now) if health is Health.UP else None)
        self._schedule(record, now)

    def _schedule(self, record: _Record, now: float) -> None:
        """Put the worker in the agenda for the next moment time may change it, unless it is due sooner."""
        due = record.last_seen + self._expire
        if record.health is Health.UP:
            due = min(due, record.last_seen + self._timeout, self._next_step(record, now))
        if record.due is None or due < record.due:
            record.due = due
            heapq.heappush(self._agenda, (due, record.beat.worker))

    def _next_step(self, record: _Record, now: float) -> float:
        """When a worker's slow-start weight takes its next step (inf: it does not ramp)."""
        pool = self._pools.get(record.beat.pool)
        if pool is None or now - record.up_since >= pool.slow_start:
            return math.inf
        steps = self.SLOW_START_STEPS - 1
        taken = math.floor(steps * (now - record.up_since) / pool.slow_start)
        return record.up_since + pool.slow_start * (taken + 1) / steps

    # -- one worker -------------------------------------------------------------------------------

    def _departed(self, record: _Record, health: Health, moved: bool = False) -> None:
        weight = self._healthy.get(record.beat.pool, {}).get(record.beat.worker, record.beat.weight)
        self._departures.append(Departure(record.beat.worker, record.beat.pool, health,
                                          record.beat.inflight + record.assigned, record.beat.session, weight,
                                          drained=moved or record.health is Health.DRAINING))

    def _health(self, record: _Record, now: float) -> Health:
        if record.beat.state is WorkerState.UP and now - record.last_seen >= self._timeout:
            return Health.TIMEOUT
        return Health(record.beat.state.value)

    def _weight(self, record: _Record, now: float) -> float:
        """The weight balancers see: the pool's static one or the heartbeat's, ramped during slow start."""
        beat = record.beat
        pool = self._pools.get(beat.pool)
        if pool is None:
            return beat.weight
        override = pool.workers.get(beat.worker)
        weight = beat.weight if override is None else override.weight
        elapsed = now - record.up_since
        if elapsed >= pool.slow_start:
            return weight
        steps = self.SLOW_START_STEPS
        fraction = (1 + math.floor((steps - 1) * elapsed / pool.slow_start)) / steps
        # The fraction is at most 1, so no weight overflows; the smallest weights must not ramp to 0.
        return max(weight * fraction, _SMALLEST_WEIGHT)
