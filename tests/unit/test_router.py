"""The routing decision with a fake clock: message in, actions out; no broker, no sleeping."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from mqttlb.core.config import Config, parse
from mqttlb.core.pool import Departure, Fleet, FleetFull, Health
from mqttlb.core.router import DeadLetter, Forward, Message, Router
from mqttlb.errors import BadHeartbeat

ROUTES: list[dict[str, Any]] = [
    {"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device", "algorithm": "consistent_hash"},
    {"name": "logs", "match": "devices/+/logs/#", "algorithm": "round_robin", "qos": 0},
    {"name": "events", "match": "events/+", "key": "payload.meta.id"},
    {"name": "jobs", "match": "jobs/{job}", "algorithm": "round_robin", "pool": "gpu"},
]
HOLD, TIMEOUT, EXPIRE, MAX_PAYLOAD = 10.0, 6.0, 60.0, 1000
DEVICES = [f"devices/d{i}/telemetry" for i in range(300)]


def make_config(**overrides: Any) -> Config:
    data: dict[str, Any] = {
        "routes": ROUTES,
        "heartbeat": {"timeout": "6s", "expire": "1m"},
        "dead_letter": {"hold": "10s", "max_payload": MAX_PAYLOAD},
    }
    data.update(overrides)
    return parse(data, base_dir=Path("."), environ={})


def make_router(**overrides: Any) -> Router[int]:
    config = make_config(**overrides)
    fleet = Fleet(config.heartbeat.timeout, config.heartbeat.expire, config.pools)
    return Router(config, fleet, random.Random(1))


def beat(router: Router[int], worker: str, now: float, **fields: Any) -> list[Any]:
    return router.heartbeat(worker, orjson.dumps({"worker": worker, **fields}), now)


def msg(topic: str, payload: bytes = b"{}", ref: int = 0, now: float = 0.0) -> Message[int]:
    return Message(topic, payload, ref, now)


def forward(router: Router[int], topic: str, payload: bytes = b"{}", now: float = 0.0) -> Forward[int]:
    [action] = router.route(msg(topic, payload, now=now))
    assert isinstance(action, Forward), action
    return action


def workers_of(router: Router[int], topics: list[str], now: float = 0.0) -> dict[str, str]:
    return {t: forward(router, t, now=now).worker for t in topics}


def refs(actions: list[Any]) -> list[int]:
    return [a.message.ref for a in actions]


# -- forwarding ------------------------------------------------------------------------------


def test_config_is_what_the_tests_assume() -> None:
    config = make_config()
    assert [r.name for r in config.routes] == ["telemetry", "logs", "events", "jobs"]
    assert (config.dead_letter.hold, config.dead_letter.max_payload) == (HOLD, MAX_PAYLOAD)
    assert (config.heartbeat.timeout, config.heartbeat.expire) == (TIMEOUT, EXPIRE)


def test_forward_topic_payload_qos_and_key() -> None:
    router = make_router()
    beat(router, "w1", 0)
    payload = b"\x00\xff raw bytes, not JSON"
    message = msg("devices/d42/telemetry", payload, ref=7)
    [action] = router.route(message)
    assert isinstance(action, Forward)
    assert action.topic == "mqttlb/workers/w1/in/devices/d42/telemetry"
    assert action.message is message and action.message.payload == payload
    assert (action.qos, action.route, action.key, action.worker) == (1, "telemetry", "d42", "w1")


def test_forward_of_a_multi_level_topic_with_qos_0() -> None:
    router = make_router()
    beat(router, "w1", 0)
    action = forward(router, "devices/d1/logs/app/error", b"boom")
    assert action.topic == "mqttlb/workers/w1/in/devices/d1/logs/app/error"
    assert (action.qos, action.route, action.key) == (0, "logs", None)


def test_payload_key_route() -> None:
    router = make_router()
    beat(router, "w1", 0)
    beat(router, "w2", 0)
    payload = b'{"meta": {"id": "dev-9"}, "v": 1}'
    first = forward(router, "events/e1", payload)
    assert first.key == "dev-9" and first.route == "events" and first.message.payload == payload
    assert {forward(router, f"events/e{i}", payload).worker for i in range(20)} == {first.worker}


def test_forward_template_with_more_placeholders() -> None:
    routes = [{"name": "t", "match": "devices/{device}/telemetry", "key": "device",
               "forward": "out/{pool}/{worker}/{route}/{key}/{device}/{topic}"}]
    router = make_router(routes=routes)
    beat(router, "w1", 0)
    assert forward(router, "devices/d1/telemetry").topic == "out/default/w1/t/d1/d1/devices/d1/telemetry"


def test_consistent_hash_sticks_and_round_robin_turns() -> None:
    router = make_router()
    for w in ("w1", "w2", "w3"):
        beat(router, w, 0)
    first = workers_of(router, DEVICES)
    assert set(first.values()) == {"w1", "w2", "w3"}
    assert workers_of(router, DEVICES) == first
    logs = [forward(router, "devices/d1/logs/x").worker for _ in range(6)]
    assert logs == ["w1", "w2", "w3", "w1", "w2", "w3"]


def test_same_inputs_same_decisions() -> None:
    def run() -> list[str]:
        router = make_router()
        for w in ("w1", "w2", "w3"):
            beat(router, w, 0)
        return [forward(router, t).worker for t in DEVICES[:50]]
    assert run() == run()


def test_first_matching_route_wins() -> None:
    routes = [{"name": "specific", "match": "devices/special/telemetry", "algorithm": "round_robin", "qos": 0},
              *ROUTES]
    router = make_router(routes=routes)
    beat(router, "w1", 0)
    assert forward(router, "devices/special/telemetry").route == "specific"
    assert forward(router, "devices/other/telemetry").route == "telemetry"


def test_static_weights_from_config_reach_the_balancer() -> None:
    routes = [{"name": "wrr", "match": "devices/+/x", "algorithm": "weighted_round_robin"}]
    router = make_router(routes=routes, pools={"default": {"workers": {"a": {"weight": 5}}}})
    for w in ("a", "b", "c"):
        beat(router, w, 0)  # heartbeats say weight 1 each
    picks = [forward(router, "devices/d/x").worker for _ in range(7)]
    assert "".join(picks) == "aabacaa"  # nginx smooth WRR with 5, 1, 1


def test_least_connections_uses_heartbeat_inflight() -> None:
    routes = [{"name": "lc", "match": "devices/+/x", "algorithm": "least_connections"}]
    router = make_router(routes=routes)
    beat(router, "w1", 0, inflight=10)
    beat(router, "w2", 0, inflight=0)
    assert [forward(router, "devices/d/x").worker for _ in range(3)] == ["w2", "w2", "w2"]
    beat(router, "w2", 1, inflight=50)
    assert forward(router, "devices/d/x").worker == "w1"


def test_refused_forward_becomes_a_dead_letter() -> None:
    router = make_router()
    beat(router, "w1", 0)
    action = forward(router, "devices/d1/telemetry", b"p")
    dead = router.refused(action, "Not authorized (0x87)")
    assert (dead.reason, dead.route, dead.keep_payload) == ("refused", "telemetry", True)
    assert dead.detail == "the broker refused the forward to 'w1': Not authorized (0x87)"
    assert dead.topic == "mqttlb/deadletter/refused/devices/d1/telemetry"
    assert dead.message is action.message


# -- dead letters ------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "payload", "reason", "route"), [
    ("events/e1", b'{"meta": {"id": "a/b"}}', "bad_key", "events"),
    ("events/e1", b'{"meta": {"id": "d\\u0001"}}', "bad_key", "events"),
    ("events/e1", b'{"meta": {"id": "a+b"}}', "bad_key", "events"),
    ("events/e1", b'{"meta": {"id": ""}}', "bad_key", "events"),
    ("events/e1", b'{"meta": {"id": true}}', "bad_key", "events"),
    ("events/e1", b'{"meta": {}}', "bad_key", "events"),
    ("events/e1", b'{"meta": "x"}', "bad_key", "events"),
    ("events/e1", b"[1, 2]", "bad_key", "events"),
    ("events/e1", b"not json", "bad_key", "events"),
    ("events/e1", b"\xff\xfe", "bad_key", "events"),
    ("events/e1", b"[" * 1000, "bad_key", "events"),
    ("events/e1", b"[" * 100_000, "too_large", "events"),
    ("events/e1", b"x" * (MAX_PAYLOAD + 1), "too_large", "events"),
    ("devices/d1/telemetry", b"x" * (MAX_PAYLOAD + 1), "too_large", "telemetry"),
    ("other/x", b"{}", "no_route", None),
    ("devices/d1", b"{}", "no_route", None),
    ("devices/d1/telemetry/extra", b"{}", "no_route", None),
])
@pytest.mark.parametrize("pool_up", [True, False])
def test_dead_letters(topic: str, payload: bytes, reason: str, route: str | None, pool_up: bool) -> None:
    router = make_router()
    if pool_up:
        beat(router, "w1", 0)
    message = msg(topic, payload, ref=3)
    [action] = router.route(message)  # never held: these cannot wait for a worker
    assert isinstance(action, DeadLetter)
    assert action.reason == reason
    assert action.route == route
    assert action.topic == f"mqttlb/deadletter/{reason}/{topic}"
    assert action.message is message
    assert action.keep_payload == (reason != "too_large")
    assert action.detail
    assert beat(router, "w9", 1) == []  # nothing was held besides


def test_payload_at_the_limit_is_forwarded() -> None:
    router = make_router()
    beat(router, "w1", 0)
    assert forward(router, "devices/d1/telemetry", b"x" * MAX_PAYLOAD).worker == "w1"


def test_size_is_checked_before_json_is_parsed() -> None:
    router = make_router()
    beat(router, "w1", 0)
    [action] = router.route(msg("events/e1", b'{"meta": {"id": "ok"}, "pad": "' + b"x" * MAX_PAYLOAD + b'"}'))
    assert isinstance(action, DeadLetter) and action.reason == "too_large"


@pytest.mark.parametrize(("topic", "payload_size", "size", "route", "detail"), [
    ("devices/d1/telemetry", 200 << 20, (200 << 20) + 30, "telemetry", f"{200 << 20} bytes > {MAX_PAYLOAD}"),
    ("other/x", 200 << 20, (200 << 20) + 30, None, f"{200 << 20} bytes > {MAX_PAYLOAD}"),
    ("events/e1", 10, 300_000, "events", "a message of 300000 bytes, 299990 of them topic and properties"),
])
def test_a_message_whose_payload_was_never_held_is_a_too_large_dead_letter(
        topic: str, payload_size: int, size: int, route: str | None, detail: str) -> None:
    """The wire reads past a body too long to forward and hands on only its head (``mqtt.Oversized``)."""
    router = make_router()
    beat(router, "w1", 0)
    message = msg(topic, b"", ref=3)
    [action] = router.oversized(message, payload_size, size)
    assert isinstance(action, DeadLetter) and action.message is message
    assert (action.reason, action.route, action.detail, action.keep_payload) == ("too_large", route, detail, False)
    assert action.topic == f"mqttlb/deadletter/too_large/{topic}"


@pytest.mark.parametrize("payload", [b"[" * 100_000, b'{"a":' * 100_000, b'{"meta":' * 100_000])
def test_deeply_nested_json_is_a_bad_key(payload: bytes) -> None:
    router = make_router(dead_letter={"hold": "10s", "max_payload": "1MiB"})
    beat(router, "w1", 0)
    [action] = router.route(msg("events/e1", payload))
    assert isinstance(action, DeadLetter) and action.reason == "bad_key"


def test_one_bad_message_does_not_stop_the_others() -> None:
    router = make_router()
    beat(router, "w1", 0)
    actions = [router.route(msg(t, p))[0] for t, p in [
        ("events/e1", b'{"meta": {"id": "a/b"}}'), ("devices/d1/telemetry", b"ok"), ("nowhere", b""),
        ("devices/d2/telemetry", b"ok")]]
    assert [type(a).__name__ for a in actions] == ["DeadLetter", "Forward", "DeadLetter", "Forward"]


def read_of_everything() -> list[Message[int]]:
    """A read as the service hands it over: forwards, a device twice, dead letters of each kind, a held pool."""
    cases = [(t, b"{}") for t in DEVICES[:100]] + [
        ("devices/d7/telemetry", b"again"), ("events/e1", b'{"meta": {"id": "k1"}}'), ("events/e1", b"not json"),
        ("nowhere", b""), ("devices/d1/telemetry", b"x" * (MAX_PAYLOAD + 1)), ("jobs/j1", b"{}"),
        ("devices/d1/logs/x", b"{}")]
    return [msg(topic, payload, ref=i) for i, (topic, payload) in enumerate(cases)]


def test_a_read_routed_together_is_decided_as_one_message_at_a_time() -> None:
    """``route_each`` picks for the read's keys together first: every decision is still the one ``route`` makes."""
    one, together = make_router(), make_router()
    for router in (one, together):
        for w in ("w1", "w2", "w3"):
            beat(router, w, 0)
    messages = read_of_everything()
    expected = [one.route(m) for m in messages]
    assert list(together.route_each(messages)) == expected
    assert [type(a[0]).__name__ if a else "held" for a in expected[100:]] == \
        ["Forward", "Forward", "DeadLetter", "DeadLetter", "DeadLetter", "held", "Forward"]


