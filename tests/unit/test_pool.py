"""Heartbeats and the fleet they describe, with plain floats for a clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.balancers import create
from mqttlb.core.config import PoolSettings, WorkerOverride
from mqttlb.core.pool import (
    MAX_HEARTBEAT_BYTES,
    UNNAMED_POOLS,
    Departure,
    Fleet,
    FleetFull,
    Health,
    Heartbeat,
    WorkerState,
    WorkerView,
)
from mqttlb.core.topics import MAX_KEY_BYTES, key_problem
from mqttlb.errors import BadHeartbeat, RemoteInputError

properties = settings(derandomize=True, max_examples=150, deadline=None)
TIMEOUT, EXPIRE = 6.0, 60.0


def pool(name: str, slow_start: float = 0.0, **weights: float) -> PoolSettings:
    return PoolSettings(name, {w: WorkerOverride(weight) for w, weight in weights.items()}, slow_start)


def hb(worker: str = "w1", /, **fields: Any) -> Heartbeat:
    return Heartbeat.parse(worker, orjson.dumps(fields))


def view(fleet: Fleet, worker: str, now: float) -> WorkerView | None:
    return next((v for v in fleet.views(now) if v.worker == worker), None)


def health(fleet: Fleet, now: float) -> dict[str, Health]:
    return {view.worker: view.health for view in fleet.views(now)}


# -- Heartbeat.parse ---------------------------------------------------------------------


def test_defaults() -> None:
    beat = Heartbeat.parse("w1", b"{}")
    assert beat == Heartbeat("w1", pool="default", state=WorkerState.UP, weight=1.0, inflight=0)
    assert isinstance(beat.weight, float)


def test_every_field() -> None:
    beat = hb("w1", worker="w1", pool="gpu", state="draining", weight=2.5, inflight=7, interval=2, ts=1.7e9,
              unknown={"ignored": True})
    assert beat == Heartbeat("w1", pool="gpu", state=WorkerState.DRAINING, weight=2.5, inflight=7)


def test_integer_weight_becomes_float() -> None:
    beat = hb(weight=3)
    assert beat.weight == 3.0 and isinstance(beat.weight, float)


def test_empty_payload_means_down() -> None:
    assert Heartbeat.parse("w1", b"") == Heartbeat("w1", state=WorkerState.DOWN)


def test_the_will_means_down() -> None:
    assert hb("w1", worker="w1", state="down").state is WorkerState.DOWN


def test_tiny_positive_weight_accepted() -> None:
    assert hb(weight=1e-300).weight == 1e-300


@pytest.mark.parametrize(("fields", "why"), [
    ({"worker": "w2"}, "does not match"),
    ({"worker": 5}, "does not match"),
    ({"worker": None}, "does not match"),
    ({"worker": ""}, "does not match"),
    ({"pool": ""}, "pool"),
    ({"pool": "a/b"}, "pool"),
    ({"pool": "a+"}, "pool"),
    ({"pool": "p\x01"}, "pool"),
    ({"pool": 5}, "pool"),
    ({"pool": None}, "pool"),
    ({"pool": ["default"]}, "pool"),
    ({"state": "UP"}, "state"),
    ({"state": "gone"}, "state"),
    ({"state": None}, "state"),
    ({"state": 1}, "state"),
    ({"state": ["up"]}, "state"),
    ({"state": {"up": 1}}, "state"),
    ({"weight": 0}, "weight"),
    ({"weight": 0.0}, "weight"),
    ({"weight": -1}, "weight"),
    ({"weight": -0.5}, "weight"),
    ({"weight": True}, "weight"),
    ({"weight": False}, "weight"),
    ({"weight": "2"}, "weight"),
    ({"weight": None}, "weight"),
    ({"weight": [1]}, "weight"),
    ({"inflight": -1}, "inflight"),
    ({"inflight": 1.5}, "inflight"),
    ({"inflight": 1.0}, "inflight"),
    ({"inflight": True}, "inflight"),
    ({"inflight": "3"}, "inflight"),
    ({"inflight": None}, "inflight"),
])
def test_bad_fields_refused(fields: dict[str, Any], why: str) -> None:
    with pytest.raises(BadHeartbeat, match=why):
        Heartbeat.parse("w1", orjson.dumps(fields))


@pytest.mark.parametrize("payload", [
    b"[]", b'"up"', b"1", b"null", b"true", b'[{"worker": "w1"}]',
])
def test_not_an_object_refused(payload: bytes) -> None:
    with pytest.raises(BadHeartbeat, match="not a JSON object"):
        Heartbeat.parse("w1", payload)


@pytest.mark.parametrize("payload", [
    b"up", b"{", b'{"weight": NaN}', b'{"weight": Infinity}', b'{"weight": 1e400}', b"\xff\xfe",
    b'{"weight": 1} x', b"[" * 10_000, b'{"a":' * 3_000,
])
def test_not_json_refused(payload: bytes) -> None:
    with pytest.raises(BadHeartbeat):
        Heartbeat.parse("w1", payload)


def test_weight_that_underflows_to_zero_refused() -> None:
    with pytest.raises(BadHeartbeat, match="weight"):
        Heartbeat.parse("w1", b'{"weight": 1e-400}')


def test_integer_inflight_too_big_for_json_ints_refused() -> None:
    with pytest.raises(BadHeartbeat, match="inflight"):
        Heartbeat.parse("w1", b'{"inflight": 123456789012345678901234567890}')  # parsed as a float


def test_size_limit() -> None:
    body = b'{"worker": "w1", "pad": "'
    at_limit = body + b"x" * (MAX_HEARTBEAT_BYTES - len(body) - 2) + b'"}'
    assert len(at_limit) == MAX_HEARTBEAT_BYTES
    assert Heartbeat.parse("w1", at_limit) == Heartbeat("w1")
    over = body + b"x" * (MAX_HEARTBEAT_BYTES - len(body) - 1) + b'"}'
    with pytest.raises(BadHeartbeat, match="bytes"):
        Heartbeat.parse("w1", over)


@pytest.mark.parametrize("worker", ["", "w/1", "w+", "#", "w\x00", "w\x1f", "\ufffe"])
def test_bad_worker_id_in_topic_refused(worker: str) -> None:
    with pytest.raises(BadHeartbeat, match="worker id"):
        Heartbeat.parse(worker, b"{}")
    with pytest.raises(BadHeartbeat):
        Heartbeat.parse(worker, b"")  # not even a will may name such a worker


def test_bad_heartbeat_is_remote_input() -> None:
    assert issubclass(BadHeartbeat, RemoteInputError)


@properties
@given(st.binary(max_size=80))
def test_any_bytes_parse_or_raise_bad_heartbeat(payload: bytes) -> None:
    try:
        beat = Heartbeat.parse("w1", payload)
    except BadHeartbeat:
        return
    assert beat.worker == "w1" and beat.weight > 0 and beat.inflight >= 0


json_leaf = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.sampled_from(
    ["w1", "w2", "up", "down", "draining", "default", "", "a/b"])


@properties
@given(st.dictionaries(st.sampled_from(["worker", "pool", "state", "weight", "inflight", "x"]), json_leaf))
def test_any_object_parses_or_raises_bad_heartbeat(body: dict[str, Any]) -> None:
    try:
        beat = Heartbeat.parse("w1", orjson.dumps(body))
    except BadHeartbeat:
        return
    assert beat.weight > 0 and type(beat.inflight) is int and beat.inflight >= 0
    assert body.get("worker", "w1") == "w1"
    assert beat.state.value == body.get("state", "up")


# -- Fleet --------------------------------------------------------------------------------


def test_empty_fleet() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    assert fleet.healthy("default") == {}
    assert fleet.views(0) == []
    assert fleet.tick(1e9) == set()


def test_up_then_same_again_changes_once() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    assert fleet.apply(hb("w1"), 0) == {"default"}
    assert fleet.healthy("default") == {"w1": 1.0}
    assert fleet.apply(hb("w1"), 1) == set()
    assert fleet.apply(hb("w2", weight=2), 1) == {"default"}
    assert fleet.healthy("default") == {"w1": 1.0, "w2": 2.0}
    assert fleet.apply(hb("w2", weight=3), 2) == {"default"}
    assert fleet.healthy("default") == {"w1": 1.0, "w2": 3.0}
    assert fleet.apply(hb("w2", weight=3, inflight=9), 2) == set()  # load is not membership
    w2 = view(fleet, "w2", 2)
    assert w2 is not None and (w2.pool, w2.inflight, w2.weight, w2.last_seen) == ("default", 9, 3.0, 2)


@pytest.mark.parametrize(("state", "seen"), [("draining", Health.DRAINING), ("down", Health.DOWN)])
def test_draining_and_down_leave_the_healthy_set(state: str, seen: Health) -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1"), 0)
    fleet.apply(hb("w2"), 0)
    assert fleet.apply(hb("w1", state=state), 1) == {"default"}
    assert fleet.healthy("default") == {"w2": 1.0}
    assert health(fleet, 1) == {"w1": seen, "w2": Health.UP}
    assert fleet.apply(hb("w1"), 2) == {"default"}  # and back
    assert fleet.healthy("default") == {"w1": 1.0, "w2": 1.0}


def test_empty_payload_takes_a_worker_down() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1"), 0)
    assert fleet.apply(Heartbeat.parse("w1", b""), 1) == {"default"}
    assert fleet.healthy("default") == {}
    assert health(fleet, 1) == {"w1": Health.DOWN}


def test_timeout_boundary() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1"), 10.0)
    assert fleet.tick(15.999) == set()
    assert fleet.healthy("default") == {"w1": 1.0}
    assert health(fleet, 15.999) == {"w1": Health.UP}
    assert fleet.tick(16.0) == {"default"}  # exactly `timeout` after the heartbeat: unhealthy
    assert fleet.healthy("default") == {}
    assert health(fleet, 16.0) == {"w1": Health.TIMEOUT}
    assert fleet.tick(17.0) == set()
    assert fleet.apply(hb("w1"), 18.0) == {"default"}  # a late heartbeat brings it back
    assert fleet.healthy("default") == {"w1": 1.0}


def test_timeout_only_for_up_workers() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1", state="draining"), 0)
    fleet.apply(hb("w2", state="down"), 0)
    assert health(fleet, 30) == {"w1": Health.DRAINING, "w2": Health.DOWN}


def test_only_the_stale_worker_times_out() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1"), 0)
    fleet.apply(hb("w2"), 3)
    assert fleet.tick(6) == {"default"}
    assert fleet.healthy("default") == {"w2": 1.0}
    assert fleet.tick(9) == {"default"}
    assert fleet.healthy("default") == {}


def test_expiry_forgets_the_worker() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1", inflight=4), 0)
    fleet.apply(hb("w2", state="draining"), 0)
    assert fleet.tick(10) == {"default"}  # w1 times out
    fleet.apply(hb("w3"), 55)
    assert fleet.tick(59.9) == set()
    assert {v.worker for v in fleet.views(59.9)} == {"w1", "w2", "w3"}
    assert fleet.tick(60.0) == set()  # w1 had already timed out: the healthy set does not change
    assert {v.worker for v in fleet.views(60.0)} == {"w3"}
    assert fleet.healthy("default") == {"w3": 1.0}


def test_expiry_of_a_still_healthy_worker_when_timeout_equals_expire() -> None:
    fleet = Fleet(6, 6)
    fleet.apply(hb("w1"), 0)
    assert fleet.tick(6) == {"default"}
    assert fleet.views(6) == []
    assert fleet.healthy("default") == {}


def test_worker_moving_pools() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1"), 0)
    fleet.apply(hb("w2"), 0)
    assert fleet.apply(hb("w1", pool="gpu"), 1) == {"default", "gpu"}
    assert fleet.healthy("default") == {"w2": 1.0}
    assert fleet.healthy("gpu") == {"w1": 1.0}
    assert [(v.worker, v.pool) for v in fleet.views(1)] == [("w1", "gpu"), ("w2", "default")]


def test_moving_a_down_worker_changes_nothing_healthy() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1", state="down"), 0)
    assert fleet.apply(hb("w1", pool="gpu", state="down"), 1) == set()


def test_static_weight_overrides() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE, pools={"default": pool("default", w1=3.0), "gpu": pool("gpu", w2=5.0)})
    fleet.apply(hb("w1", weight=1), 0)
    fleet.apply(hb("w2", weight=2), 0)  # the override is for pool gpu, not default
    assert fleet.healthy("default") == {"w1": 3.0, "w2": 2.0}
    assert fleet.apply(hb("w1", weight=7), 1) == set()  # the override hides the change
    assert {v.worker: v.weight for v in fleet.views(1)} == {"w1": 3.0, "w2": 2.0}
    fleet.apply(hb("w2", pool="gpu", weight=2), 2)
    assert fleet.healthy("gpu") == {"w2": 5.0}
    fleet.apply(hb("w1", pool="gpu", weight=2), 2)
    assert fleet.healthy("gpu") == {"w1": 2.0, "w2": 5.0}


def test_views() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w2", pool="gpu", weight=2, inflight=3), 1)
    fleet.apply(hb("w1"), 4)
    fleet.apply(hb("w3", state="draining"), 4)
    assert fleet.views(8) == [
        WorkerView("w1", "default", Health.UP, 1.0, 0, 4),
        WorkerView("w2", "gpu", Health.TIMEOUT, 2.0, 3, 1),
        WorkerView("w3", "default", Health.DRAINING, 1.0, 0, 4),
    ]


events = st.lists(st.tuples(
    st.sampled_from(["w1", "w2", "w3"]),
    st.sampled_from([None, "up", "draining", "down"]),  # None: a tick, no heartbeat
    st.sampled_from(["default", "gpu"]),
    st.floats(0, 10),
), max_size=30)


@properties
@given(events)
def test_healthy_set_follows_the_rule(steps: list[tuple[str, str | None, str, float]]) -> None:
    """A worker is healthy iff its last heartbeat said up and is younger than the timeout."""
    fleet = Fleet(TIMEOUT, EXPIRE)
    now = 0.0
    last: dict[str, tuple[str, str, float]] = {}
    for worker, state, pool, dt in steps:
        now += dt
        before = {p: dict(fleet.healthy(p)) for p in ("default", "gpu")}
        if state is None:
            changed = fleet.tick(now)
        else:
            changed = fleet.apply(hb(worker, state=state, pool=pool), now)
            last[worker] = (state, pool, now)
        for p in ("default", "gpu"):
            expected = {w for w, (s, wp, t) in last.items() if wp == p and s == "up" and now - t < TIMEOUT}
            if state is None or p in {pool, *changed}:
                assert set(fleet.healthy(p)) == expected
            assert (p in changed) == (dict(fleet.healthy(p)) != before[p])
        counted = {p: Counter(v.health.value for v in fleet.views(now) if v.pool == p) for p in ("default", "gpu")}
        assert fleet.census().states == {p: {h.value: n[h.value] for h in Health} for p, n in counted.items() if n}


# -- slow start ----------------------------------------------------------------------------------


def test_slow_start_ramps_a_new_worker_from_a_tenth_to_its_full_weight() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE, pools={"default": pool("default", slow_start=27.0)})
    fleet.apply(hb("w1", weight=2), 0)
    seen = []
    for now in range(0, 31, 3):
        fleet.apply(hb("w1", weight=2), now)  # heartbeats keep coming: they do not restart the ramp
        fleet.tick(now)
        seen.append(fleet.healthy("default")["w1"])
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.0])


def test_slow_start_changes_the_pool_in_steps_only() -> None:
    fleet = Fleet(60.0, 600.0, pools={"default": pool("default", slow_start=9.0)})
    fleet.apply(hb("w1"), 0)
    changes = [now / 10 for now in range(1, 120) if fleet.tick(now / 10)]
    assert changes == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])  # 20% ... 100%


def test_a_returning_worker_ramps_again_and_the_others_do_not() -> None:
    fleet = Fleet(60.0, 600.0, pools={"default": pool("default", slow_start=10.0)})
    fleet.apply(hb("w1"), 0)
    fleet.apply(hb("w2"), 0)
    fleet.tick(20)
    assert fleet.healthy("default") == {"w1": 1.0, "w2": 1.0}
    fleet.apply(hb("w1", state="down"), 21)
    fleet.apply(hb("w1"), 22)
    fleet.tick(22)
    assert fleet.healthy("default") == {"w1": 0.1, "w2": 1.0}
    fleet.tick(32)
    assert fleet.healthy("default") == {"w1": 1.0, "w2": 1.0}


@pytest.mark.parametrize("weight", [5e-324, 1e-320, 1e300, 1e308, 1.7976931348623157e308])
def test_slow_start_ramps_any_weight_to_a_valid_one(weight: float) -> None:
    """No step of the ramp overflows to infinity or underflows to 0, which balancers refuse."""
    fleet = Fleet(60.0, 600.0, pools={"default": pool("default", slow_start=9.0)})
    fleet.apply(hb("w1", weight=weight), 0)
    balancer = create("random")
    for now in range(11):
        fleet.tick(now)
        ramped = fleet.healthy("default")["w1"]
        assert 0 < ramped <= weight
        assert ramped == pytest.approx(weight * (min(now + 1, 10) / 10)) or weight < 1e-300  # denormals: coarse
        balancer.update(fleet.healthy("default"))
    assert ramped == weight


def test_without_slow_start_the_weight_is_whole_at_once() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE, pools={"default": pool("default")})
    fleet.apply(hb("w1", weight=3), 0)
    assert fleet.healthy("default") == {"w1": 3.0}


def test_a_will_keeps_the_worker_in_its_pool() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1", pool="edge"), 0)
    fleet.apply(Heartbeat.parse("w1", orjson.dumps({"worker": "w1", "state": "down"})), 1)
    assert [(v.worker, v.pool, v.health) for v in fleet.views(1)] == [("w1", "edge", Health.DOWN)]
    fleet.apply(Heartbeat.parse("w1", b""), 2)  # a cleared retained heartbeat
    assert [v.pool for v in fleet.views(2)] == ["edge"]
    assert fleet.take_departures()[0].pool == "edge"


# -- cost flat in the size of the fleet ------------------------------------------------------------


def count_looks(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the fleet works out a worker's health or weight: its unit of work per worker."""
    looks: Counter[str] = Counter()
    for name in ("_health", "_weight"):
        original: Callable[..., Any] = getattr(Fleet, name)

        def counted(self: Fleet, *args: Any, _original: Callable[..., Any] = original, _name: str = name) -> Any:
            looks[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(Fleet, name, counted)
    return looks


def big_fleet(workers: int) -> Fleet:
    fleet = Fleet(TIMEOUT, EXPIRE)
    for i in range(workers):
        fleet.apply(hb(f"w{i}"), i / workers)
    return fleet


def test_a_heartbeat_that_changes_only_the_load_looks_at_no_other_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = big_fleet(2000)
    snapshot = fleet.healthy("default")
    looks = count_looks(monkeypatch)
    for i in range(100):
        assert fleet.apply(hb(f"w{i}", inflight=i), 2.0) == set()
    assert looks.total() == 0
    assert fleet.healthy("default") is snapshot  # not rebuilt: balancers are not handed it again
    assert view(fleet, "w7", 2.0) == WorkerView("w7", "default", Health.UP, 1.0, 7, 2.0)


def test_a_heartbeat_that_changes_membership_looks_at_its_worker_only(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = big_fleet(2000)
    looks = count_looks(monkeypatch)
    assert fleet.apply(hb("w5", state="draining"), 2.0) == {"default"}
    assert fleet.apply(hb("new"), 2.0) == {"default"}
    assert fleet.apply(hb("w6", weight=3), 2.0) == {"default"}
    assert looks.total() <= 3
    assert len(fleet.healthy("default")) == 2000 and fleet.healthy("default")["w6"] == 3.0


def test_a_tick_looks_only_at_the_workers_time_has_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = big_fleet(2000)  # w0 beat at 0.0, w1999 at almost 1.0
    looks = count_looks(monkeypatch)
    for now in (2.0, 2.25, 2.5, 5.75):
        assert fleet.tick(now) == set()
    assert looks.total() == 0
    assert fleet.tick(TIMEOUT + 0.1) == {"default"}  # those that beat by 0.1 (w0 ... w200) time out, only they
    assert looks["_health"] == 201
    assert len(fleet.healthy("default")) == 1799


def test_the_healthy_snapshot_cannot_be_changed_by_its_reader() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1"), 0)
    snapshot = fleet.healthy("default")
    with pytest.raises(TypeError):
        snapshot["w2"] = 1.0  # type: ignore[index]
    fleet.apply(hb("w2"), 1)
    assert snapshot == {"w1": 1.0} and fleet.healthy("default") == {"w1": 1.0, "w2": 1.0}


def test_the_census_counts_workers_by_pool_and_state_as_they_change() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1"), 0)
    fleet.apply(hb("w2", pool="gpu"), 3)
    fleet.apply(hb("w3", state="draining"), 3)
    assert fleet.census().states == {"default": {"up": 1, "draining": 1, "down": 0, "timeout": 0},
                                     "gpu": {"up": 1, "draining": 0, "down": 0, "timeout": 0}}
    fleet.tick(TIMEOUT)
    assert fleet.census().states["default"] == {"up": 0, "draining": 1, "down": 0, "timeout": 1}
    fleet.tick(EXPIRE + 3)
    assert fleet.census() == fleet.census().__class__(0, {}, {})


# -- a bounded fleet -------------------------------------------------------------------------------


def test_a_full_pool_refuses_new_ids_and_counts_them() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE, pools={"default": PoolSettings("default", max_workers=2)})
    fleet.apply(hb("w1"), 0)
    fleet.apply(hb("w2", state="down"), 0)  # down counts: it is kept until it expires
    for i in range(3):
        with pytest.raises(FleetFull, match=r"pools.default.max_workers") as refused:
            fleet.apply(hb(f"fake{i}"), 1)
    assert refused.value.pool == "default" and isinstance(refused.value, BadHeartbeat)
    assert fleet.census().refused == {("default", "max_workers"): 3}
    assert fleet.census().size == 2
    assert fleet.apply(hb("w2"), 2) == {"default"}  # the workers it keeps still beat
    assert fleet.healthy("default") == {"w1": 1.0, "w2": 1.0}
    fleet.tick(EXPIRE + 1)  # w1 expires: room for one more
    assert fleet.apply(hb("w3"), EXPIRE + 1) == {"default"}


def test_moving_into_a_full_pool_is_refused_and_the_worker_stays_where_it_was() -> None:
    pools = {"default": PoolSettings("default"), "gpu": PoolSettings("gpu", max_workers=1)}
    fleet = Fleet(TIMEOUT, EXPIRE, pools=pools)
    fleet.apply(hb("g1", pool="gpu"), 0)
    fleet.apply(hb("w1"), 0)
    with pytest.raises(FleetFull):
        fleet.apply(hb("w1", pool="gpu"), 1)
    assert fleet.healthy("default") == {"w1": 1.0} and fleet.healthy("gpu") == {"g1": 1.0}


def test_the_pools_the_config_does_not_name_share_one_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mqttlb.core.pool.DEFAULT_MAX_WORKERS", 3)
    fleet = Fleet(TIMEOUT, EXPIRE, pools={"default": PoolSettings("default")})
    for i in range(3):
        fleet.apply(hb(f"w{i}", pool=f"made-up-{i}"), 0)
    with pytest.raises(FleetFull) as refused:
        fleet.apply(hb("w9", pool="made-up-9"), 0)
    assert refused.value.pool == UNNAMED_POOLS
    assert fleet.census().refused == {(UNNAMED_POOLS, "max_workers"): 1}
    assert fleet.apply(hb("d1"), 0) == {"default"}  # a named pool has a budget of its own


# -- sessions and departures, for reclaim ----------------------------------------------------------


def will(worker: str = "w1") -> Heartbeat:
    return Heartbeat.parse(worker, orjson.dumps({"worker": worker, "state": "down"}))


def test_session_parsed() -> None:
    assert hb(session="w1-session").session == "w1-session"
    assert hb(session=None).session is None
    assert hb().session is None and will().session is None


@pytest.mark.parametrize("session", [7, True, "", "a/b", "a+", "#", "s\x00", "s\x1f", ["s"], {"s": 1},
                                     "x" * (MAX_KEY_BYTES + 1)])
def test_bad_session_refused(session: object) -> None:
    with pytest.raises(BadHeartbeat, match="session"):
        Heartbeat.parse("w1", orjson.dumps({"session": session}))


@properties
@given(st.dictionaries(st.sampled_from(["session", "state", "x"]), json_leaf | st.text(max_size=6)))
def test_any_session_parses_as_a_client_id_or_raises_bad_heartbeat(body: dict[str, Any]) -> None:
    try:
        beat = Heartbeat.parse("w1", orjson.dumps(body))
    except BadHeartbeat:
        return
    assert beat.session == body.get("session")
    assert beat.session is None or key_problem(beat.session) is None


def test_a_will_keeps_the_session_the_worker_named() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1", session="s1", weight=2.5, inflight=3), 0)
    fleet.assigned("w1")
    fleet.apply(will(), 1)
    assert fleet.take_departures() == [Departure("w1", "default", Health.DOWN, 4, "s1", 2.5)]
    fleet.apply(Heartbeat.parse("w1", b""), 2)  # a cleared retained heartbeat: still the same session
    fleet.apply(hb("w1", session="s1"), 3)
    fleet.apply(Heartbeat.parse("w1", b""), 4)
    assert [d.session for d in fleet.take_departures()] == ["s1"]


def test_a_worker_first_heard_gone_with_a_session_departs_with_its_devices_moved_on() -> None:
    """A router that starts after a worker died hears only its retained will: what its session holds is still to
    be reclaimed, and since its devices went elsewhere long ago, none waits for that."""
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1", state="down", session="s1"), 0)
    fleet.apply(hb("w2", state="down"), 0)  # nothing named to reclaim
    fleet.apply(hb("w3", session="s3"), 0)  # up: no departure
    assert fleet.take_departures() == [Departure("w1", "default", Health.DOWN, 0, "s1", 1.0, drained=True)]
    fleet.apply(hb("w1", state="down", session="s1"), 1)  # its will again: the same departure, not another
    assert fleet.take_departures() == []


def test_a_worker_back_without_a_session_departs_without_one() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1", session="s1"), 0)
    fleet.apply(hb("w1"), 1)  # restarted with a clean session
    fleet.apply(will(), 2)
    [departure] = fleet.take_departures()
    assert departure.session is None


def test_a_timed_out_worker_departs_with_its_session() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1", session="s1", weight=3), 0)
    fleet.tick(TIMEOUT)
    assert fleet.take_departures() == [Departure("w1", "default", Health.TIMEOUT, 0, "s1", 3.0)]


def test_a_departure_carries_the_weight_it_had_in_the_healthy_set() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE, pools={"default": pool("default", w1=5.0),
                                          "ramp": pool("ramp", slow_start=10.0)})
    fleet.apply(hb("w1", weight=2), 0)  # the pool's static weight wins
    fleet.apply(hb("r1", pool="ramp", weight=2), 0)  # a tenth of its weight, ramping
    fleet.apply(will("w1"), 0.5)
    fleet.apply(will("r1"), 0.5)
    assert [(d.worker, d.weight) for d in fleet.take_departures()] == [("w1", 5.0), ("r1", 0.2)]


