"""Load-balancing algorithms: which worker gets the next message.

A balancer knows nothing of heartbeats, clocks or the broker. The pool decides
which workers are healthy and hands the balancer a snapshot of them with their
weights through ``update()``, only when that set changes; the balancer may do
real work there (build a hash ring). ``pick()`` runs once per message and is
cheap. Randomness comes from an injected ``random.Random``, so every algorithm
is deterministic under test.

Algorithms are found by name, as the configuration names them::

    b = create("consistent_hash", virtual_nodes=500)
    b.update({"w1": 1.0, "w2": 2.0})
    b.pick("device-42")

and a new one can be added with ``register()``.
"""

from __future__ import annotations

import abc
import bisect
import hashlib
import math
import random
from typing import Callable, ClassVar, Mapping

from mqttlb.errors import MqttlbError

__all__ = [
    "BadOption",
    "Balancer",
    "ConsistentHash",
    "LeastConnections",
    "RoundRobin",
    "UnknownAlgorithm",
    "WeightedRandom",
    "WeightedRoundRobin",
    "create",
    "names",
    "needs_key",
    "register",
]


class UnknownAlgorithm(MqttlbError, ValueError):
    """No algorithm is registered under this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown algorithm {name!r}; expected one of {', '.join(names())}")


class BadOption(MqttlbError, ValueError):
    """An algorithm option that is unknown, of the wrong type or out of range."""


class Balancer(abc.ABC):
    """Picks a worker among the healthy ones the pool last reported."""

    name: ClassVar[str]
    needs_key: ClassVar[bool] = False

    @abc.abstractmethod
    def update(self, workers: Mapping[str, float]) -> None:
        """Replace the healthy workers with ``workers``: id -> weight (> 0)."""

    @abc.abstractmethod
    def pick(self, key: str | None) -> str | None:
        """The worker for a message with routing ``key``; None when there is none."""

    def report_load(self, worker: str, inflight: int) -> None:
        """``worker`` reported ``inflight`` unfinished messages. Ignored by default."""


class RoundRobin(Balancer):
    """Each worker in turn, in sorted id order; weights are ignored.

    After an update the turn passes to the first worker, in id order, after
    the one picked last, so a change of membership does not restart the cycle.
    """

    name = "round_robin"

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        _reject_unknown(self.name, options, ())
        self._workers: tuple[str, ...] = ()
        self._next = 0
        self._last: str | None = None

    def update(self, workers: Mapping[str, float]) -> None:
        self._workers = tuple(_checked(workers))
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
        _reject_unknown(self.name, options, ())
        self._workers: tuple[str, ...] = ()
        self._weights: tuple[float, ...] = ()
        self._credit: list[float] = []
        self._total = 0.0

    def update(self, workers: Mapping[str, float]) -> None:
        weights = _checked(workers)
        old = dict(zip(self._workers, self._credit))
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
    messages picked for it since. Ties go to the worker picked least recently
    (then the lowest id), so equally idle workers take turns. Reports for
    workers outside the last ``update()`` are ignored. A pick scans all
    workers: fine for pools of up to a few hundred.
    """

    name = "least_connections"

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        _reject_unknown(self.name, options, ())
        self._load: dict[str, int] = {}
        self._picked_at: dict[str, int] = {}
        self._picks = 0

    def update(self, workers: Mapping[str, float]) -> None:
        ids = _checked(workers)
        self._load = {worker: self._load.get(worker, 0) for worker in ids}
        self._picked_at = {worker: self._picked_at.get(worker, -1) for worker in ids}

    def pick(self, key: str | None) -> str | None:
        if not self._load:
            return None
        load, picked_at = self._load, self._picked_at
        worker = min(load, key=lambda w: (load[w], picked_at[w]))
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
        _reject_unknown(self.name, options, ())
        self._rng = rng if rng is not None else random.Random()
        self._workers: tuple[str, ...] = ()
        self._cumulative: tuple[float, ...] = ()

    def update(self, workers: Mapping[str, float]) -> None:
        weights = _checked(workers)
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