def test_a_balancer_failing_to_pick_ahead_costs_no_message(monkeypatch: pytest.MonkeyPatch) -> None:
    router = make_router()
    beat(router, "w1", 0)
    def fail(keys: object) -> None:
        raise ZeroDivisionError("bomb")
    monkeypatch.setattr(router._routes[0].balancer, "prefetch", fail)
    decided = [actions[0] for actions in router.route_each(read_of_everything()[:100])]
    assert {(type(a).__name__, a.worker) for a in decided} == {("Forward", "w1")}


def test_dead_letter_topic_with_route_placeholder() -> None:
    router = make_router(dead_letter={"topic": "dl/{route}/{reason}/{topic}", "hold": "10s"})
    [action] = router.route(msg("nowhere/x"))
    assert action.topic == "dl/none/no_route/nowhere/x"
    [action] = router.route(msg("events/e1", b"nope"))
    assert action.topic == "dl/events/bad_key/events/e1"


# -- holding while a pool is empty ------------------------------------------------------------


def test_held_then_released_in_arrival_order() -> None:
    router = make_router()
    assert router.route(msg("devices/d1/telemetry", ref=1, now=0)) == []
    assert router.route(msg("devices/d2/logs/a", ref=2, now=1)) == []
    assert router.route(msg("events/e1", b'{"meta": {"id": "x"}}', ref=3, now=2)) == []
    assert router.route(msg("devices/d1/telemetry", ref=4, now=3)) == []
    released = beat(router, "w1", 4)
    assert refs(released) == [1, 2, 3, 4]
    assert all(isinstance(a, Forward) and a.worker == "w1" for a in released)
    assert [a.topic for a in released][:2] == ["mqttlb/workers/w1/in/devices/d1/telemetry",
                                              "mqttlb/workers/w1/in/devices/d2/logs/a"]
    assert beat(router, "w2", 5) == []  # nothing left to release