def test_live() -> None:
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("silent"), -TIMEOUT)
    fleet.apply(hb("up"), 0)
    fleet.apply(hb("draining", state="draining"), 0)
    fleet.apply(hb("down", state="down"), 0)
    assert [w for w in ("up", "draining", "down", "silent", "unknown") if fleet.live(w)] == ["up", "draining"]
    fleet.tick(TIMEOUT)
    assert not fleet.live("up") and fleet.live("draining")  # timed out; draining, it only expires
    fleet.tick(EXPIRE)
    assert not fleet.live("draining")


def test_a_heartbeat_at_the_moment_its_worker_expires_makes_it_a_newcomer() -> None:
    """Time is applied first: the expired record is forgotten and the heartbeat starts a new one (it used to
    revive the forgotten record, healthy for ever and in no view, census or agenda)."""
    fleet = Fleet(TIMEOUT, EXPIRE)
    fleet.apply(hb("w1", session="s1"), 0)
    fleet.tick(TIMEOUT)
    assert [d.health for d in fleet.take_departures()] == [Health.TIMEOUT]
    assert fleet.apply(hb("w1"), EXPIRE) == {"default"}  # no tick in between
    assert [(v.worker, v.health, v.last_seen) for v in fleet.views(EXPIRE)] == [("w1", Health.UP, EXPIRE)]
    assert fleet.census().states == {"default": {"up": 1, "draining": 0, "down": 0, "timeout": 0}}
    fleet.tick(EXPIRE + TIMEOUT)
    assert fleet.healthy("default") == {} and not fleet.live("w1")
    assert [d.health for d in fleet.take_departures()] == [Health.TIMEOUT]