class ConsistentHash(Balancer):
    """A hash ring with virtual nodes: a key sticks to its worker.

    Each worker owns ``virtual_nodes * weight`` points (at least one, at most
    ``virtual_nodes * MAX_WEIGHT``) on a ring of 64-bit BLAKE2b hashes, stable
    across processes and runs; a key goes to the owner of the first point at
    or after its own hash. A worker's points depend on its own id and weight
    alone, never on the other workers or the order they are given in, so
    adding a worker moves keys only to it and removing one moves only its
    keys, whatever the weights. Weights are relative to 1, the heartbeat's
    default.
    """

    name = "consistent_hash"
    needs_key = True
    DEFAULT_VIRTUAL_NODES: ClassVar[int] = 160
    MAX_VIRTUAL_NODES: ClassVar[int] = 10_000
    MAX_WEIGHT: ClassVar[float] = 100.0

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        _reject_unknown(self.name, options, ("virtual_nodes",))
        self.virtual_nodes = _int_option(
            options, "virtual_nodes", self.DEFAULT_VIRTUAL_NODES, 1, self.MAX_VIRTUAL_NODES
        )
        self._hashes: tuple[int, ...] = ()
        self._owners: tuple[str, ...] = ()

    def update(self, workers: Mapping[str, float]) -> None:
        weights = _checked(workers)
        if not weights:
            self._hashes, self._owners = (), ()
            return
        points = sorted(
            (_hash(f"{worker}\0{i}"), worker)
            for worker, weight in weights.items()
            for i in range(max(1, round(self.virtual_nodes * min(weight, self.MAX_WEIGHT))))
        )
        self._hashes = tuple(h for h, _ in points)
        self._owners = tuple(worker for _, worker in points)

    def pick(self, key: str | None) -> str | None:
        if key is None:
            raise ValueError("consistent_hash needs a key")
        if not self._hashes:
            return None
        i = bisect.bisect_left(self._hashes, _hash(key))
        return self._owners[i if i < len(self._owners) else 0]


def _hash(text: str) -> int:
    """A 64-bit hash of ``text``, the same in every process and Python version."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _checked(workers: Mapping[str, float]) -> dict[str, float]:
    """``workers`` in sorted id order, refusing weights that are not finite and > 0."""
    for worker, weight in workers.items():
        if not (0.0 < weight < math.inf):
            raise ValueError(f"worker {worker!r}: weight must be a finite number > 0, got {weight!r}")
    return {worker: float(workers[worker]) for worker in sorted(workers)}


def _reject_unknown(algorithm: str, options: Mapping[str, object], known: tuple[str, ...]) -> None:
    for option in options:
        if option not in known:
            expected = f"expected one of {', '.join(known)}" if known else f"{algorithm} takes no options"
            raise BadOption(f"unknown option {option!r}; {expected}")


def _int_option(options: Mapping[str, object], name: str, default: int, low: int, high: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadOption(f"{name}: must be an integer from {low} to {high}, got {value!r}")
    return value


_registry: dict[str, Callable[..., Balancer]] = {
    cls.name: cls for cls in (ConsistentHash, LeastConnections, RoundRobin, WeightedRandom, WeightedRoundRobin)
}


def register(name: str, factory: Callable[..., Balancer]) -> None:
    """Make ``factory`` available as algorithm ``name``.

    ``create()`` calls ``factory(rng=..., **options)``; ``needs_key()`` calls it
    with ``rng`` alone, so every option needs a default.
    """
    if name in _registry:
        raise ValueError(f"algorithm {name!r} is already registered")
    _registry[name] = factory


def names() -> tuple[str, ...]:
    """The registered algorithm names, sorted."""
    return tuple(sorted(_registry))


def create(name: str, *, rng: random.Random | None = None, **options: object) -> Balancer:
    """A new balancer running algorithm ``name`` with ``options`` as in the YAML."""
    return _factory(name)(rng=rng if rng is not None else random.Random(), **options)


def needs_key(name: str) -> bool:
    """Whether algorithm ``name`` routes by key (a route without one may not use it)."""
    return _factory(name)(rng=random.Random(0)).needs_key


def _factory(name: str) -> Callable[..., Balancer]:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownAlgorithm(name) from None