def test_held_then_dead_lettered_as_no_worker_after_the_hold() -> None:
    router = make_router()
    router.route(msg("devices/d1/telemetry", b"p1", ref=1, now=0))
    router.route(msg("devices/d2/telemetry", b"p2", ref=2, now=5))
    assert router.tick(9.999) == []
    [first] = router.tick(10.0)
    assert isinstance(first, DeadLetter)
    assert (first.reason, first.route, first.message.ref, first.keep_payload) == ("no_worker", "telemetry", 1, True)
    assert first.topic == "mqttlb/deadletter/no_worker/devices/d1/telemetry"
    assert "default" in first.detail
    assert router.tick(14.9) == []
    [second] = router.tick(15.0)
    assert second.message.ref == 2 and second.message.payload == b"p2"
    assert router.tick(100) == []
    assert beat(router, "w1", 101) == []


def test_one_late_tick_dead_letters_everything_overdue_in_order() -> None:
    router = make_router()
    for i in range(5):
        router.route(msg("devices/d1/telemetry", ref=i, now=float(i)))
    actions = router.tick(12.5)
    assert refs(actions) == [0, 1, 2]
    assert all(a.reason == "no_worker" for a in actions)
    assert refs(beat(router, "w1", 13)) == [3, 4]


def test_messages_arriving_while_others_wait_stay_behind_them() -> None:
    router = make_router()
    router.route(msg("devices/d1/telemetry", ref=1, now=0))
    router.route(msg("devices/d1/telemetry", ref=2, now=1))
    assert router.tick(10) != []  # ref 1 is dead-lettered, ref 2 still waits
    assert router.route(msg("devices/d1/telemetry", ref=3, now=10)) == []
    assert router.route(msg("devices/d1/logs/x", ref=4, now=10)) == []
    assert refs(beat(router, "w1", 10.5)) == [2, 3, 4]
    assert refs(router.route(msg("devices/d1/telemetry", ref=5, now=11))) == [5]


