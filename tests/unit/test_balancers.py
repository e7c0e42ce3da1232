"""The balancing algorithms, without a broker: registry, options and each algorithm's promises."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.core import balancers
from mqttlb.core.balancers import BadOption, Balancer, UnknownAlgorithm, create, names, needs_key, register, rendezvous
from mqttlb.core.balancers.base import MIN_RELATIVE_WEIGHT, checked, relative

ALL = ("consistent_hash", "least_connections", "random", "ring", "round_robin", "weighted_round_robin")
HASHING = ("consistent_hash", "ring")
KEYS = [f"device-{i}" for i in range(20_000)]

properties = settings(derandomize=True, max_examples=60, deadline=None)
worker_ids = st.sets(st.text("abcdefgh0123456789-", min_size=1, max_size=8), min_size=1, max_size=8)


def make(name: str, workers: Mapping[str, float], **options: object) -> Balancer:
    balancer = create(name, rng=random.Random(1), **options)
    balancer.update(workers)
    return balancer


def picks(balancer: Balancer, count: int, key: str | None = None) -> list[str | None]:
    return [balancer.pick(key) for _ in range(count)]


def mapping(balancer: Balancer, keys: list[str]) -> dict[str, str | None]:
    return {key: balancer.pick(key) for key in keys}


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let a test register algorithms without leaking them into the others."""
    monkeypatch.setattr(balancers, "_registry", dict(balancers._registry))
    yield


# -- registry and options ----------------------------------------------------


def test_spec_example() -> None:
    b = create("consistent_hash")
    b.update({"w1": 1.0, "w2": 2.0})
    assert b.pick("device-42") in {"w1", "w2"}


@pytest.mark.parametrize("name", ALL)
def test_no_worker_gives_none(name: str) -> None:
    b = create(name, rng=random.Random(1))
    assert b.pick("device-1") is None
    b.update({"w1": 1.0})
    b.update({})
    assert b.pick("device-1") is None


@pytest.mark.parametrize("name", ALL)
def test_single_worker_gets_everything(name: str) -> None:
    b = make(name, {"only": 2.5})
    assert {b.pick(f"d{i}") for i in range(50)} == {"only"}


def test_names_and_needs_key() -> None:
    assert names() == ALL
    assert [n for n in ALL if needs_key(n)] == list(HASHING)