def test_a_session_a_live_worker_names_is_in_use() -> None:
    fleet = Fleet(6.0, 300.0)
    fleet.apply(Heartbeat("w1", session="mqttlb-worker-w1"), 0.0)
    fleet.apply(Heartbeat("w2", session="shared"), 0.0)
    assert fleet.using("mqttlb-worker-w1") == "w1" and fleet.using("shared") == "w2"
    assert fleet.using("nobody's") is None
    fleet.apply(Heartbeat("w2", state=WorkerState.DOWN), 1.0)  # its will: the session is no longer in use
    assert fleet.using("shared") is None
    fleet.apply(Heartbeat("w3", session="mqttlb-worker-w1"), 1.0)  # a second worker naming w1's session
    assert fleet.using("mqttlb-worker-w1") == "w1"


def test_a_session_stays_in_use_while_any_live_worker_names_it() -> None:
    """A worker's heartbeat names a live worker's session, then goes down: the session was 'no longer in use' (the
    last to name it had gone), so the router reclaimed the live worker's session, kicked it off again and again,
    and routed what it took back into that session: 154 messages became 6,980 forwards."""
    fleet = Fleet(6.0, 300.0)
    fleet.apply(Heartbeat("w1", session="mqttlb-worker-w1"), 0.0)
    fleet.apply(Heartbeat("evil", session="mqttlb-worker-w1"), 0.5)
    fleet.apply(Heartbeat("evil", state=WorkerState.DOWN, session="mqttlb-worker-w1"), 1.0)
    [departure] = [d for d in fleet.take_departures() if d.worker == "evil"]
    assert departure.session == "mqttlb-worker-w1"
    assert fleet.using("mqttlb-worker-w1") == "w1"  # so the departure's reclaim is refused
    fleet.apply(Heartbeat("w1", session="mqttlb-worker-w1-b"), 2.0)  # w1 moves to another session
    assert fleet.using("mqttlb-worker-w1") is None
    assert fleet.using("mqttlb-worker-w1-b") == "w1"
    fleet.tick(400.0)  # both expire
    assert fleet._sessions == {}
