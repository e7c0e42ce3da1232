"""``ring`` kept up to date in place: always the ring its definition gives, a change costs only what changed,
and no weight a heartbeat may announce makes it unbounded."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.core.balancers import create, ring
from mqttlb.core.balancers.rendezvous import stable_hash, stable_hashes
from mqttlb.core.balancers.ring import Ring

properties = settings(derandomize=True, max_examples=80, deadline=None)
KEYS = [f"device-{i}" for i in range(1500)]
weights = st.sampled_from([1e-9, 0.3, 1.0, 2.5, 99.9, 100.0, 1e308])
changes = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "ff", "g0"]), st.none() | weights),
                   min_size=1, max_size=12)


def defined(workers: Mapping[str, float], virtual_nodes: int, keys: list[str], scale: int = 1,
            hash_of: Callable[[str], int] = stable_hash) -> list[str]:
    """What the ring is by definition: every point as a (hash, worker) pair, sorted; a key goes to the first at or
    after its hash, wrapping around."""
    points = sorted((hash_of(f"{w}\0{i}"), w) for w, weight in workers.items()
                    for i in range(max(1, round(virtual_nodes * min(weight, Ring.MAX_WEIGHT) / scale))))
    hashes = [h for h, _ in points]
    return [points[bisect.bisect_left(hashes, hash_of(key)) % len(points)][1] for key in keys]


def applied(ring_: Ring, workers: dict[str, float], change: tuple[str, float | None]) -> None:
    worker, weight = change
    if weight is None:
        workers.pop(worker, None)
    else:
        workers[worker] = weight
    ring_.update(workers)


@properties
@given(steps=changes, virtual_nodes=st.sampled_from([1, 3, 160]))
def test_a_ring_changed_in_place_is_the_ring_its_definition_gives(steps: list[tuple[str, float | None]],
                                                                   virtual_nodes: int) -> None:
    ring_ = create("ring", virtual_nodes=virtual_nodes)
    assert isinstance(ring_, Ring)
    workers: dict[str, float] = {}
    for step in steps:
        applied(ring_, workers, step)
        if workers:
            assert [ring_.pick(key) for key in KEYS] == defined(workers, virtual_nodes, KEYS)
        else:
            assert ring_.pick("device-1") is None


def _coarse(text: str) -> int:
    """A hash with 64 values: points of different workers share hashes all the time."""
    return stable_hash(text) % 64 << 58


@properties
@given(steps=changes)
def test_points_of_equal_hash_go_in_id_order(steps: list[tuple[str, float | None]]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ring, "stable_hash", _coarse)
        patch.setattr(ring, "stable_hashes", lambda texts: np.array([_coarse(t) for t in texts], dtype=np.uint64))
        ring_ = Ring(virtual_nodes=4)
        workers: dict[str, float] = {}
        for step in steps:
            applied(ring_, workers, step)
            if workers:
                assert [ring_.pick(key) for key in KEYS[:200]] == defined(workers, 4, KEYS[:200], hash_of=_coarse)


def test_a_join_hashes_only_the_newcomers_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every change rebuilt the whole ring: at 1,000 workers half a second of the router's loop per join, at weight
    100 a minute."""
    ring_ = Ring()
    workers = {f"w{i}": 1.0 for i in range(200)}
    ring_.update(workers)
    hashed: list[int] = []

    def counted(texts: list[str]) -> np.ndarray:
        hashed.append(len(texts))
        return stable_hashes(texts)

    monkeypatch.setattr(ring, "stable_hashes", counted)
    ring_.update({**workers, "newcomer": 1.0})
    ring_.update({**workers, "newcomer": 2.0})  # a weight that grows adds points; it keeps those it had
    ring_.update(workers)
    ring_.update({**workers, "w7": 0.5})
    assert hashed == [160, 160]
    assert [ring_.pick(key) for key in KEYS] == defined({**workers, "w7": 0.5}, 160, KEYS)


def test_no_weight_makes_the_ring_unbounded() -> None:
    """10,000 workers (a pool's default max_workers) of weight 1e308 were 160 million points: gigabytes and a quarter
    of an hour of hashing, again at every change."""
    ring_ = Ring()
    workers = {f"w{i}": 1e308 for i in range(10_000)}
    ring_.update(workers)
    assert len(ring_) <= Ring.MAX_POINTS and ring_.scale == 128
    before = {key: ring_.pick(key) for key in KEYS}
    ring_.update({**workers, "newcomer": 1e308})
    after = {key: ring_.pick(key) for key in KEYS}
    assert {after[k] for k in KEYS if after[k] != before[k]} <= {"newcomer"}
    assert list(after.values()) == defined({**workers, "newcomer": 1e308}, 160, KEYS, scale=128)
    small = {f"w{i}": 1e308 for i in range(3)}
    ring_.update(small)
    assert ring_.scale == 1 and [ring_.pick(key) for key in KEYS] == defined(small, 160, KEYS)
