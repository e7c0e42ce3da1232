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

A pick scores every worker, so picks are cached per key; the scoring, the
cache and how it stays true when the pool changes (without being emptied) are
in ``rendezvous``.

With ``load_factor`` (consistent hashing with bounded loads) no worker takes
more than ``load_factor`` times its weighted share of the active devices (those
routed since the pool last changed): a new device walks down its list of
preferred workers to the first one under the bound, and a device keeps its
worker for as long as the pool does not change. The mapping then depends on the
order devices arrive in, so routers in a share group may disagree about a few
devices.

``ring`` (in ``ring``) is the classic ring with virtual nodes, kept so the two
can be compared, and for users who relied on its exact mapping.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import ClassVar

from .base import BadOption, Balancer, float_option, int_option, reject_unknown, relative
from .rendezvous import Pool, Rendezvous, preference, stable_hash

__all__ = ["ConsistentHash", "stable_hash"]


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
        self._rendezvous = Rendezvous(self.cache_size)
        self._cache = self._rendezvous.cache if self.load_factor is None else {}
        """Device -> worker; with ``load_factor``, exactly the devices placed since the pool last changed."""
        self._load: dict[str, int] = {}

    def update(self, workers: Mapping[str, float]) -> None:
        if self.load_factor is None:
            self._rendezvous.update(workers)
            return
        weights = relative(workers)  # bounded loads multiply weights by counts: no overflow at 1e308
        if weights == self._rendezvous.pool.weights:
            return  # the same pool: every placement still holds
        self._rendezvous.update(weights)  # picks nothing, so it is only the pool: bounded loads keep their own cache
        self._cache = {}
        self._load = dict.fromkeys(weights, 0)

    def prefetch(self, keys: Sequence[str]) -> None:
        if self.load_factor is None:  # bounded loads place devices in arrival order, one at a time
            self._rendezvous.prefetch(keys)

    def pick(self, key: str | None) -> str | None:
        worker = self._cache.get(key)  # type: ignore[arg-type]  # None is never cached
        if worker is not None:
            return worker  # the common case, so first and without a call
        if key is None:
            raise ValueError("consistent_hash needs a key")
        if self.load_factor is None:
            return self._rendezvous.pick(key)
        if not self._load:
            return None
        if len(self._cache) >= self.cache_size:
            self._cache = {}
            self._load = dict.fromkeys(self._load, 0)
        worker = self._bounded(key, self._rendezvous.pool)
        self._cache[key] = worker
        return worker

    def preference(self, key: str) -> list[str]:
        """Every worker, best-scoring first: where ``key`` goes, and where it would go if they left."""
        return list(preference(self._rendezvous.pool, key))

    def _bounded(self, key: str, pool: Pool) -> str:
        assert self.load_factor is not None
        active = len(self._cache) + 1  # the cache holds exactly the devices placed since the pool changed
        total = sum(pool.weights.values())
        load = self._load
        for worker in preference(pool, key):
            if load[worker] < math.ceil(self.load_factor * active * pool.weights[worker] / total):
                load[worker] += 1
                return worker
        raise AssertionError("the bounds add up to more than the active devices; some worker is under its own")