def test_unknown_algorithm_message() -> None:
    with pytest.raises(UnknownAlgorithm) as caught:
        create("roundrobin")
    assert str(caught.value) == (
        "unknown algorithm 'roundrobin'; expected one of consistent_hash, "
        "least_connections, random, ring, round_robin, weighted_round_robin"
    )
    assert isinstance(caught.value, ValueError)
    with pytest.raises(UnknownAlgorithm):
        needs_key("roundrobin")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("ring", {"virtual_nodes": 0}, "virtual_nodes: must be an integer from 1 to 10000, got 0"),
        ("ring", {"virtual_nodes": 10_001}, "virtual_nodes: must be an integer from 1 to 10000, got 10001"),
        ("ring", {"virtual_nodes": "160"}, "virtual_nodes: must be an integer from 1 to 10000, got '160'"),
        ("ring", {"virtual_nodes": True}, "virtual_nodes: must be an integer from 1 to 10000, got True"),
        ("ring", {"virtual_nodes": 1.5}, "virtual_nodes: must be an integer from 1 to 10000, got 1.5"),
        ("ring", {"vnodes": 5}, "unknown option 'vnodes'; expected one of virtual_nodes"),
        ("round_robin", {"virtual_nodes": 5}, "unknown option 'virtual_nodes'; round_robin takes no options"),
        ("consistent_hash", {"virtual_nodes": 160}, "virtual_nodes: consistent_hash is rendezvous hashing and has "
                                                    "no virtual nodes; the virtual-node ring is algorithm ring"),
        ("consistent_hash", {"load_factor": 1.0}, "load_factor: must be above 1 (1.25 lets a worker take 25% over "
                                                  "its share), got 1.0"),
        ("consistent_hash", {"load_factor": "1.25"}, "load_factor: must be a number from 1 to 100, got '1.25'"),
        ("consistent_hash", {"cache_size": 0}, "cache_size: must be an integer from 1 to 100000000, got 0"),
    ],
)
def test_bad_options(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(BadOption) as caught:
        create(name, **options)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_options() -> None:
    ring = create("ring", virtual_nodes=500)
    assert isinstance(ring, balancers.Ring) and ring.virtual_nodes == 500
    rendezvous = create("consistent_hash", load_factor=1.25, cache_size=10)
    assert isinstance(rendezvous, balancers.ConsistentHash)
    assert (rendezvous.load_factor, rendezvous.cache_size) == (1.25, 10)
    assert create("consistent_hash", load_factor=None).load_factor is None  # YAML null: off


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("name", ALL)
def test_update_refuses_bad_weights(name: str, weight: float) -> None:
    with pytest.raises(ValueError, match="'w1': weight must be"):
        create(name).update({"w1": weight})


class First(Balancer):
    name = "first"

    def __init__(self, *, rng: random.Random, reverse: bool = False) -> None:
        self.reverse = reverse
        self._workers: list[str] = []

    def update(self, workers: Mapping[str, float]) -> None:
        self._workers = sorted(workers, reverse=self.reverse)

    def pick(self, key: str | None) -> str | None:
        return self._workers[0] if self._workers else None


@pytest.mark.usefixtures("registry")
def test_register_custom_algorithm() -> None:
    register("first", First)
    assert names() == tuple(sorted((*ALL, "first")))
    assert needs_key("first") is False
    b = create("first", reverse=True)
    b.update({"a": 1.0, "b": 1.0})
    assert b.pick(None) == "b"
    with pytest.raises(UnknownAlgorithm, match=r"expected one of consistent_hash, first, least_connections"):
        create("last")


@pytest.mark.usefixtures("registry")
def test_register_factory_function() -> None:
    register("first_reversed", lambda rng, **options: First(rng=rng, reverse=True, **options))
    assert needs_key("first_reversed") is False
    assert isinstance(create("first_reversed"), First)


@pytest.mark.usefixtures("registry")
def test_register_refuses_duplicates() -> None:
    register("first", First)
    with pytest.raises(ValueError, match="already registered"):
        register("first", First)
    with pytest.raises(ValueError, match="already registered"):
        register("round_robin", First)


# -- round robin --------------------------------------------------------------


def test_round_robin_cycles_in_id_order() -> None:
    b = make("round_robin", {"c": 1.0, "a": 9.0, "b": 1.0})
    assert picks(b, 7) == ["a", "b", "c", "a", "b", "c", "a"]


@properties
@given(workers=worker_ids, rounds=st.integers(1, 5))
def test_round_robin_is_fair(workers: set[str], rounds: int) -> None:
    b = make("round_robin", dict.fromkeys(workers, 1.0))
    counts = Counter(picks(b, rounds * len(workers)))
    assert counts == dict.fromkeys(workers, rounds)


def test_round_robin_update_keeps_its_place() -> None:
    b = make("round_robin", {"a": 1.0, "b": 1.0, "c": 1.0})
    assert picks(b, 2) == ["a", "b"]
    b.update({"a": 1.0, "b": 1.0, "bb": 1.0, "c": 1.0})
    assert picks(b, 3) == ["bb", "c", "a"]
    b.update({"b": 1.0, "c": 1.0})  # the last pick, a, left
    assert picks(b, 2) == ["b", "c"]
    b.update({"a": 1.0, "b": 1.0})  # the last pick, c, left and nothing follows it: wrap
    assert picks(b, 1) == ["a"]


# -- smooth weighted round robin ---------------------------------------------


def test_weighted_round_robin_is_smooth_as_nginx() -> None:
    b = make("weighted_round_robin", {"b": 1.0, "a": 5.0, "c": 1.0})
    assert "".join(str(w) for w in picks(b, 21)) == "aabacaa" * 3


def test_weighted_round_robin_same_update_keeps_rotation() -> None:
    b = make("weighted_round_robin", {"a": 5.0, "b": 1.0, "c": 1.0})
    first = picks(b, 3)
    b.update({"c": 1.0, "b": 1.0, "a": 5.0})
    assert first + picks(b, 4) == list("aabacaa")


@properties
@given(weights=st.lists(st.integers(1, 12), min_size=1, max_size=6), cycles=st.integers(1, 3))
def test_weighted_round_robin_counts_equal_weights_every_cycle(weights: list[int], cycles: int) -> None:
    workers = {f"w{i}": float(weight) for i, weight in enumerate(weights)}
    b = make("weighted_round_robin", workers)
    for _ in range(cycles):
        assert Counter(picks(b, sum(weights))) == {w: int(weight) for w, weight in workers.items()}


def test_weighted_round_robin_fractional_weights() -> None:
    b = make("weighted_round_robin", {"a": 0.5, "b": 1.5, "c": 0.25})
    counts = Counter(picks(b, 9_000))
    assert counts == {"a": 2_000, "b": 6_000, "c": 1_000}


def test_weighted_round_robin_follows_new_weights() -> None:
    b = make("weighted_round_robin", {"a": 1.0, "b": 1.0})
    picks(b, 3)
    b.update({"a": 1.0, "b": 3.0, "c": 1.0})
    counts = Counter(picks(b, 500))
    assert abs(counts["a"] - 100) <= 2 and abs(counts["b"] - 300) <= 2 and abs(counts["c"] - 100) <= 2


# -- least connections ---------------------------------------------------------


def test_least_connections_picks_least_loaded() -> None:
    b = make("least_connections", {"a": 1.0, "b": 1.0, "c": 1.0})
    b.report_load("a", 5)
    b.report_load("b", 2)
    b.report_load("c", 3)
    assert picks(b, 3) == ["b", "c", "b"]  # b at 3 ties with c, which has waited longer
    b.report_load("a", 0)  # the report replaces the count, picks since add on top
    assert picks(b, 2) == ["a", "a"]


def test_least_connections_ties_rotate() -> None:
    b = make("least_connections", {"a": 1.0, "b": 1.0, "c": 1.0})
    seen = []
    for _ in range(6):
        seen.append(b.pick(None))
        for worker in "abc":
            b.report_load(worker, 0)
    assert seen == ["a", "b", "c", "a", "b", "c"]


def test_least_connections_update_keeps_counts_and_ignores_strangers() -> None:
    b = make("least_connections", {"a": 1.0, "b": 1.0})
    b.report_load("a", 10)
    b.report_load("ghost", 0)
    b.update({"a": 1.0, "b": 1.0, "c": 1.0})
    assert picks(b, 4) == ["b", "c", "b", "c"]
    assert "a" not in picks(b, 10)


def test_least_connections_in_a_large_pool_uses_two_choices() -> None:
    workers = {f"w{i:02}": 1.0 for i in range(20)}
    b = make("least_connections", workers)
    b.report_load("w00", 1_000)  # loaded: it can win only against another loaded worker
    counts = Counter(picks(b, 4_000))
    assert counts["w00"] == 0
    assert max(counts.values()) - min(counts[w] for w in workers if w != "w00") <= 6  # even, though sampled


def test_least_connections_without_heartbeats_spreads_by_what_it_sent() -> None:
    """Stale or missing reports: the counts of picks alone keep the pool even."""
    b = make("least_connections", {f"w{i:02}": 1.0 for i in range(10)})
    counts = Counter(picks(b, 10_000))
    assert max(counts.values()) - min(counts.values()) <= 4


# -- random ---------------------------------------------------------------------


def test_random_follows_weights() -> None:
    b = make("random", {"a": 1.0, "b": 3.0})
    counts = Counter(picks(b, 10_000))
    assert 0.22 < counts["a"] / 10_000 < 0.28


def test_random_is_deterministic_given_the_seed() -> None:
    workers = {"a": 1.0, "b": 2.0, "c": 0.5}
    assert picks(make("random", workers), 100) == picks(make("random", workers), 100)
    other = create("random", rng=random.Random(2))
    other.update(workers)
    assert picks(other, 100) != picks(make("random", workers), 100)


# -- consistent hashing and the ring -------------------------------------------------


@pytest.mark.parametrize("name", HASHING)
def test_hashing_needs_a_key(name: str) -> None:
    b = make(name, {"w1": 1.0})
    with pytest.raises(ValueError, match="needs a key"):
        b.pick(None)


def test_hashing_is_stable_across_runs() -> None:
    # Pinned: the mapping must not depend on PYTHONHASHSEED or the Python version.
    workers = {"w1": 1.0, "w2": 1.0, "w3": 1.0}
    assert [make("consistent_hash", workers).pick(f"device-{i}") for i in range(8)] == \
        ["w3", "w1", "w2", "w3", "w2", "w2", "w3", "w1"]
    assert [make("ring", workers).pick(f"device-{i}") for i in range(8)] == \
        ["w2", "w3", "w1", "w3", "w2", "w1", "w1", "w1"]


hash_keys = KEYS[:400]
weights_drawn = st.sampled_from([0.5, 0.8, 1.0, 1.25, 3.0])


@st.composite
def pools(draw: st.DrawFn) -> tuple[dict[str, float], str, float]:
    workers = draw(worker_ids)
    weights = {w: draw(weights_drawn) for w in sorted(workers)}
    newcomer = draw(st.text("xyz", min_size=1, max_size=4).filter(lambda w: w not in workers))
    return weights, newcomer, draw(weights_drawn)


@pytest.mark.parametrize("name", HASHING)
@properties
@given(pool=pools())
def test_hashing_adding_moves_keys_only_to_the_newcomer(name: str, pool: tuple[dict[str, float], str, float]) -> None:
    workers, newcomer, weight = pool
    before = mapping(make(name, workers), hash_keys)
    after = mapping(make(name, {**workers, newcomer: weight}), hash_keys)
    assert {after[k] for k in hash_keys if after[k] != before[k]} <= {newcomer}


@pytest.mark.parametrize("name", HASHING)
@properties
@given(pool=pools(), data=st.data())
def test_hashing_removing_moves_only_its_keys(name: str, pool: tuple[dict[str, float], str, float],
                                              data: st.DataObject) -> None:
    workers, _, _ = pool
    leaver = data.draw(st.sampled_from(sorted(workers)))
    before = mapping(make(name, workers), hash_keys)
    rest = {w: weight for w, weight in workers.items() if w != leaver}
    after = mapping(make(name, rest), hash_keys)
    assert all(after[k] == before[k] for k in hash_keys if before[k] != leaver)


@pytest.mark.parametrize("name", HASHING)
@properties
@given(workers=worker_ids.flatmap(lambda ids: st.permutations(sorted(ids))), weights=st.data())
def test_hashing_ignores_insertion_order(name: str, workers: list[str], weights: st.DataObject) -> None:
    given_weights = {w: weights.draw(st.floats(0.1, 10.0)) for w in workers}
    in_id_order = dict(sorted(given_weights.items()))
    assert mapping(make(name, given_weights), hash_keys) == mapping(make(name, in_id_order), hash_keys)


@properties
@given(pool=pools(), changes=st.lists(st.tuples(st.sampled_from("abcxyz"), st.sampled_from([0.0, 1.0, 2.0])),
                                      max_size=6))
def test_consistent_hash_cache_never_outlives_a_change(pool: tuple[dict[str, float], str, float],
                                                       changes: list[tuple[str, float]]) -> None:
    """After any sequence of updates, cached picks equal those of a balancer built fresh."""
    workers = dict(pool[0])
    cached = make("consistent_hash", workers)
    mapping(cached, hash_keys)
    for worker, weight in changes:
        if weight:
            workers[worker] = weight
        else:
            workers.pop(worker, None)
        cached.update(dict(workers))
        assert mapping(cached, hash_keys) == mapping(make("consistent_hash", workers), hash_keys)


def test_consistent_hash_cache_is_bounded() -> None:
    b = make("consistent_hash", {"w1": 1.0, "w2": 1.0}, cache_size=100)
    first = mapping(b, KEYS[:1_000])
    assert len(b._cache) <= 100
    assert mapping(b, KEYS[:1_000]) == first


def test_removing_a_worker_with_mixed_weights_moves_only_its_keys() -> None:
    weights = {"w1": 1.0, "w2": 1.0, "w3": 2.0}
    before = mapping(make("consistent_hash", weights), KEYS)
    after = mapping(make("consistent_hash", {"w2": 1.0, "w3": 2.0}), KEYS)
    assert all(after[k] == w for k, w in before.items() if w != "w1")


BALANCE_KEYS = [f"device-{i}" for i in range(100_000)]


@pytest.mark.parametrize(("workers", "limit"), [(10, 1.05), (100, 1.10)])
def test_consistent_hash_balance(workers: int, limit: float) -> None:
    counts = Counter(mapping(make("consistent_hash", {f"worker-{i}": 1.0 for i in range(workers)}),
                             BALANCE_KEYS).values())
    assert len(counts) == workers
    assert max(counts.values()) / (len(BALANCE_KEYS) / workers) <= limit


def test_consistent_hash_adding_an_eleventh_worker_moves_a_fair_share_only_to_it() -> None:
    ten = {f"worker-{i}": 1.0 for i in range(10)}
    before = mapping(make("consistent_hash", ten), BALANCE_KEYS)
    after = mapping(make("consistent_hash", {**ten, "worker-10": 1.0}), BALANCE_KEYS)
    moved = [k for k in BALANCE_KEYS if after[k] != before[k]]
    assert {after[k] for k in moved} == {"worker-10"}
    assert len(moved) <= 1.1 * len(BALANCE_KEYS) / 11


def test_consistent_hash_weights_set_shares_within_three_points() -> None:
    weights = {"w1": 1.0, "w2": 2.0, "w3": 3.0, "w4": 4.0}
    counts = Counter(mapping(make("consistent_hash", weights), BALANCE_KEYS).values())
    for worker, weight in weights.items():
        assert abs(counts[worker] / len(BALANCE_KEYS) - weight / 10) <= 0.03


def test_preference_lists_where_a_key_would_go_next() -> None:
    b = make("consistent_hash", {"w1": 1.0, "w2": 1.0, "w3": 2.0})
    for key in hash_keys[:50]:
        first, second, _ = b.preference(key)
        assert b.pick(key) == first
        without = {w: wt for w, wt in {"w1": 1.0, "w2": 1.0, "w3": 2.0}.items() if w != first}
        assert make("consistent_hash", without).pick(key) == second


# -- bounded loads ---------------------------------------------------------------


@pytest.mark.parametrize("load_factor", [1.1, 1.25, 2.0])
def test_bounded_loads_cap_every_worker(load_factor: float) -> None:
    weights = {f"w{i}": 1.0 for i in range(8)} | {"heavy": 3.0}
    b = make("consistent_hash", weights, load_factor=load_factor)
    total = sum(weights.values())
    for n, key in enumerate(KEYS[:5_000], start=1):
        b.pick(key)
        loads = Counter(b._cache.values())
        assert all(loads[w] <= math.ceil(load_factor * n * weight / total) for w, weight in weights.items())


def test_bounded_loads_keep_devices_where_they_are() -> None:
    b = make("consistent_hash", {f"w{i}": 1.0 for i in range(5)}, load_factor=1.25)
    first = mapping(b, KEYS[:2_000])
    assert mapping(b, KEYS[:2_000]) == first  # nobody moves while the pool stays as it is
    plain = mapping(make("consistent_hash", {f"w{i}": 1.0 for i in range(5)}), KEYS[:2_000])
    assert sum(first[k] == plain[k] for k in first) > 0.85 * 2_000  # most devices get their first choice


@settings(derandomize=True, max_examples=25, deadline=None)
@given(weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0, 7.5]), min_size=2, max_size=6))
def test_consistent_hash_shares_follow_any_weights(weights: list[float]) -> None:
    workers = {f"w{i}": weight for i, weight in enumerate(weights)}
    keys = KEYS[:10_000]
    counts = Counter(mapping(make("consistent_hash", workers), keys).values())
    total = sum(weights)
    assert all(abs(counts[w] / len(keys) - weight / total) <= 0.03 for w, weight in workers.items())


