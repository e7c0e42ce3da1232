"""The algorithms for stateful topics: a device sticks to one worker.

``consistent_hash`` is weighted rendezvous hashing (highest random weight):
every worker scores the key, and the best score wins. A score depends only on
the key, the worker's id and its weight, so

- the mapping is a pure function of the worker set: every router in a share
  group, in any process, agrees, whatever order the workers joined in;
- adding a worker moves keys only to it (exactly the keys it now scores best
  on, 1/N of them on average), and removing one moves only its keys;
- there are no virtual nodes to place, so the balance is that of the key
  sample itself: over 100,000 keys the busiest of 10 workers is about 1.5%
  over the mean, the busiest of 100 about 8% (a ring with 160 points per
  worker: 12% and 25%);
- weights are exact in expectation: with the logarithmic method a worker of
  weight w wins a w / (sum of weights) share of the keys.

A pick costs one score per worker, so picks are cached per key until the
worker set or a weight changes (devices repeat); the cache is bounded.

With ``load_factor`` (consistent hashing with bounded loads) no worker takes
more than ``load_factor`` times its weighted share of the active devices (those
routed since the pool last changed): a new device walks down its list of
preferred workers to the first one under the bound, and a device keeps its
worker for as long as the pool does not change. The mapping then depends on the
order devices arrive in, so routers in a share group may disagree about a few
devices.

``ring`` is the classic ring with virtual nodes (BLAKE2b points), kept so the
two can be compared, and for users who relied on its exact mapping.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from typing import ClassVar, Mapping

from .base import BadOption, Balancer, checked, float_option, int_option, reject_unknown, relative

_MASK = (1 << 64) - 1
_TWO_64 = float(1 << 64)


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text``, the same in every process and Python version."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _mix(key_hash: int, worker_seed: int) -> int:
    """A 64-bit score for a (key, worker) pair: a SplitMix64 finalizer over their XOR."""
    z = (key_hash ^ worker_seed) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class ConsistentHash(Balancer):
    """Weighted rendezvous hashing with a per-key cache; see the module docstring."""

    name = "consistent_hash"
    needs_key = True
    DEFAULT_CACHE_SIZE: ClassVar[int] = 262_144
    _HINTS: ClassVar[dict[str, str]] = {
        "virtual_nodes": "consistent_hash is rendezvous hashing and has no virtual nodes; "
                         "the virtual-node ring is algorithm ring",
    }

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        reject_unknown(self.name, options, ("load_factor", "cache_size"), self._HINTS)
        self.load_factor = float_option(options, "load_factor", 1.0, 100.0)
        if self.load_factor is not None and self.load_factor <= 1.0:
            raise BadOption(f"load_factor: must be above 1 (1.25 lets a worker take 25% over its share), "
                            f"got {self.load_factor!r}")
        self.cache_size = int_option(options, "cache_size", self.DEFAULT_CACHE_SIZE, 1, 100_000_000)
        self._workers: dict[str, float] = {}
        self._seeds: tuple[tuple[str, int, float], ...] = ()
        self._equal_weights = True
        self._total_weight = 0.0
        self._cache: dict[str, str] = {}
        self._load: dict[str, int] = {}

    def update(self, workers: Mapping[str, float]) -> None:
        weights = relative(workers)
        if weights == self._workers:
            return  # the same pool: every cached pick still holds
        self._workers = weights
        self._seeds = tuple((worker, stable_hash(worker), weight) for worker, weight in weights.items())
        self._equal_weights = len(set(weights.values())) <= 1
        self._total_weight = sum(weights.values())
        self._forget()

    def pick(self, key: str | None) -> str | None:
        if key is None:
            raise ValueError("consistent_hash needs a key")
        worker = self._cache.get(key)
        if worker is not None:
            return worker
        if not self._seeds:
            return None
        if len(self._cache) >= self.cache_size:
            self._forget()
        worker = self._rendezvous(key) if self.load_factor is None else self._bounded(key)
        self._cache[key] = worker
        return worker

    def preference(self, key: str) -> list[str]:
        """Every worker, best-scoring first: where ``key`` goes, and where it would go if they left."""
        key_hash = stable_hash(key)
        return [worker for _, worker in sorted(((-self._score(key_hash, seed, weight), worker)
                                                for worker, seed, weight in self._seeds))]

    def _forget(self) -> None:
        self._cache = {}
        self._load = dict.fromkeys(self._workers, 0)

    def _rendezvous(self, key: str) -> str:
        key_hash = stable_hash(key)
        best_worker = ""
        if self._equal_weights:  # the raw scores compare the same as the weighted ones, without a log
            best_raw = -1
            for worker, seed, _ in self._seeds:
                raw = _mix(key_hash, seed)
                if raw > best_raw:
                    best_worker, best_raw = worker, raw
            return best_worker
        best_score = -1.0
        for worker, seed, weight in self._seeds:
            score = self._score(key_hash, seed, weight)
            if score > best_score:
                best_worker, best_score = worker, score
        return best_worker

    @staticmethod
    def _score(key_hash: int, seed: int, weight: float) -> float:
        """``weight / -ln(u)`` for the pair's uniform ``u`` in (0, 1): the highest wins with odds ∝ weight."""
        u = (_mix(key_hash, seed) + 0.5) / _TWO_64
        return weight / -math.log(u)

    def _bounded(self, key: str) -> str:
        assert self.load_factor is not None
        active = len(self._cache) + 1  # the cache holds exactly the devices placed since the pool changed
        load = self._load
        for worker in self.preference(key):
            if load[worker] < math.ceil(self.load_factor * active * self._workers[worker] / self._total_weight):
                load[worker] += 1
                return worker
        raise AssertionError("the bounds add up to more than the active devices; some worker is under its own")


class Ring(Balancer):
    """A hash ring with virtual nodes: a key goes to the owner of the first point at or after its hash.

    Each worker owns ``virtual_nodes * weight`` points (at least one, at most
    ``virtual_nodes * MAX_WEIGHT``) on a ring of 64-bit BLAKE2b hashes. A
    worker's points depend on its own id and weight alone, so adding a worker
    moves keys only to it and removing one moves only its keys. Balance is
    limited by where the points fall (see the module docstring).
    """

    name = "ring"
    needs_key = True
    DEFAULT_VIRTUAL_NODES: ClassVar[int] = 160
    MAX_VIRTUAL_NODES: ClassVar[int] = 10_000
    MAX_WEIGHT: ClassVar[float] = 100.0

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        reject_unknown(self.name, options, ("virtual_nodes",))
        self.virtual_nodes = int_option(options, "virtual_nodes", self.DEFAULT_VIRTUAL_NODES, 1,
                                        self.MAX_VIRTUAL_NODES)
        self._hashes: tuple[int, ...] = ()
        self._owners: tuple[str, ...] = ()

    def update(self, workers: Mapping[str, float]) -> None:
        weights = checked(workers)
        points = sorted(
            (stable_hash(f"{worker}\0{i}"), worker)
            for worker, weight in weights.items()
            for i in range(max(1, round(self.virtual_nodes * min(weight, self.MAX_WEIGHT))))
        )
        self._hashes = tuple(h for h, _ in points)
        self._owners = tuple(worker for _, worker in points)

    def pick(self, key: str | None) -> str | None:
        if key is None:
            raise ValueError("ring needs a key")
        if not self._hashes:
            return None
        i = bisect.bisect_left(self._hashes, stable_hash(key))
        return self._owners[i if i < len(self._owners) else 0]