def test_a_heartbeat_that_brings_no_healthy_worker_releases_nothing() -> None:
    router = make_router()
    router.route(msg("devices/d1/telemetry", ref=1))
    assert beat(router, "w1", 1, state="draining") == []
    assert beat(router, "w2", 1, state="down") == []
    assert beat(router, "g1", 1, pool="gpu") == []  # another pool
    assert refs(beat(router, "w1", 2)) == [1]


def test_pools_hold_independently() -> None:
    router = make_router()
    beat(router, "w1", 0)
    assert router.route(msg("jobs/j1", ref=1)) == []  # pool gpu is empty
    assert refs(router.route(msg("devices/d1/telemetry", ref=2))) == [2]  # default is not held up by gpu
    released = beat(router, "g1", 1, pool="gpu")
    assert refs(released) == [1]
    assert released[0].topic == "mqttlb/workers/g1/in/jobs/j1"


def test_messages_are_held_again_when_the_pool_empties() -> None:
    router = make_router()
    beat(router, "w1", 0)
    assert refs(router.route(msg("devices/d1/telemetry", ref=1, now=1))) == [1]
    beat(router, "w1", 2, state="down")
    assert router.route(msg("devices/d1/telemetry", ref=2, now=3)) == []
    assert router.route(msg("devices/d1/telemetry", ref=3, now=4)) == []
    assert refs(beat(router, "w2", 5)) == [2, 3]


def test_held_messages_wait_out_a_timed_out_pool() -> None:
    router = make_router()
    beat(router, "w1", 0)
    assert router.tick(TIMEOUT) == [Departure("w1", "default", Health.TIMEOUT, 0)]  # nothing was waiting
    assert router.route(msg("devices/d1/telemetry", ref=1, now=7)) == []
    assert refs(beat(router, "w1", 8)) == [1]


def test_past_max_held_the_oldest_is_dead_lettered_while_another_pool_has_workers() -> None:
    router = make_router(router={"max_inflight": 10, "max_held": 3})
    beat(router, "w1", 0)  # pool default has a worker; pool gpu has none
    for ref in range(1, 4):
        assert router.route(msg(f"jobs/j{ref}", ref=ref, now=ref)) == []
    [evicted] = router.route(msg("jobs/j4", ref=4, now=4))
    assert isinstance(evicted, DeadLetter)
    assert (evicted.reason, evicted.route, evicted.message.ref) == ("no_worker", "jobs", 1)
    assert "router.max_held" in evicted.detail
    assert router.held == 3
    assert refs(router.route(msg("devices/d1/telemetry", ref=5, now=5))) == [5]  # default keeps flowing
    departed, *released = beat(router, "g1", 6, pool="gpu")  # a heartbeat applies what time did first
    assert departed == Departure("w1", "default", Health.TIMEOUT, 1)
    assert refs(released) == [2, 3, 4]


def test_with_no_worker_anywhere_held_messages_are_not_evicted() -> None:
    router = make_router(router={"max_inflight": 10, "max_held": 3})
    for ref in range(10):
        assert router.route(msg("devices/d1/telemetry", ref=ref, now=0)) == []
    assert router.held == 10  # nothing else could use the window: the rest waits at the broker
    assert refs(beat(router, "w1", 1)) == list(range(10))


def test_past_max_held_bytes_the_oldest_is_dead_lettered_while_another_pool_has_workers() -> None:
    """1,000 messages of 250 KB held for a pool with no worker took the router to 296 MiB: a memory limit under
    that killed it, and the broker sent the same messages to the next router. Now payload bytes are bounded too."""
    router = make_router(router={"max_held_bytes": "1MiB"}, dead_letter={"max_payload": "256KiB"})
    beat(router, "w1", 0)
    big = b"x" * 256 * 1024
    for ref in range(1, 4):
        assert router.route(msg(f"jobs/j{ref}", big, ref=ref, now=ref)) == []
    assert not router.over_byte_budget()  # 768 KiB
    [evicted] = router.route(msg("jobs/j4", big, ref=4, now=4))  # 1 MiB: the oldest makes room
    assert isinstance(evicted, DeadLetter)
    assert (evicted.reason, evicted.message.ref) == ("no_worker", 1)
    assert "router.max_held_bytes" in evicted.detail
    assert router.held == 3 and not router.over_byte_budget()
    assert router.route(msg("jobs/small", ref=5, now=5)) == []  # a small one fits beside them
    assert router.held == 4


def test_with_no_worker_anywhere_past_max_held_bytes_nothing_more_is_taken_in() -> None:
    router = make_router(router={"max_held_bytes": "1MiB"}, dead_letter={"max_payload": "256KiB"})
    for ref in range(4):
        assert router.route(msg("devices/d1/telemetry", b"x" * 256 * 1024, ref=ref, now=0)) == []
    assert router.over_byte_budget()  # the service reads no more device messages: the broker keeps them
    assert refs(beat(router, "w1", 1)) == [0, 1, 2, 3]
    assert not router.over_byte_budget()


class CountedLen(bytes):
    """A payload that counts how often its length is taken."""

    taken = 0

    def __len__(self) -> int:
        CountedLen.taken += 1
        return super().__len__()


