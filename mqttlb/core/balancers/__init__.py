"""Load-balancing algorithms: which worker gets the next message.

Algorithms are found by name, as the configuration names them::

    b = create("consistent_hash")
    b.update({"w1": 1.0, "w2": 2.0})
    b.pick("device-42")

and a new one can be added with ``register()``. ``base`` holds the interface,
``stateless`` the algorithms for topics any worker may take, ``hashing`` those
that keep a device on one worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ...errors import MqttlbError
from .base import BadOption, Balancer
from .hashing import ConsistentHash
from .ring import Ring
from .stateless import LeastConnections, RoundRobin, WeightedRandom, WeightedRoundRobin

__all__ = [
    "BadOption",
    "Balancer",
    "ConsistentHash",
    "LeastConnections",
    "Ring",
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


_registry: dict[str, Callable[..., Balancer]] = {
    cls.name: cls for cls in (ConsistentHash, LeastConnections, Ring, RoundRobin, WeightedRandom, WeightedRoundRobin)
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
