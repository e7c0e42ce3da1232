"""What every balancer shares: the interface the router calls, and option checking.

A balancer knows nothing of heartbeats, clocks or the broker. The pool decides
which workers are healthy and hands the balancer a snapshot of them with their
weights through ``update()``, only when that snapshot changes; the balancer may
do real work there. ``pick()`` runs once per message and is cheap.

A heartbeat may announce any finite weight > 0, from 5e-324 to 1.8e308, and the
algorithms that divide the load by weight add weights up, divide by them and
compare their quotients. ``relative()`` is where they all get weights that can
do that: multiplied by the one power of two that puts the largest in [0.5, 1)
(exact, so every ratio and every comparison is as with the weights given, and
no sum can overflow), with anything below ``MIN_RELATIVE_WEIGHT`` of the
largest raised to it (so none is denormal or zero).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

from ...errors import MqttlbError

MIN_RELATIVE_WEIGHT = 1e-12
"""The smallest share of the largest weight a worker is given: a weight below it counts as this much."""


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

    def prefetch(self, keys: Sequence[str]) -> None:  # noqa: B027 - a no-op unless picks are cheaper together
        """``keys`` are about to be picked for, in this order: pick them now if that is cheaper together. A hint
        only: ``pick`` gives the same answers either way."""

    def report_load(self, worker: str, inflight: int) -> None:  # noqa: B027 - a no-op unless balancing by load
        """``worker`` reported ``inflight`` unfinished messages. Ignored by default."""


def checked(workers: Mapping[str, float]) -> dict[str, float]:
    """``workers`` in sorted id order, refusing weights that are not finite and > 0."""
    for worker, weight in workers.items():
        if not (0.0 < weight < math.inf):
            raise ValueError(f"worker {worker!r}: weight must be a finite number > 0, got {weight!r}")
    return {worker: float(workers[worker]) for worker in sorted(workers)}


def relative(workers: Mapping[str, float]) -> dict[str, float]:
    """``checked(workers)`` scaled so the largest weight is in [0.5, 1) and none is below ``MIN_RELATIVE_WEIGHT`` of it.

    The scale is a power of two, so a weight's scaled value is exact (a ratio of
    two weights is unchanged) unless it is raised to the floor.
    """
    weights = checked(workers)
    if not weights:
        return weights
    largest, exponent = math.frexp(max(weights.values()))
    floor = largest * MIN_RELATIVE_WEIGHT
    return {worker: max(math.ldexp(weight, -exponent), floor) for worker, weight in weights.items()}


def reject_unknown(algorithm: str, options: Mapping[str, object], known: tuple[str, ...],
                   hints: Mapping[str, str] | None = None) -> None:
    for option in options:
        if option not in known:
            if hints and option in hints:
                raise BadOption(f"{option}: {hints[option]}")
            expected = f"expected one of {', '.join(known)}" if known else f"{algorithm} takes no options"
            raise BadOption(f"unknown option {option!r}; {expected}")


def int_option(options: Mapping[str, object], name: str, default: int, low: int, high: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadOption(f"{name}: must be an integer from {low} to {high}, got {value!r}")
    return value


def float_option(options: Mapping[str, object], name: str, low: float, high: float) -> float | None:
    """An optional number in [low, high]; None when absent or null."""
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadOption(f"{name}: must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)