def test_holding_a_message_costs_the_same_however_many_are_held() -> None:
    """The held messages' number and bytes are kept, not summed: with 30,000 held for a pool without workers and
    a window of 65,535, summing cost 1.6 ms for each message held, and a turn of every pool's messages with it."""
    router = make_router(router={"max_inflight": 65535, "max_held_bytes": "1MiB"},
                         dead_letter={"max_payload": "256KiB"})
    beat(router, "w1", 0)  # another pool has a worker: each message held checks the limits
    CountedLen.taken = 0
    for ref in range(2000):
        assert router.route(msg(f"jobs/j{ref}", CountedLen(b"x" * 100), ref=ref)) == []
        assert not router.over_byte_budget()  # as the service asks, every turn
    assert router.held == 2000 and router.held_bytes == 200_000
    assert CountedLen.taken <= 10 * 2000  # summed, it was 2,000,000 and more


def test_the_held_bytes_stay_exact_whichever_way_messages_leave() -> None:
    router = make_router(router={"max_held_bytes": "1MiB"}, dead_letter={"max_payload": "256KiB"})
    before = three_workers(router)
    w2s = [t for t in DEVICES if before[t] == "w2"]
    depart(router, "w2", 1)
    for ref in range(4):  # jobs: no worker in pool gpu; the first two expire at 10 + 1
        router.route(msg(f"jobs/j{ref}", b"j" * (ref + 1) * 1000, ref=ref, now=1 if ref < 2 else 5))
    for ref in range(10, 13):  # w2's devices wait for its session to be reclaimed
        router.route(msg(w2s[ref - 10], b"w" * 100, ref=ref, now=2))
    assert (router.held, router.held_bytes) == (7, 10_000 + 300)
    beat(router, "w1", 11)
    beat(router, "w3", 11)
    expired = [a for a in router.tick(12) if isinstance(a, DeadLetter)]  # held past dead_letter.hold
    assert refs(expired) == [0, 1]
    assert (router.held, router.held_bytes) == (5, 7_000 + 300)
    assert router.forget_held(lambda ref: ref in (2, 10)) == 2
    assert (router.held, router.held_bytes) == (3, 4_000 + 200)
    assert refs(router.release_departed("w2")) == [11, 12]
    assert (router.held, router.held_bytes) == (1, 4_000)
    assert refs(router.route(msg("jobs/big", b"b" * 256 * 1024, ref=20, now=13))) == []
    assert router.held_bytes == 4_000 + 256 * 1024
    assert [m.ref for m in router.take_held()] == [3, 20]
    assert (router.held, router.held_bytes) == (0, 0)
    beat(router, "g1", 14, pool="gpu")
    assert (router.held, router.held_bytes) == (0, 0)


def test_max_held_defaults_to_half_the_window() -> None:
    router = make_router(router={"max_inflight": 8})
    beat(router, "w1", 0)
    actions = [a for ref in range(6) for a in router.route(msg("jobs/j", ref=ref))]
    assert refs(actions) == [0, 1] and router.held == 4


def test_forget_held_drops_what_the_broker_sends_again() -> None:
    router = make_router()
    for ref in range(4):
        router.route(msg("devices/d1/telemetry", ref=ref))
    assert router.forget_held(lambda ref: ref % 2 == 0) == 2
    assert router.held == 2
    assert refs(beat(router, "w1", 1)) == [1, 3]


# -- departures ------------------------------------------------------------------------------


def test_a_dead_worker_is_reported_with_what_it_held() -> None:
    router = make_router()
    beat(router, "w1", 0, inflight=5)
    for i in range(3):
        assert forward(router, f"devices/d{i}/telemetry").worker == "w1"
    actions = router.heartbeat("w1", orjson.dumps({"worker": "w1", "state": "down"}), 1)  # its will
    assert actions == [Departure("w1", "default", Health.DOWN, 8)]
    assert router.tick(100) == []  # reported once


def test_a_heartbeat_resets_what_was_routed_since_the_last_one() -> None:
    router = make_router()
    beat(router, "w1", 0, inflight=5)
    forward(router, "devices/d1/telemetry")
    beat(router, "w1", 1, inflight=2)
    forward(router, "devices/d1/telemetry")
    assert router.tick(1 + TIMEOUT) == [Departure("w1", "default", Health.TIMEOUT, 3)]
    assert beat(router, "w1", 8, state="down") == []  # silent already: not reported twice


def test_a_drained_worker_leaves_holding_nothing() -> None:
    router = make_router()
    beat(router, "w1", 0, inflight=4)
    beat(router, "w2", 0)
    beat(router, "w1", 1, state="draining", inflight=0)
    forward(router, "devices/d1/telemetry")  # goes to w2 now
    assert beat(router, "w1", 2, state="down") == [Departure("w1", "default", Health.DOWN, 0, drained=True)]
    assert beat(router, "w3", 3, state="down") == []  # never up: nothing departed


# -- draining, timeouts and bad heartbeats ----------------------------------------------------


def test_a_draining_worker_gets_no_new_traffic() -> None:
    router = make_router()
    for w in ("w1", "w2", "w3"):
        beat(router, w, 0)
    before = workers_of(router, DEVICES)
    assert beat(router, "w1", 1, state="draining") == []
    after = workers_of(router, DEVICES, now=1)
    assert "w1" not in after.values()
    assert all(after[t] == w for t, w in before.items() if w != "w1")  # only w1's devices move
    without_w1 = make_router()
    for w in ("w2", "w3"):
        beat(without_w1, w, 0)
    assert after == workers_of(without_w1, DEVICES)  # where they would go if w1 were gone
    assert "w1" not in {forward(router, "devices/d1/logs/x").worker for _ in range(10)}
    assert "w1" not in {forward(router, "events/e", f'{{"meta": {{"id": "k{i}"}}}}'.encode()).worker
                        for i in range(50)}