# -- any weight a heartbeat may announce ----------------------------------------------

BIGGEST = 1.7976931348623157e308
any_weight = st.floats(min_value=5e-324, max_value=BIGGEST, allow_nan=False, allow_infinity=False,
                       allow_subnormal=True)
EXTREMES = (5e-324, 1e-323, 2.2250738585072014e-308, 1e-300, 1.0, 1e300, 1e308, BIGGEST)
VARIANTS = [(name, {}) for name in ALL] + [("consistent_hash", {"load_factor": 1.25})]
def exponents(low: int, high: int) -> st.SearchStrategy[int]:
    """Powers of two from ``low`` to ``high``, the ends (denormals, near overflow) often."""
    return st.one_of(st.sampled_from([low, low + 2, high - 2, high]), st.integers(low, high))


wide = settings(derandomize=True, max_examples=25, deadline=None)  # a ring of huge weights has 16,000 points each


@pytest.mark.parametrize(("name", "options"), VARIANTS)
@wide
@given(weights=st.lists(st.one_of(any_weight, st.sampled_from(EXTREMES)), min_size=1, max_size=8))
def test_any_weights_never_break_a_balancer(name: str, options: dict[str, object], weights: list[float]) -> None:
    workers = {f"w{i}": weight for i, weight in enumerate(weights)}
    b = make(name, workers, **options)
    assert set(picks(b, 50, "device-1")) <= set(workers)
    assert set(mapping(b, KEYS[:50]).values()) <= set(workers)


