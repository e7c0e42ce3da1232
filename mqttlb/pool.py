"""The fleet of workers, as their heartbeats describe it.

Health lives here and nowhere else: balancers only ever see the snapshot of
healthy workers that ``Fleet.healthy`` returns. A worker is healthy while its
last heartbeat said ``up`` and is younger than the timeout; it is forgotten
after ``expire`` without one. The clock is passed in, so the state machine is
tested without sleeping.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Mapping

import orjson

from .config import PoolSettings
from .errors import BadHeartbeat
from .topics import key_problem

MAX_HEARTBEAT_BYTES = 16384
DEFAULT_POOL = "default"
_SMALLEST_WEIGHT = math.ulp(0.0)
"""5e-324, the smallest float > 0: any weight > 0 is valid, and the balancers cope with all of them."""


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

    @classmethod
    def parse(cls, worker: str, payload: bytes) -> Heartbeat:
        """Read a heartbeat published on ``worker``'s topic; raises BadHeartbeat."""
        problem = key_problem(worker)
        if problem is not None:
            raise BadHeartbeat(f"worker id in topic: {problem}")
        if not payload:
            return cls(worker=worker, state=WorkerState.DOWN, pool_named=False)  # a cleared retained heartbeat
        if len(payload) > MAX_HEARTBEAT_BYTES:
            raise BadHeartbeat(f"heartbeat over {MAX_HEARTBEAT_BYTES} bytes")
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            raise BadHeartbeat(f"not JSON: {error}") from None
        if not isinstance(body, dict):
            raise BadHeartbeat("not a JSON object")
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
        return cls(worker=worker, pool=pool, state=state, weight=float(weight), inflight=inflight,
                   pool_named="pool" in body)


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
    since. They wait in its session at the broker and reach it when it comes back under the same id."""


_LIVE = (Health.UP, Health.DRAINING)


@dataclass(slots=True)
class _Record:
    beat: Heartbeat
    last_seen: float
    assigned: int = 0
    """Messages routed to the worker since this heartbeat."""
    health: Health = Health.UP
    """As of the last apply or tick, to notice departures."""
    up_since: float = 0.0
    """When it last became healthy, for slow start."""


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
        self._departures: list[Departure] = []

    def reconfigure(self, timeout: float, expire: float, pools: Mapping[str, PoolSettings], now: float) -> None:
        """New settings from a reloaded config: every worker's record is kept, health is worked out again."""
        self._timeout, self._expire, self._pools = timeout, expire, pools
        self._healthy = {}
        self._refresh({record.beat.pool for record in self._records.values()}, now)

    def check_allowed(self, beat: Heartbeat) -> None:
        """Raise BadHeartbeat when the pool the heartbeat names does not allow its worker id (``allow``)."""
        pool = self._pools.get(beat.pool)
        if beat.state is WorkerState.DOWN and not beat.pool_named:
            return  # a will: it takes nobody into a pool
        if pool is not None and pool.allow and not any(fnmatch.fnmatchcase(beat.worker, p) for p in pool.allow):
            raise BadHeartbeat(f"worker {beat.worker!r} is not allowed in pool {beat.pool!r} "
                               f"(pools.{beat.pool}.allow)")

    def apply(self, beat: Heartbeat, now: float) -> set[str]:
        """Take a heartbeat in; returns the pools whose healthy set changed."""
        old = self._records.get(beat.worker)
        if old is not None and not beat.pool_named and beat.state is not WorkerState.UP:
            beat = replace(beat, pool=old.beat.pool)  # a will names no pool: the worker stays where it was
        record = _Record(beat, now)
        record.health = self._health(record, now)
        record.up_since = old.up_since if old is not None and old.health is Health.UP else now
        if old is not None and old.health in _LIVE and record.health not in _LIVE:
            # a will or a "down" says nothing of the load: what it held is what it last reported
            self._departed(old, record.health)
        self._records[beat.worker] = record
        touched = {beat.pool} | ({old.beat.pool} if old is not None else set())
        return self._refresh(touched, now)

    def tick(self, now: float) -> set[str]:
        """Apply timeouts and expiry; returns the pools whose healthy set changed."""
        expired = [w for w, r in self._records.items() if now - r.last_seen >= self._expire]
        touched = {self._records[w].beat.pool for w in expired}
        for worker in expired:
            del self._records[worker]
        for record in self._records.values():
            if record.beat.state is WorkerState.UP:
                touched.add(record.beat.pool)
                health = self._health(record, now)
                if record.health in _LIVE and health not in _LIVE:
                    self._departed(record, health)
                record.health = health
        return self._refresh(touched, now)

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
        """The healthy workers of ``pool`` with their weights: what balancers see."""
        return self._healthy.get(pool, {})

    def views(self, now: float) -> list[WorkerView]:
        return [
            WorkerView(worker=w, pool=r.beat.pool, health=self._health(r, now), weight=self._weight(r, now),
                       inflight=r.beat.inflight, last_seen=r.last_seen)
            for w, r in sorted(self._records.items())
        ]

    def _departed(self, record: _Record, health: Health) -> None:
        self._departures.append(Departure(record.beat.worker, record.beat.pool, health,
                                          record.beat.inflight + record.assigned))

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

    def _refresh(self, pools: set[str], now: float) -> set[str]:
        changed = set()
        for pool in pools:
            healthy = {
                w: self._weight(r, now) for w, r in sorted(self._records.items())
                if r.beat.pool == pool and self._health(r, now) is Health.UP
            }
            if healthy != self._healthy.get(pool, {}):
                changed.add(pool)
                if healthy:
                    self._healthy[pool] = healthy
                else:
                    self._healthy.pop(pool, None)
        return changed
