"""``mqttlb bench balance``: the hashing algorithms side by side, on the same keys, in one run.

For each of ``consistent_hash``, ``ring`` and, when it is installed, uhashring
(the usual Python library, a ketama ring): how many keys move when an 11th
worker joins or one leaves (against the ideal, and whether any move between
workers that stayed), and how closely shares follow weights 1, 2, 3 and 4.
Then, for each pool size (10 to 10,000 workers by default), how even the load
is (beside a fair die thrown for each key, the best any hash can hope for), and
picks per second: the first time a key is seen (cold), one key at a time and
a read's worth at a time (``READ`` keys handed to ``prefetch`` first, as the
router does), after (warm), and right after one worker joins, one leaves, or
one's weight doubles (as slow start changes weights), the update included.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson

from ..core import balancers

KEYS = [f"device-{i}" for i in range(200_000)]
WEIGHTS = {"w1": 1.0, "w2": 2.0, "w3": 3.0, "w4": 4.0}
READ = 64
"""Keys picked together: the device messages the router routes at once from one read."""


class Subject(Protocol):
    """What is measured: a balancer, or an adapter that makes one of another library."""

    def update(self, workers: Mapping[str, float]) -> None: ...

    def pick(self, key: str) -> str | None: ...

    def prefetch(self, keys: list[str]) -> None: ...


Factory = Callable[[], Subject]


@dataclass(frozen=True, slots=True)
class Scale:
    workers: int
    peak_to_mean: float
    cold_picks_per_second: float
    cold_read_picks_per_second: float
    """Cold, ``READ`` keys at a time, each read's handed to ``prefetch`` first."""
    warm_picks_per_second: float
    after_join_picks_per_second: float
    """Every key again right after a worker joined, the update included."""
    after_leave_picks_per_second: float
    after_weight_picks_per_second: float
    """Every key again right after one worker's weight doubled, the update included."""


@dataclass(frozen=True, slots=True)
class Figures:
    algorithm: str
    moved_on_add: float
    """Keys moved when an 11th worker joins, as a multiple of the ideal 1/11."""
    add_moves_only_to_newcomer: bool
    moved_on_remove: float
    """Keys moved when one of 11 leaves, as a multiple of the keys it had."""
    remove_moves_only_its_keys: bool
    weight_error_points: float
    """The largest gap between a share and its weight's share (weights 1, 2, 3, 4), in percentage points."""
    scales: tuple[Scale, ...]


def ours(name: str) -> Factory:
    return lambda: balancers.create(name)


class UHashRing:
    """uhashring's ``HashRing`` behind ``update``/``pick``: nodes added and removed one by one, as it is used."""

    def __init__(self, hash_ring: Callable[..., Any]) -> None:
        self._hash_ring = hash_ring
        self._ring: Any = None
        self._workers: dict[str, float] = {}

    def update(self, workers: Mapping[str, float]) -> None:
        if self._ring is None:  # one by one would take minutes for the first thousands
            self._ring = self._hash_ring(nodes={w: {"weight": self._weight(x)} for w, x in workers.items()})
        else:
            for worker, weight in self._workers.items():
                if workers.get(worker) != weight:
                    self._ring.remove_node(worker)
            for worker, weight in workers.items():
                if self._workers.get(worker) != weight:
                    self._ring.add_node(worker, {"weight": self._weight(weight)})
        self._workers = dict(workers)

    def pick(self, key: str) -> str | None:
        return self._ring.get_node(key)  # type: ignore[no-any-return]

    def prefetch(self, keys: list[str]) -> None:
        """uhashring picks one key at a time."""

    @staticmethod
    def _weight(weight: float) -> int:
        return max(1, round(weight))  # whole numbers only


def uhashring() -> Factory | None:
    try:
        from uhashring import HashRing  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    return lambda: UHashRing(HashRing)


def pool(size: int) -> dict[str, float]:
    return {f"worker-{i}": 1.0 for i in range(size)}


def built(build: Factory, workers: Mapping[str, float]) -> Subject:
    subject = build()
    subject.update(workers)
    return subject


def assign(subject: Subject, keys: list[str]) -> dict[str, str | None]:
    return {key: subject.pick(key) for key in keys}


def peak_to_mean(assignment: Mapping[str, str | None], workers: int) -> float:
    return max(Counter(assignment.values()).values()) / (len(assignment) / workers)


def fair_die(keys: list[str], workers: int) -> float:
    """peak/mean when each key goes to a worker drawn at random: the noise of the key sample alone."""
    draw = random.Random(workers).randrange
    return peak_to_mean({key: str(draw(workers)) for key in keys}, workers)


def picks_per_second(subject: Subject, keys: list[str], change: Mapping[str, float] | None = None) -> float:
    """Every key picked once, after ``change`` is handed to ``update()`` (timed with the picks)."""
    pick = subject.pick
    start = time.perf_counter()
    if change is not None:
        subject.update(change)
    for key in keys:
        pick(key)
    return len(keys) / (time.perf_counter() - start)


def read_picks_per_second(subject: Subject, keys: list[str]) -> float:
    """Every key picked once, ``READ`` at a time, each read handed to ``prefetch`` first."""
    pick, prefetch = subject.pick, subject.prefetch
    start = time.perf_counter()
    for first in range(0, len(keys), READ):
        read = keys[first:first + READ]
        prefetch(read)
        for key in read:
            pick(key)
    return len(keys) / (time.perf_counter() - start)


