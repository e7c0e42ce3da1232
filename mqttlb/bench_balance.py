"""``mqttlb bench balance``: the hashing algorithms side by side, on the same keys, in one run.

For each of ``consistent_hash``, ``ring`` and, when it is installed, uhashring
(the usual Python library, a ketama ring): how even the load is over 100,000
device ids with 10 and with 100 workers, how many keys move when an 11th
worker joins or one leaves (against the ideal, and whether any move between
workers that stayed), how closely shares follow weights 1, 2, 3 and 4, and
picks per second, the first time a key is seen (cold) and after (warm).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Protocol

import orjson

from . import balancers

KEYS = [f"device-{i}" for i in range(100_000)]
WEIGHTS = {"w1": 1.0, "w2": 2.0, "w3": 3.0, "w4": 4.0}


class Picker(Protocol):
    def __call__(self, key: str) -> str | None: ...


Factory = Callable[[Mapping[str, float]], Picker]
"""Builds a picker for a set of workers and their weights."""


@dataclass(frozen=True, slots=True)
class Figures:
    algorithm: str
    peak_to_mean_10: float
    peak_to_mean_100: float
    moved_on_add: float
    """Keys moved when an 11th worker joins, as a multiple of the ideal 1/11."""
    add_moves_only_to_newcomer: bool
    moved_on_remove: float
    """Keys moved when one of 11 leaves, as a multiple of the keys it had."""
    remove_moves_only_its_keys: bool
    weight_error_points: float
    """The largest gap between a share and its weight's share (weights 1, 2, 3, 4), in percentage points."""
    cold_picks_per_second_10: float
    cold_picks_per_second_100: float
    warm_picks_per_second_100: float


def ours(name: str) -> Factory:
    def build(workers: Mapping[str, float]) -> Picker:
        balancer = balancers.create(name)
        balancer.update(workers)
        return balancer.pick
    return build


def uhashring() -> Factory | None:
    try:
        from uhashring import HashRing  # type: ignore[import-not-found]
    except ImportError:
        return None

    def build(workers: Mapping[str, float]) -> Picker:
        ring = HashRing(nodes={worker: {"weight": round(weight)} for worker, weight in workers.items()})  # whole numbers only
        return ring.get_node  # type: ignore[no-any-return]
    return build


def pool(size: int) -> dict[str, float]:
    return {f"worker-{i}": 1.0 for i in range(size)}


def assign(picker: Picker, keys: list[str]) -> dict[str, str | None]:
    return {key: picker(key) for key in keys}


def peak_to_mean(assignment: Mapping[str, str | None], workers: int) -> float:
    return max(Counter(assignment.values()).values()) / (len(assignment) / workers)


def picks_per_second(picker: Picker, keys: list[str]) -> float:
    start = time.perf_counter()
    for key in keys:
        picker(key)
    return len(keys) / (time.perf_counter() - start)


def measure(name: str, build: Factory, keys: list[str]) -> Figures:
    ten, hundred = build(pool(10)), build(pool(100))
    cold_10 = picks_per_second(ten, keys)
    cold_100 = picks_per_second(hundred, keys)
    warm_100 = picks_per_second(hundred, keys)
    before = assign(ten, keys)
    eleven = assign(build({**pool(10), "worker-10": 1.0}), keys)
    added = [key for key in keys if eleven[key] != before[key]]
    leaver = "worker-3"
    after_leaving = assign(build({w: 1.0 for w in pool(11) if w != leaver}), keys)
    removed = [key for key in keys if after_leaving[key] != eleven[key]]
    had = sum(1 for worker in eleven.values() if worker == leaver)
    shares = Counter(assign(build(WEIGHTS), keys).values())
    total_weight = sum(WEIGHTS.values())
    return Figures(
        algorithm=name,
        peak_to_mean_10=peak_to_mean(before, 10),
        peak_to_mean_100=peak_to_mean(assign(hundred, keys), 100),
        moved_on_add=len(added) / (len(keys) / 11),
        add_moves_only_to_newcomer=all(eleven[key] == "worker-10" for key in added),
        moved_on_remove=len(removed) / had if had else 0.0,
        remove_moves_only_its_keys=all(eleven[key] == leaver for key in removed),
        weight_error_points=100 * max(abs(shares[w] / len(keys) - weight / total_weight)
                                      for w, weight in WEIGHTS.items()),
        cold_picks_per_second_10=cold_10,
        cold_picks_per_second_100=cold_100,
        warm_picks_per_second_100=warm_100,
    )


def contenders() -> list[tuple[str, Factory]]:
    found: list[tuple[str, Factory]] = [("consistent_hash", ours("consistent_hash")), ("ring", ours("ring"))]
    ketama = uhashring()
    if ketama is not None:
        found.append(("uhashring", ketama))
    return found


ROWS: list[tuple[str, str, Callable[[Figures], str]]] = [
    ("peak/mean, 10 workers", "", lambda f: f"{f.peak_to_mean_10:.3f}"),
    ("peak/mean, 100 workers", "", lambda f: f"{f.peak_to_mean_100:.3f}"),
    ("keys moved, 11th joins", "x ideal", lambda f: f"{f.moved_on_add:.2f}"),
    ("  all to the newcomer", "", lambda f: "yes" if f.add_moves_only_to_newcomer else "no"),
    ("keys moved, 1 of 11 leaves", "x its keys", lambda f: f"{f.moved_on_remove:.2f}"),
    ("  only the leaver's keys", "", lambda f: "yes" if f.remove_moves_only_its_keys else "no"),
    ("weights 1:2:3:4, worst share", "points off", lambda f: f"{f.weight_error_points:.2f}"),
    ("picks/s, cold, 10 workers", "", lambda f: f"{f.cold_picks_per_second_10:,.0f}"),
    ("picks/s, cold, 100 workers", "", lambda f: f"{f.cold_picks_per_second_100:,.0f}"),
    ("picks/s, warm, 100 workers", "", lambda f: f"{f.warm_picks_per_second_100:,.0f}"),
]


def table(figures: list[Figures], keys: int) -> str:
    width = max(len(label) for label, _, _ in ROWS) + 12
    lines = [f"{keys:,} device ids; cold: the first pick of each key, warm: the same keys again", "",
             f"{'':{width}}" + "".join(f"{f.algorithm:>17}" for f in figures)]
    for label, unit, show in ROWS:
        title = f"{label} ({unit})" if unit else label
        lines.append(f"{title:{width}}" + "".join(f"{show(f):>17}" for f in figures))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    keys = KEYS[:args.keys]
    figures = [measure(name, build, keys) for name, build in contenders()]
    if args.json:
        print(orjson.dumps([asdict(f) for f in figures], option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(figures, len(keys)))
        if not any(f.algorithm == "uhashring" for f in figures):
            print("\nuhashring is not installed; pip install 'mqttlb[bench]' to compare with it")
    return 0
