"""The routing decision and the fleet, with a fake clock: no broker, no sleeping."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from mqttlb.config import parse
from mqttlb.errors import BadHeartbeat
from mqttlb.pool import Fleet, Health, Heartbeat, WorkerState
from mqttlb.router import DeadLetter, Forward, Message, Router

ROUTES = [
    {"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device"},
    {"name": "logs", "match": "devices/+/logs/#"},
    {"name": "events", "match": "events/+", "key": "payload.id"},
]


def make_router(**overrides: Any) -> Router[int]:
    config = parse({"routes": ROUTES, "heartbeat": {"timeout": "6s", "expire": "60s"},
                    "dead_letter": {"hold": "10s", "max_payload": 100}, **overrides},
                   base_dir=Path("."), environ={})
    return Router(config, Fleet(config.heartbeat.timeout, config.heartbeat.expire), random.Random(1))


def beat(router: Router[int], worker: str, now: float, **fields: Any) -> list[Any]:
    return router.heartbeat(worker, orjson.dumps({"worker": worker, **fields}), now)


def msg(topic: str, payload: bytes = b"{}", ref: int = 0, now: float = 0.0) -> Message[int]:
    return Message(topic, payload, ref, now)


def test_forward_keeps_the_payload_and_names_the_worker() -> None:
    router = make_router()
    beat(router, "w1", 0)
    [action] = router.route(msg("devices/d1/telemetry", b"\x00\xffraw"))
    assert isinstance(action, Forward)
    assert (action.topic, action.message.payload, action.qos, action.key, action.worker) == \
        ("mqttlb/workers/w1/in/devices/d1/telemetry", b"\x00\xffraw", 1, "d1", "w1")


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("events/e1", b'{"id": "a/b"}', "bad_key"),
    ("events/e1", b"[" * 100_000, "too_large"),
    ("events/e1", b"not json", "bad_key"),
    ("other/x", b"{}", "no_route"),
])
def test_dead_letters_name_their_reason(topic: str, payload: bytes, reason: str) -> None:
    router = make_router()
    beat(router, "w1", 0)
    [action] = router.route(msg(topic, payload))
    assert isinstance(action, DeadLetter)
    assert action.reason == reason
    assert action.topic == f"mqttlb/deadletter/{reason}/{topic}"
    assert action.keep_payload == (reason != "too_large")


def test_messages_wait_for_a_worker_and_leave_in_arrival_order() -> None:
    router = make_router()
    assert router.route(msg("devices/d1/telemetry", ref=1, now=0)) == []
    assert router.route(msg("devices/d2/telemetry", ref=2, now=1)) == []
    released = beat(router, "w1", 2)
    assert [a.message.ref for a in released] == [1, 2]
    assert all(isinstance(a, Forward) for a in released)


def test_held_messages_become_no_worker_dead_letters_after_the_hold() -> None:
    router = make_router()
    router.route(msg("devices/d1/telemetry", ref=1, now=0))
    router.route(msg("devices/d2/telemetry", ref=2, now=5))
    assert router.tick(9.9) == []
    [first] = router.tick(10.0)
    assert isinstance(first, DeadLetter) and first.reason == "no_worker" and first.message.ref == 1
    [second] = router.tick(15.0)
    assert second.message.ref == 2


def test_a_message_arriving_while_others_wait_queues_behind_them() -> None:
    router = make_router()
    router.route(msg("devices/d1/telemetry", ref=1))
    assert router.route(msg("devices/d1/telemetry", ref=2)) == []
    assert [a.message.ref for a in beat(router, "w1", 1)] == [1, 2]


def test_draining_and_timed_out_workers_get_nothing_and_only_their_devices_move() -> None:
    router = make_router()
    for w in ("w1", "w2", "w3"):
        beat(router, w, 0)
    devices = [f"devices/d{i}/telemetry" for i in range(200)]
    before = {t: router.route(msg(t))[0].worker for t in devices}
    beat(router, "w1", 1, state="draining")
    beat(router, "w2", 5)
    router.tick(6.5)  # w3's last heartbeat (t=0) is now older than the timeout; w2's (t=5) is not
    after = {t: router.route(msg(t))[0].worker for t in devices}
    assert set(after.values()) == {"w2"}
    assert all(after[t] == "w2" for t, w in before.items() if w == "w2")


def test_bad_heartbeats_raise_and_are_counted() -> None:
    router = make_router()
    for payload in (b"nope", b"[]", orjson.dumps({"worker": "other"}), orjson.dumps({"weight": 0}),
                    orjson.dumps({"weight": True}), orjson.dumps({"inflight": -1}), orjson.dumps({"state": "x"})):
        with pytest.raises(BadHeartbeat):
            router.heartbeat("w1", payload, 0)
    assert router.bad_heartbeats == 7
    with pytest.raises(BadHeartbeat):
        router.heartbeat("w/1", b"{}", 0)


def test_heartbeat_defaults_and_empty_payload_means_down() -> None:
    assert Heartbeat.parse("w1", b"{}") == Heartbeat("w1")
    assert Heartbeat.parse("w1", b"").state is WorkerState.DOWN


def test_fleet_timeout_expiry_pool_moves_and_static_weights() -> None:
    fleet = Fleet(timeout=6, expire=60, weights={"default": {"w1": 3.0}})
    assert fleet.apply(Heartbeat("w1", weight=1.0), 0) == {"default"}
    assert fleet.healthy("default") == {"w1": 3.0}
    assert fleet.tick(5.9) == set()
    assert fleet.tick(6.0) == {"default"}
    assert [v.health for v in fleet.views(6.0)] == [Health.TIMEOUT]
    assert fleet.apply(Heartbeat("w1", pool="other"), 7) == {"other"}
    assert fleet.healthy("other") == {"w1": 1.0}
    fleet.tick(67)
    assert fleet.views(67) == []