def test_a_timed_out_worker_stops_receiving_and_only_its_devices_move() -> None:
    router = make_router()
    for w in ("w1", "w2", "w3"):
        beat(router, w, 0)
    before = workers_of(router, DEVICES)
    moved = {t for t, w in before.items() if w == "w1"}
    assert moved and len(moved) < len(DEVICES)
    beat(router, "w2", 3)
    beat(router, "w3", 3)
    assert router.tick(5.999) == []
    still = workers_of(router, DEVICES, now=5.999)
    assert still == before
    router.tick(6.0)  # exactly the timeout after w1's last heartbeat
    after = workers_of(router, DEVICES, now=6.0)
    assert "w1" not in after.values()
    assert {after[t] for t in moved} <= {"w2", "w3"}
    assert all(after[t] == before[t] for t in DEVICES if t not in moved)
    assert {v.worker: v.health for v in router.fleet.views(6.0)}["w1"] is Health.TIMEOUT
    beat(router, "w1", 7)  # back: its devices come home with the next tick, when the balancers catch up
    assert "w1" not in workers_of(router, DEVICES, now=7).values()
    router.tick(7.25)
    assert workers_of(router, DEVICES, now=7.25) == before


def test_worker_moving_pools_takes_its_traffic_along() -> None:
    router = make_router()
    beat(router, "w1", 0)
    beat(router, "w2", 0)
    beat(router, "w1", 1, pool="gpu")
    assert {forward(router, t).worker for t in DEVICES[:50]} == {"w2"}
    assert forward(router, "jobs/j1").worker == "w1"


@pytest.mark.parametrize("payload", [
    b"nope", b"[]", b"null",
    orjson.dumps({"worker": "other"}),
    orjson.dumps({"weight": 0}),
    orjson.dumps({"weight": -1}),
    orjson.dumps({"weight": True}),
    orjson.dumps({"inflight": -1}),
    orjson.dumps({"inflight": 1.5}),
    orjson.dumps({"state": "sleeping"}),
    orjson.dumps({"pool": "a/b"}),
    b"x" * 20_000,
])
def test_bad_heartbeat_raises_and_changes_nothing(payload: bytes) -> None:
    router = make_router()
    beat(router, "w1", 0)
    router.route(msg("jobs/j1", ref=1))  # held for gpu
    with pytest.raises(BadHeartbeat):
        router.heartbeat("w1", payload, 1)
    assert forward(router, "devices/d1/telemetry").worker == "w1"
    with pytest.raises(BadHeartbeat):
        router.heartbeat("w1", payload, 2)
    assert refs(beat(router, "g1", 3, pool="gpu")) == [1]  # the held message still waits


@pytest.mark.parametrize("worker", ["", "w/1", "w+", "w#", "w\x01", "w\x7f"])
def test_bad_worker_id_in_heartbeat_topic(worker: str) -> None:
    router = make_router()
    with pytest.raises(BadHeartbeat):
        router.heartbeat(worker, b"{}", 0)
    assert router.fleet.views(0) == []


def test_odd_but_good_heartbeats_are_taken() -> None:
    router = make_router()
    beat(router, "w1", 0)
    router.heartbeat("w1", b"", 1)
    beat(router, "w1", 2, state="draining", interval=2, ts=1.7e9, extra=[1])
    assert [(view.worker, view.health) for view in router.fleet.views(2)] == [("w1", Health.DRAINING)]


def test_slow_start_brings_a_new_worker_its_devices_gradually() -> None:
    router = make_router(pools={"default": {"slow_start": "9s"}}, heartbeat={"timeout": "1m", "expire": "5m"})
    beat(router, "w1", 0)
    router.tick(20)
    beat(router, "w2", 20)
    shares = []
    for now in (20, 23, 26, 29):
        router.tick(now)
        shares.append(sum(w == "w2" for w in workers_of(router, DEVICES, now).values()) / len(DEVICES))
    assert shares[0] < shares[1] < shares[2] < shares[3]
    assert shares[0] < 0.15 and 0.4 < shares[3] < 0.6  # a tenth of w1's weight, then all of it


def test_a_pool_admits_only_the_worker_ids_it_allows() -> None:
    router = make_router(pools={"default": {"allow": ["w*"]}})
    with pytest.raises(BadHeartbeat, match="not allowed in pool 'default'"):
        beat(router, "intruder", 0)
    assert router.route(msg("devices/d1/telemetry", ref=1)) == []  # still no worker: held
    assert refs(beat(router, "w1", 1)) == [1]
    assert beat(router, "intruder", 2, state="down", pool="gpu") == []  # gpu allows anyone
    router.heartbeat("w1", orjson.dumps({"worker": "w1", "state": "down"}), 3)  # a will is never refused
    assert router.fleet.healthy("default") == {}


# -- reloading -----------------------------------------------------------------------------------


def test_a_reloaded_router_takes_over_the_fleet_and_the_held_messages() -> None:
    old = make_router()
    beat(old, "w1", 0)
    beat(old, "w2", 0)
    before = workers_of(old, DEVICES)
    assert old.route(msg("jobs/j1", ref=1, now=1)) == []  # pool gpu has nobody yet
    assert old.route(msg("jobs/j2", ref=2, now=2)) == []
    config = make_config(routes=[*ROUTES[:3], {**ROUTES[3], "algorithm": "random"}])
    old.fleet.reconfigure(config.heartbeat.timeout, config.heartbeat.expire, config.pools, 3)
    new: Router[int] = Router(config, old.fleet, random.Random(1))
    assert workers_of(new, DEVICES, now=3) == before  # devices keep their workers
    held = old.take_held()
    assert [m.ref for m in held] == [1, 2] and old.held == 0
    assert [a for m in held for a in new.route(m)] == []  # still nobody in gpu: held again, in order
    assert refs(beat(new, "g1", 4, pool="gpu")) == [1, 2]
    assert not [a for a in new.tick(1 + HOLD) if not isinstance(a, Departure)]  # released: nothing dead-lettered