def measure_scale(build: Factory, workers: int, keys: list[str]) -> Scale:
    before = pool(workers)
    subject = built(build, before)
    start = time.perf_counter()
    assignment = assign(subject, keys)
    cold = len(keys) / (time.perf_counter() - start)
    joined = {**before, f"worker-{workers}": 1.0}
    left = {w: weight for w, weight in joined.items() if w != "worker-3"}
    return Scale(
        workers=workers,
        peak_to_mean=peak_to_mean(assignment, workers),
        cold_picks_per_second=cold,
        cold_read_picks_per_second=read_picks_per_second(built(build, before), keys),
        warm_picks_per_second=picks_per_second(subject, keys),
        after_join_picks_per_second=picks_per_second(subject, keys, joined),
        after_leave_picks_per_second=picks_per_second(subject, keys, left),
        after_weight_picks_per_second=picks_per_second(subject, keys, {**left, "worker-5": 2.0}),
    )


def measure(name: str, build: Factory, keys: list[str], sizes: list[int]) -> Figures:
    before = assign(built(build, pool(10)), keys)
    eleven = assign(built(build, pool(11)), keys)
    added = [key for key in keys if eleven[key] != before[key]]
    leaver = "worker-3"
    after_leaving = assign(built(build, {w: 1.0 for w in pool(11) if w != leaver}), keys)
    removed = [key for key in keys if after_leaving[key] != eleven[key]]
    had = sum(1 for worker in eleven.values() if worker == leaver)
    shares = Counter(assign(built(build, WEIGHTS), keys).values())
    total_weight = sum(WEIGHTS.values())
    return Figures(
        algorithm=name,
        moved_on_add=len(added) / (len(keys) / 11),
        add_moves_only_to_newcomer=all(eleven[key] == "worker-10" for key in added),
        moved_on_remove=len(removed) / had if had else 0.0,
        remove_moves_only_its_keys=all(eleven[key] == leaver for key in removed),
        weight_error_points=100 * max(abs(shares[w] / len(keys) - weight / total_weight)
                                      for w, weight in WEIGHTS.items()),
        scales=tuple(measure_scale(build, size, keys) for size in sizes),
    )


def contenders() -> list[tuple[str, Factory]]:
    found: list[tuple[str, Factory]] = [("consistent_hash", ours("consistent_hash")), ("ring", ours("ring"))]
    ketama = uhashring()
    if ketama is not None:
        found.append(("uhashring", ketama))
    return found


ROWS: list[tuple[str, Callable[[Figures], str]]] = [
    ("keys moved, 11th joins (x ideal)", lambda f: f"{f.moved_on_add:.2f}"),
    ("  all to the newcomer", lambda f: "yes" if f.add_moves_only_to_newcomer else "no"),
    ("keys moved, 1 of 11 leaves (x its keys)", lambda f: f"{f.moved_on_remove:.2f}"),
    ("  only the leaver's keys", lambda f: "yes" if f.remove_moves_only_its_keys else "no"),
    ("weights 1:2:3:4, worst share (points off)", lambda f: f"{f.weight_error_points:.2f}"),
]
SCALE_ROWS: list[tuple[str, Callable[[Scale], str]]] = [
    ("picks/s, cold", lambda s: f"{s.cold_picks_per_second:,.0f}"),
    (f"picks/s, cold, {READ} at a time", lambda s: f"{s.cold_read_picks_per_second:,.0f}"),
    ("picks/s, warm", lambda s: f"{s.warm_picks_per_second:,.0f}"),
    ("picks/s, after a join", lambda s: f"{s.after_join_picks_per_second:,.0f}"),
    ("picks/s, after a leave", lambda s: f"{s.after_leave_picks_per_second:,.0f}"),
    ("picks/s, after a weight doubles", lambda s: f"{s.after_weight_picks_per_second:,.0f}"),
]


def table(figures: list[Figures], keys: list[str]) -> str:
    width = max(len(label) for label, _ in ROWS) + 4

    def row(label: str, cells: list[str]) -> str:
        return f"{label:{width}}" + "".join(f"{cell:>17}" for cell in cells)

    lines = [f"{len(keys):,} device ids; cold: the first pick of each key, warm: the same keys again; "
             "after a change: the update, then every key again", "",
             row("", [f.algorithm for f in figures])]
    lines += [row(label, [show(f) for f in figures]) for label, show in ROWS]
    for i, scale in enumerate(figures[0].scales):
        lines += ["", f"{scale.workers:,} workers",
                  row(f"  peak/mean (a fair die: {fair_die(keys, scale.workers):.3f})",
                      [f"{f.scales[i].peak_to_mean:.3f}" for f in figures])]
        lines += [row(f"  {label}", [show(f.scales[i]) for f in figures]) for label, show in SCALE_ROWS]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    keys = KEYS[:args.keys]
    sizes = [int(size) for size in args.workers.split(",")]
    figures = [measure(name, build, keys, sizes) for name, build in contenders()]
    if args.json:
        print(orjson.dumps([asdict(f) for f in figures], option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(figures, keys))
        if not any(f.algorithm == "uhashring" for f in figures):
            print("\nuhashring is not installed; pip install 'mqttlb[bench]' to compare with it")
    return 0
