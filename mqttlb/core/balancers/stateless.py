"""The algorithms for stateless topics: any worker will do, so spread the load.

Round robin, smooth weighted round robin, least connections and weighted
random. Randomness comes from an injected ``random.Random``, so each is
deterministic under test.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from typing import ClassVar

from .base import Balancer, checked, reject_unknown, relative


class RoundRobin(Balancer):
    """Each worker in turn, in sorted id order; weights are ignored.

    After an update the turn passes to the first worker, in id order, after
    the one picked last, so a change of membership does not restart the cycle.
    """

    name = "round_robin"

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        reject_unknown(self.name, options, ())
        self._workers: tuple[str, ...] = ()
        self._next = 0
        self._last: str | None = None

    def update(self, workers: Mapping[str, float]) -> None:
        self._workers = tuple(checked(workers))
        if self._workers and self._last is not None:
            self._next = bisect.bisect_right(self._workers, self._last) % len(self._workers)
        else:
            self._next = 0

    def pick(self, key: str | None) -> str | None:
        if not self._workers:
            return None
        worker = self._workers[self._next]
        self._next = (self._next + 1) % len(self._workers)
        self._last = worker
        return worker


class WeightedRoundRobin(Balancer):
    """Smooth weighted round robin, as nginx: weights 5, 1, 1 give a a b a c a a.

    Every pick adds each worker's weight to its running credit, picks the
    worker with the most credit (the lowest id on a tie) and takes the total
    weight from it. Over a cycle of ``sum(weights)`` picks each integer-weighted
    worker is picked exactly ``weight`` times, spread out rather than in a
    burst. Weights may be fractional. An update keeps the credit of the workers
    that stay, so the rotation goes on instead of restarting.
    """

    name = "weighted_round_robin"

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        reject_unknown(self.name, options, ())
        self._workers: tuple[str, ...] = ()
        self._weights: tuple[float, ...] = ()
        self._credit: list[float] = []
        self._total = 0.0

    def update(self, workers: Mapping[str, float]) -> None:
        weights = relative(workers)
        old = dict(zip(self._workers, self._credit, strict=True))
        credit = [old.get(worker, 0.0) for worker in weights]
        # Keep the credits summing to zero, as they do between updates.
        mean = sum(credit) / len(credit) if credit else 0.0
        self._workers = tuple(weights)
        self._weights = tuple(weights.values())
        self._credit = [c - mean for c in credit]
        self._total = sum(self._weights)

    def pick(self, key: str | None) -> str | None:
        if not self._workers:
            return None
        credit = self._credit
        best = 0
        for i, weight in enumerate(self._weights):
            credit[i] += weight
            if credit[i] > credit[best]:
                best = i
        credit[best] -= self._total
        return self._workers[best]


class LeastConnections(Balancer):
    """The worker with the fewest messages in hand; weights are ignored.

    A worker's count is the ``inflight`` its last heartbeat reported plus the
    messages picked for it since, so when heartbeats go stale the count still
    follows what this router sent. Up to ``FULL_SCAN`` workers, every one is
    compared, and ties go to the worker picked least recently (then the lowest
    id), so equally idle workers take turns. In larger pools two distinct
    workers are drawn at random and the less loaded one wins (the power of two
    choices, Envoy's default): nearly as even, constant time, and routers that
    share a pool do not all rush to the same idle worker. Reports for workers
    outside the last ``update()`` are ignored.
    """

    name = "least_connections"
    FULL_SCAN: ClassVar[int] = 4

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        reject_unknown(self.name, options, ())
        self._rng = rng if rng is not None else random.Random()
        self._workers: tuple[str, ...] = ()
        self._load: dict[str, int] = {}
        self._picked_at: dict[str, int] = {}
        self._picks = 0

    def update(self, workers: Mapping[str, float]) -> None:
        self._workers = tuple(checked(workers))
        self._load = {worker: self._load.get(worker, 0) for worker in self._workers}
        self._picked_at = {worker: self._picked_at.get(worker, -1) for worker in self._workers}

    def pick(self, key: str | None) -> str | None:
        if not self._workers:
            return None
        load, picked_at = self._load, self._picked_at
        candidates = self._workers if len(self._workers) <= self.FULL_SCAN else self._rng.sample(self._workers, 2)
        worker = min(candidates, key=lambda w: (load[w], picked_at[w], w))
        load[worker] += 1
        picked_at[worker] = self._picks
        self._picks += 1
        return worker

    def report_load(self, worker: str, inflight: int) -> None:
        if worker in self._load:
            self._load[worker] = inflight


class WeightedRandom(Balancer):
    """A random worker, each with a chance proportional to its weight."""

    name = "random"

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        reject_unknown(self.name, options, ())
        self._rng = rng if rng is not None else random.Random()
        self._workers: tuple[str, ...] = ()
        self._cumulative: tuple[float, ...] = ()

    def update(self, workers: Mapping[str, float]) -> None:
        weights = relative(workers)
        self._workers = tuple(weights)
        cumulative: list[float] = []
        total = 0.0
        for weight in weights.values():
            total += weight
            cumulative.append(total)
        self._cumulative = tuple(cumulative)

    def pick(self, key: str | None) -> str | None:
        if not self._workers:
            return None
        return self._rng.choices(self._workers, cum_weights=self._cumulative)[0]