def test_reconfigure_applies_a_new_timeout_at_once() -> None:
    router = make_router()
    beat(router, "w1", 0)
    router.fleet.reconfigure(2.0, 60.0, router.config.pools, 3)
    assert router.fleet.healthy("default") == {}


def test_a_flood_of_new_ids_beyond_max_workers_is_refused_and_routing_goes_on() -> None:
    router = make_router(pools={"default": {"max_workers": 3}})
    for worker in ("w1", "w2", "w3"):
        beat(router, worker, 0)
    for i in range(500):
        with pytest.raises(FleetFull):
            beat(router, f"fake{i}", 1)
    assert router.fleet.census().refused == {("default", "max_workers"): 500}
    assert router.fleet.healthy("default") == {"w1": 1.0, "w2": 1.0, "w3": 1.0}
    [forward] = router.route(msg("devices/d1/telemetry", now=2))
    assert isinstance(forward, Forward) and forward.worker in {"w1", "w2", "w3"}


def test_a_heartbeat_that_changes_only_the_load_hands_the_balancers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    router = make_router()
    for i in range(50):
        beat(router, f"w{i}", 0)
    updates = []
    for route in router._routes:
        monkeypatch.setattr(route.balancer, "update", updates.append)
    for i in range(50):
        assert beat(router, f"w{i}", 1, inflight=i) == []
    assert updates == []
    beat(router, "w0", 2, state="draining")
    router.tick(2)
    assert len(updates) == 3 and all("w0" not in healthy and len(healthy) == 49 for healthy in updates)


def test_workers_joining_at_once_update_the_balancers_once_a_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    router = make_router()
    beat(router, "w0", 0)
    updates: list[int] = []
    for route in router._routes:
        original = route.balancer.update
        monkeypatch.setattr(route.balancer, "update", lambda healthy, o=original: (updates.append(len(healthy)),
                                                                                   o(healthy)))
    for i in range(1, 1000):
        beat(router, f"w{i}", 0.1)
    assert updates == []  # not 999 updates over up to 1000 workers each
    router.tick(0.25)
    assert updates == [1000, 1000, 1000]  # one per route of pool default
    assert forward(router, "devices/d1/telemetry").worker in {f"w{i}" for i in range(1000)}


def test_nothing_is_routed_to_a_worker_that_left_before_the_balancers_caught_up() -> None:
    router = make_router()
    for w in ("w1", "w2"):
        beat(router, w, 0)
    gone = {forward(router, t).worker for t in DEVICES}
    assert gone == {"w1", "w2"}
    beat(router, "w1", 1, state="down")  # no tick in between
    assert {forward(router, t).worker for t in DEVICES} == {"w2"}


# -- a departed worker's devices wait for its session to be reclaimed (reclaim, rule 5) -----------------


def depart(router: Router[int], worker: str, now: float) -> Departure:
    """``worker``'s will, and the router told to keep its devices' new messages waiting (as the service does)."""
    [departure] = beat(router, worker, now, state="down")
    assert isinstance(departure, Departure)
    router.await_departed(departure.pool, departure.worker, departure.weight)
    return departure


def three_workers(router: Router[int]) -> dict[str, str]:
    beat(router, "w1", 0)
    beat(router, "w2", 0, weight=3, session="s-w2")
    beat(router, "w3", 0)
    return workers_of(router, DEVICES)


def test_a_departed_workers_devices_wait_and_the_others_do_not() -> None:
    router = make_router()
    before = three_workers(router)
    theirs = [t for t in DEVICES if before[t] == "w2"]
    assert depart(router, "w2", 1) == Departure("w2", "default", Health.DOWN, len(theirs), "s-w2", 3.0)
    assert 0 < len(theirs) < len(DEVICES)
    for ref, topic in enumerate(DEVICES):
        actions = router.route(msg(topic, ref=ref, now=2))
        if before[topic] == "w2":
            assert actions == [], topic  # found with its last weight: exactly the devices that were its own
        else:
            [action] = actions
            assert isinstance(action, Forward) and action.worker == before[topic]  # the others keep theirs
    assert router.waiting == len(theirs) and router.held == len(theirs)
    assert router.awaited() == ["w2"]


def test_the_waiting_messages_are_released_in_arrival_order() -> None:
    router = make_router()
    before = three_workers(router)
    depart(router, "w2", 1)
    theirs = [t for t in DEVICES if before[t] == "w2"][:5]
    sent = [(topic, ref) for ref, topic in enumerate(theirs * 3)]  # each device thrice, interleaved
    for topic, ref in sent:
        assert router.route(msg(topic, ref=ref, now=2 + ref)) == []
    released = router.release_departed("w2")
    assert refs(released) == [ref for _, ref in sent]
    assert all(isinstance(a, Forward) and a.worker in {"w1", "w3"} for a in released)
    assert [a.message.topic for a in released] == [topic for topic, _ in sent]
    assert router.waiting == router.held == 0 and router.awaited() == []
    assert refs(router.route(msg(theirs[0], ref=99, now=30))) == [99]  # no longer waits
    assert router.release_departed("w2") == []  # once


def test_a_reclaimed_message_never_waits() -> None:
    router = make_router()
    before = three_workers(router)
    depart(router, "w2", 1)
    topic = next(t for t in DEVICES if before[t] == "w2")
    assert router.route(msg(topic, ref=1, now=2)) == []
    [action] = router.route(msg(topic, ref=2, now=3), reclaimed=True)  # older than what waits: goes first
    assert isinstance(action, Forward) and action.worker in {"w1", "w3"}
    assert router.waiting == 1