def test_every_registered_algorithm_is_checked_against_any_weights() -> None:
    assert {name for name, _ in VARIANTS} == set(names())


def shares(name: str, workers: Mapping[str, float], count: int = 4_000) -> dict[str, float]:
    b = make(name, workers)
    chosen = picks(b, count) if not needs_key(name) else list(mapping(b, KEYS[:count]).values())
    counts = Counter(chosen)
    return {worker: counts[worker] / count for worker in workers}


WEIGHTED = ("consistent_hash", "random", "weighted_round_robin")


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize(("workers", "expected"), [
    ({"a": 1e308, "b": 1e308}, {"a": 0.5, "b": 0.5}),  # their sum overflows
    ({"a": BIGGEST, "b": BIGGEST, "c": BIGGEST}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
    ({"a": 1e308, "b": 1e308, "c": 1.0}, {"a": 0.5, "b": 0.5, "c": 0.0}),
    ({"a": 5e-324, "b": 5e-324}, {"a": 0.5, "b": 0.5}),  # the smallest denormal
    ({"a": 5e-324, "b": 1e-323}, {"a": 1 / 3, "b": 2 / 3}),  # 1 and 2 times it
    ({"a": 1e-300, "b": 3e-300}, {"a": 0.25, "b": 0.75}),
    ({"a": BIGGEST, "b": 5e-324}, {"a": 1.0, "b": 0.0}),
])
def test_shares_follow_extreme_weights(name: str, workers: dict[str, float], expected: dict[str, float]) -> None:
    assert shares(name, workers) == pytest.approx(expected, abs=0.03)


@properties
@given(ratios=st.lists(st.integers(1, 12), min_size=1, max_size=6), exponent=exponents(-1074, 1019))
def test_weighted_round_robin_counts_are_exact_at_any_scale(ratios: list[int], exponent: int) -> None:
    """Weights ratio * 2**exponent, denormal to nearly the largest float, rotate exactly as the ratios do."""
    b = make("weighted_round_robin", {f"w{i}": math.ldexp(r, exponent) for i, r in enumerate(ratios)})
    assert Counter(picks(b, sum(ratios))) == {f"w{i}": r for i, r in enumerate(ratios)}


@properties
@given(exponent=exponents(-1074, 1021))
def test_random_shares_hold_at_any_scale(exponent: int) -> None:
    assert shares("random", {"a": math.ldexp(1, exponent), "b": math.ldexp(3, exponent)}) == \
        pytest.approx({"a": 0.25, "b": 0.75}, abs=0.03)


@settings(derandomize=True, max_examples=30, deadline=None)
@given(pool=pools(), exponent=exponents(-1021, 1021))  # the weights stay exact: normal floats
def test_consistent_hash_mapping_depends_on_weight_ratios_only(pool: tuple[dict[str, float], str, float],
                                                              exponent: int) -> None:
    """Scaling every weight by one power of two, to the smallest normal floats or the largest, moves no key.

    With the properties above at ordinary weights, this gives minimal movement
    and independence of join order at any scale.
    """
    workers, _, _ = pool
    scaled = {w: math.ldexp(weight, exponent) for w, weight in workers.items()}
    assert all(0 < weight < math.inf for weight in scaled.values())
    assert mapping(make("consistent_hash", scaled), hash_keys) == mapping(make("consistent_hash", workers), hash_keys)


@pytest.mark.parametrize("name", HASHING)
@wide
@given(workers=st.dictionaries(st.sampled_from("abcdef"), any_weight, min_size=1), newcomer=any_weight)
def test_hashing_adding_any_weight_moves_keys_only_to_the_newcomer(name: str, workers: dict[str, float],
                                                                  newcomer: float) -> None:
    """A newcomer of any weight takes keys only for itself, while no weight is under the floor."""
    everyone = {**workers, "x": newcomer}
    if name == "consistent_hash" and min(everyone.values()) < max(everyone.values()) * MIN_RELATIVE_WEIGHT * 2:
        return  # a floored weight counts as a share of the largest, which the newcomer may change
    before = mapping(make(name, workers), hash_keys)
    after = mapping(make(name, everyone), hash_keys)
    assert {after[k] for k in hash_keys if after[k] != before[k]} <= {"x"}


def test_relative_weights_scale_by_a_power_of_two_with_a_floor() -> None:
    assert relative({"b": 1.0, "a": 3.0}) == {"a": 0.75, "b": 0.25}
    assert relative({"a": 1e308, "b": 1e308}) == dict.fromkeys("ab", math.ldexp(1e308, -1024))
    largest = relative({"a": 1e308, "b": 1.0, "c": 5e-324})["a"]
    assert relative({"a": 1e308, "b": 1.0, "c": 5e-324}) == {"a": largest, "b": largest * MIN_RELATIVE_WEIGHT,
                                                             "c": largest * MIN_RELATIVE_WEIGHT}
    assert relative({}) == {}


# -- rendezvous at scale: vectorised scoring, a cache kept true, eviction --------------

LARGE = rendezvous.VECTOR_FROM + 12
"""A pool scored with numpy."""


def reference(weights: Mapping[str, float], key: str) -> str:
    """The winner by the definition, in plain Python: the best (f, raw), the first id on a full tie."""
    key_hash = rendezvous.stable_hash(key)
    ranked = [(*rendezvous.score(key_hash, rendezvous.stable_hash(w), math.log(weight)), -i, w)
              for i, (w, weight) in enumerate(sorted(weights.items()))]
    return max(ranked)[-1]


@pytest.mark.parametrize("weights", [
    {f"w{i}": 1.0 for i in range(LARGE)},
    {f"w{i}": float(1 + i % 4) for i in range(LARGE)},
    {f"w{i}": (1e308, 5e-324, 1.0, 3e-300)[i % 4] for i in range(LARGE)},
    {f"w{i}": (1.0, 1.0 + 1e-15)[i % 2] for i in range(LARGE)},  # weights a hair apart: near-ties everywhere
    {"a": 1.0, "b": 2.0, "c": 3.0},
    {f"w{i}": (1.0, 2.0)[i % 5 == 0] for i in range(2 * rendezvous.GROUP_SIZE_FOR_ONE)},
    {f"w{i}": (1.0, 1.0 + 1e-15)[i % 2] for i in range(2 * rendezvous.GROUP_SIZE_FOR_ONE)},
    {f"w{i}": float(1 + i % (rendezvous.MAX_GROUPS + 1)) for i in range(LARGE)},
], ids=["equal", "mixed", "extreme", "hair", "small", "two-sizes", "hair-groups", "many-weights"])
def test_every_scoring_path_agrees_with_the_definition(weights: dict[str, float]) -> None:
    pool = rendezvous.Pool.of(checked(weights))
    keys = KEYS[:300]
    expected = [reference(weights, key) for key in keys]
    assert [pool.names[pool.best(rendezvous.stable_hash(k))] for k in keys] == expected
    hashes = np.array([rendezvous.stable_hash(k) for k in keys], dtype=np.uint64)
    assert [pool.names[i] for i in pool.best_of_many(hashes)] == expected
    for capacity in (1000, 37):  # keys picked ahead, each block together; with a cache too small to keep them
        ahead = rendezvous.Rendezvous(capacity)
        ahead.update(weights)
        picked = []
        for start in range(0, len(keys), 64):
            ahead.prefetch(keys[start:start + 64])
            picked += [ahead.pick(key) for key in keys[start:start + 64]]
        assert picked == expected


@settings(derandomize=True, max_examples=100)
@given(key_hash=st.integers(0, (1 << 64) - 1), shared=st.integers(0, (1 << 64) - 1), places=st.data())
def test_weight_groups_break_full_ties_as_the_definition(key_hash: int, shared: int, places: st.DataObject) -> None:
    """Two workers of one weight with the very same score for a key: the first id wins, as the rank says."""
    size = 2 * rendezvous.GROUP_SIZE_FOR_ONE
    seeds = {f"w{i:03d}": rendezvous.stable_hash(f"w{i}") for i in range(size)}
    tied = places.draw(st.lists(st.integers(0, size - 1), min_size=2, max_size=3, unique=True))
    for i in tied:
        seeds[f"w{i:03d}"] = seed_scoring(key_hash, shared)
    weights = checked({w: (1.0, 3.0)[i % 2] for i, w in enumerate(sorted(seeds))})
    pool = rendezvous.Pool.of(weights, seeds)
    assert pool.groups is not None
    expected = max(range(size), key=lambda i: pool.rank(key_hash, i))
    assert pool.best(key_hash) == expected
    assert pool.best_of_many(np.array([key_hash], dtype=np.uint64)).tolist() == [expected]


def test_keys_picked_ahead_are_cached_and_the_cache_stays_true() -> None:
    b = rendezvous.Rendezvous(capacity=100)
    b.update({f"w{i}": 1.0 for i in range(LARGE)})
    b.prefetch(KEYS[:60] + KEYS[:60])  # a device twice in one read takes one row
    assert list(b.cache) == KEYS[:60]
    b.prefetch(KEYS[60:130])  # the oldest 30 make room
    assert list(b.cache) == KEYS[30:130]
    b.update({f"w{i}": 1.0 for i in range(1, LARGE + 1)})  # a leave and a join: only devices that can move move
    assert b.cache == {key: reference({f"w{i}": 1.0 for i in range(1, LARGE + 1)}, key) for key in KEYS[30:130]}


def test_too_few_scores_are_left_to_pick() -> None:
    """With three workers, three keys: nine scores, where numpy would cost more than the Python loop."""
    b = rendezvous.Rendezvous(capacity=100)
    b.update({"a": 1.0, "b": 1.0, "c": 1.0})
    b.prefetch(KEYS[:3])
    assert b.cache == {}
    b.prefetch(KEYS[:rendezvous.VECTOR_FROM // 3])
    assert len(b.cache) == rendezvous.VECTOR_FROM // 3


@pytest.mark.parametrize(("weights", "picks"), [
    ({f"w{i}": 1.0 for i in range(5)}, ["w3", "w0", "w2", "w4", "w0", "w0", "w3", "w1"]),
    ({"a": 1.0, "b": 2.0, "c": 3.0}, ["b", "c", "c", "a", "c", "a", "a", "a"]),
    ({f"w{i}": 1.0 for i in range(100)}, ["w43", "w96", "w72", "w11", "w98", "w60", "w21", "w53"]),
])
def test_the_mapping_is_the_one_every_version_makes(weights: dict[str, float], picks: list[str]) -> None:
    """Routers of two versions in a share group (a rolling upgrade) must agree on every device: the key hash is
    BLAKE2b-64 of the UTF-8 text, and these picks were made by the code of 2026-11."""
    for text in ("", "device-42", "日本", "\ud800 lone surrogate"):
        expected = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        assert rendezvous.stable_hash(text) == int.from_bytes(expected, "big")
    b = make("consistent_hash", weights)
    assert [b.pick(f"device-{i}") for i in range(8)] == picks


def test_hashes_of_many_keys_are_those_of_each() -> None:
    texts = ["", "device-1", "日本", "\ud800 lone surrogate", "x" * 5000]
    assert rendezvous.stable_hashes(texts).tolist() == [rendezvous.stable_hash(t) for t in texts]


def test_bounded_loads_pick_in_arrival_order_only() -> None:
    """Prefetching would place devices out of arrival order: bounded loads ignore it."""
    b = make("consistent_hash", {f"w{i}": 1.0 for i in range(LARGE)}, load_factor=1.25)
    b.prefetch(KEYS[:100])
    assert b._cache == {}


def seed_scoring(key_hash: int, z: int) -> int:
    """The worker seed whose ``mix`` with ``key_hash`` is ``z ^ (z >> 31)``: each step of ``mix`` undone."""
    def unshift(y: int, by: int) -> int:
        x = y
        for _ in range(64 // by):
            x = y ^ (x >> by)
        return x
    mask = (1 << 64) - 1
    z = unshift((z * pow(0x94D049BB133111EB, -1, 1 << 64)) & mask, 27)
    return unshift(((z * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & mask) ^ rendezvous.premix(key_hash), 30)


@settings(derandomize=True, max_examples=200)
@given(key_hash=st.integers(0, (1 << 64) - 1), lows=st.lists(st.integers(0, (1 << 33) - 1), min_size=2, max_size=4),
       places=st.data())
def test_equal_weights_break_ties_in_the_top_bits_as_the_definition(key_hash: int, lows: list[int],
                                                                    places: st.DataObject) -> None:
    """Workers that share the top 31 bits of the best score, even all 64: the last step of ``mix`` decides."""
    seeds = {f"w{i}": rendezvous.stable_hash(f"w{i}") for i in range(LARGE)}
    for low in lows:
        seeds[f"w{places.draw(st.integers(0, LARGE - 1))}"] = seed_scoring(key_hash, (((1 << 31) - 1) << 33) | low)
    pool = rendezvous.Pool.of(checked(dict.fromkeys(sorted(seeds), 1.0)), seeds)
    assert rendezvous.mix(key_hash, seed_scoring(key_hash, 12345)) == 12345 ^ (12345 >> 31)
    expected = max(range(LARGE), key=lambda i: pool.rank(key_hash, i))
    assert pool.best(key_hash) == expected
    assert pool.best_of_many(np.array([key_hash, key_hash], dtype=np.uint64)).tolist() == [expected, expected]


@pytest.mark.parametrize("weights", [
    {"a": 5e-324, "b": 1e-323, "c": 1.5e-323},
    {"a": 1e308, "b": 5e307},
    {"a": 1.7e308, "b": 1e-300},
], ids=["subnormal", "huge", "far-apart"])
def test_extreme_weights_still_set_shares(weights: dict[str, float]) -> None:
    """The old ``weight / -ln(u)`` underflowed to 0 or overflowed to inf, and the first id took every tie."""
    keys = KEYS[:10_000]
    counts = Counter(mapping(make("consistent_hash", weights), keys).values())
    total = math.fsum(weights.values())
    assert all(abs(counts[w] / len(keys) - weight / total) <= 0.03 for w, weight in weights.items())


@settings(derandomize=True, max_examples=30, deadline=None)
@given(changes=st.lists(st.tuples(st.integers(0, LARGE + 3), st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 7.0])),
                        min_size=1, max_size=6),
       start_weighted=st.booleans())
def test_large_pool_cache_stays_true_through_any_changes(changes: list[tuple[int, float]],
                                                         start_weighted: bool) -> None:
    """Joins, leaves and weight changes, one or several per update, against a pool scored with numpy."""
    workers = {f"w{i}": (1.0 + i % 3 if start_weighted else 1.0) for i in range(LARGE)}
    keys = KEYS[:2_000]
    cached = make("consistent_hash", workers)
    mapping(cached, keys)
    for n, (worker, weight) in enumerate(changes):
        if weight:
            workers[f"w{worker}"] = weight
        else:
            workers.pop(f"w{worker}", None)
        if n % 2 == 0:
            cached.update(dict(workers))
    cached.update(dict(workers))
    assert len(cached._cache) == len(keys)  # kept, not emptied
    assert mapping(cached, keys) == mapping(make("consistent_hash", workers), keys)


def test_a_change_to_the_pool_keeps_the_cache() -> None:
    """A join, a weight change (as slow start makes ten of) and a leave: the cache is kept and stays true."""
    workers = {f"worker-{i}": 1.0 for i in range(10)}
    b = make("consistent_hash", workers)
    keys = KEYS[:5_000]
    mapping(b, keys)
    for change in ({**workers, "new": 0.1}, {**workers, "new": 0.5}, {**workers, "new": 1.0},
                   {**workers, "new": 1.0, "worker-3": 0.2}, workers):
        b.update(change)
        assert len(b._cache) == len(keys)
        assert mapping(b, keys) == mapping(make("consistent_hash", change), keys)


def test_a_full_cache_evicts_its_oldest_instead_of_emptying() -> None:
    b = make("consistent_hash", {"w1": 1.0, "w2": 1.0}, cache_size=100)
    mapping(b, KEYS[:150])
    assert set(b._cache) == set(KEYS[50:150])


def test_the_cache_grows_only_with_use() -> None:
    b = make("consistent_hash", {"w1": 1.0}, cache_size=100_000_000)
    mapping(b, KEYS[:10])
    assert b._rendezvous._hashes.nbytes < 100_000


def test_every_worker_replaced_in_one_update() -> None:
    b = make("consistent_hash", {"w1": 1.0})
    mapping(b, KEYS[:100])
    b.update({"w2": 1.0, "w3": 3.0})
    assert mapping(b, KEYS[:100]) == mapping(make("consistent_hash", {"w2": 1.0, "w3": 3.0}), KEYS[:100])


def test_a_sweeping_change_empties_the_cache() -> None:
    """Past MAX_STEPS changes at once, scoring the devices again as they come is cheaper than step by step."""
    b = make("consistent_hash", {f"old-{i}": 1.0 for i in range(rendezvous.MAX_STEPS)})
    mapping(b, KEYS[:100])
    b.update({"new": 1.0})
    assert len(b._cache) == 0
    assert set(mapping(b, KEYS[:100]).values()) == {"new"}


def test_emptying_the_pool_and_refilling_it() -> None:
    b = make("consistent_hash", {"w1": 1.0, "w2": 1.0})
    mapping(b, KEYS[:100])
    b.update({})
    assert b.pick(KEYS[0]) is None
    b.update({"w3": 1.0})
    assert set(mapping(b, KEYS[:100]).values()) == {"w3"}