def test_routes_without_affinity_never_wait() -> None:
    keyed_round_robin = {"name": "rr", "match": "rr/{id}", "key": "id", "algorithm": "round_robin"}
    router = make_router(routes=[*ROUTES, keyed_round_robin])
    beat(router, "w1", 0)
    beat(router, "w2", 0, session="s-w2")
    depart(router, "w2", 1)
    for ref in range(20):  # keyless, and keyed but no device is any worker's own
        assert refs(router.route(msg(f"devices/d{ref}/logs/x", ref=ref, now=2))) == [ref]
        assert refs(router.route(msg(f"rr/d{ref}", ref=100 + ref, now=2))) == [100 + ref]
    assert router.waiting == 0


def test_other_pools_never_wait() -> None:
    router = make_router(routes=[*ROUTES, {"name": "gpu-keyed", "match": "gpu/{device}", "key": "device",
                                           "pool": "gpu"}])
    beat(router, "w1", 0)
    beat(router, "w2", 0)
    beat(router, "g1", 0, pool="gpu")
    depart(router, "w2", 1)
    for ref in range(20):
        assert refs(router.route(msg(f"gpu/d{ref}", ref=ref, now=2))) == [ref]


def test_released_into_a_pool_without_workers_they_are_held_until_the_hold_deadline() -> None:
    router = make_router()
    beat(router, "w1", 0)
    beat(router, "w2", 0, session="s-w2")
    depart(router, "w2", 1)
    beat(router, "w1", 1, state="down")  # not awaited: nobody reclaims it, say
    for ref in range(3):  # the pool has no worker: every device was w2's
        assert router.route(msg(f"devices/d{ref}/telemetry", ref=ref, now=2 + ref)) == []
    assert (router.waiting, router.held) == (3, 3)
    assert router.release_departed("w2") == []
    assert router.waiting == 0 and router.held == 3
    assert router.tick(2 + HOLD - 0.001) == []  # the hold counts from each message's arrival
    [dead] = router.tick(2 + HOLD)
    assert isinstance(dead, DeadLetter) and (dead.reason, dead.message.ref) == ("no_worker", 0)
    assert refs(beat(router, "w4", 2 + HOLD)) == [1, 2]  # the rest, in order, to a new worker


def test_released_one_departed_worker_after_another_the_held_keep_their_deadlines() -> None:
    router = make_router()
    before = three_workers(router)
    mine = {w: next(t for t in DEVICES if before[t] == w) for w in ("w1", "w2")}
    depart(router, "w1", 1)
    depart(router, "w2", 1)
    beat(router, "w3", 1, state="down")
    assert router.route(msg(mine["w1"], ref=1, now=2)) == []
    assert router.route(msg(mine["w2"], ref=2, now=5)) == []
    assert router.release_departed("w2") == [] and router.release_departed("w1") == []
    [dead] = router.tick(2 + HOLD)  # the older one's hold is over, though it was released last
    assert isinstance(dead, DeadLetter) and dead.message.ref == 1
    assert router.tick(5 + HOLD - 0.001) == []
    assert refs(router.tick(5 + HOLD)) == [2]


def test_released_in_among_messages_already_held_for_the_pool() -> None:
    router = make_router()
    beat(router, "w1", 0)
    beat(router, "w2", 0, session="s-w2")
    depart(router, "w2", 1)
    depart(router, "w1", 1)  # not awaited: nobody reclaims it, say
    router.release_departed("w1")
    assert router.route(msg("devices/d1/telemetry", ref=1, now=2)) == []  # every device was w2's now
    assert router.route(msg("devices/d1/logs/x", ref=2, now=3)) == []  # held: the pool has no worker
    assert (router.waiting, router.held) == (1, 2)
    assert router.release_departed("w2") == []
    assert refs(beat(router, "w5", 4)) == [1, 2]  # what waited joins the held queue by arrival


def test_forget_held_and_take_held_include_the_waiting_ones() -> None:
    router = make_router()
    before = three_workers(router)
    depart(router, "w2", 1)
    theirs = [t for t in DEVICES if before[t] == "w2"]
    for ref in range(6):
        assert router.route(msg(theirs[ref], ref=ref, now=2 + ref)) == []
    assert router.route(msg("jobs/j1", ref=10, now=4.5)) == []  # held: pool gpu has nobody
    assert (router.waiting, router.held) == (6, 7)
    assert router.forget_held(lambda ref: ref in (0, 3, 10)) == 3
    assert (router.waiting, router.held) == (4, 4)
    assert router.route(msg("jobs/j2", ref=11, now=4.6)) == []
    assert [m.ref for m in router.take_held()] == [1, 2, 11, 4, 5]  # oldest first, waiting or held
    assert (router.waiting, router.held) == (0, 0)
    assert router.awaited() == ["w2"]  # still awaited: told again, a reloaded router makes them wait again
    assert router.route(msg(theirs[0], ref=20, now=9)) == []
    assert refs(router.release_departed("w2")) == [20]


def test_awaited_lists_the_longest_waiting_first() -> None:
    router = make_router()
    before = three_workers(router)
    depart(router, "w2", 1)
    depart(router, "w3", 1)
    assert set(router.awaited()) == {"w2", "w3"}
    mine = {w: next(t for t in DEVICES if before[t] == w) for w in ("w2", "w3")}
    assert router.route(msg(mine["w3"], ref=1, now=2)) == []
    assert router.route(msg(mine["w2"], ref=2, now=3)) == []
    assert router.awaited() == ["w3", "w2"]
    assert refs(router.release_departed("w3")) == [1]
    assert router.awaited() == ["w2"] and router.waiting == 1
