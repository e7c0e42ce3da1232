"""Numbers at the ends of the float range, from the wire to a live router (issue 12).

Weights of 1e308 are valid heartbeats whose sum overflows, and once retained
they meet every router that starts; a payload key of 20 digits is past what
orjson reads as an integer.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from .conftest import Client, TestWorker, wait_for

pytestmark = pytest.mark.integration

ROUTES = [
    {"name": "spread", "match": "spread/+", "algorithm": "random"},
    {"name": "turns", "match": "turns/+", "algorithm": "weighted_round_robin"},
]
PER_ROUTE = 200


def received(worker: TestWorker, route: str) -> int:
    prefix = f"mqttlb/workers/{worker.worker_id}/in/{route}/"
    return sum(m.topic.startswith(prefix) for m in worker.messages())


def send_and_count(device: Client, workers: list[TestWorker]) -> dict[str, Counter[str]]:
    """Publish PER_ROUTE messages on each route; what each worker got of them, per route."""
    before = {route["name"]: Counter({w.worker_id: received(w, route["name"]) for w in workers}) for route in ROUTES}
    for seq in range(PER_ROUTE):
        for route in ROUTES:
            device.publish(f"{route['name']}/d{seq}", orjson.dumps({"seq": seq}))
    expected = sum(before[route["name"]].total() for route in ROUTES) + PER_ROUTE * len(ROUTES)
    wait_for(lambda: sum(len(w.messages()) for w in workers) == expected, 15, f"{expected} forwards")
    return {route["name"]: Counter({w.worker_id: received(w, route["name"]) for w in workers})
            - before[route["name"]] for route in ROUTES}


def assert_even(counts: dict[str, Counter[str]]) -> None:
    assert 0.35 * PER_ROUTE <= counts["spread"]["w1"] <= 0.65 * PER_ROUTE, counts
    assert abs(counts["turns"]["w1"] - counts["turns"]["w2"]) <= 2, counts  # equal weights take turns


def test_weights_of_1e308_are_shared_evenly_and_survive_a_restart(make_router, clients):
    workers = [clients(TestWorker, f"w{i}", weight=1e308) for i in (1, 2)]
    router = make_router(routes=ROUTES)
    device = clients(Client, "device")

    assert_even(send_and_count(device, workers))
    assert router.process.poll() is None

    assert router.stop() == 0
    restarted = make_router(routes=ROUTES, name="restarted")  # meets the retained 1e308 heartbeats at once
    assert_even(send_and_count(device, workers))
    assert restarted.process.poll() is None
    assert "Traceback" not in router.log() + restarted.log()


ICCIDS = [f"8988260000001234567{i}" for i in range(10)]  # 20 digits, all over 2**64


def test_a_20_digit_number_key_routes_as_its_digits(make_router, clients):
    workers = [clients(TestWorker, f"w{i}") for i in range(3)]
    dead = clients(Client, "dead-letters")
    dead.subscribe("mqttlb/deadletter/#")
    make_router(routes=[{"name": "sims", "match": "sims/+", "key": "payload.id", "algorithm": "consistent_hash"}])
    device = clients(Client, "device")
    as_number = {iccid: b'{"id": ' + iccid.encode() + b"}" for iccid in ICCIDS}
    as_string = {iccid: b'{"id": "' + iccid.encode() + b'"}' for iccid in ICCIDS}
    for iccid in ICCIDS:
        device.publish("sims/up", as_number[iccid])
        device.publish("sims/up", as_string[iccid])
    wait_for(lambda: sum(len(w.messages()) for w in workers) == 2 * len(ICCIDS), what="every forward")

    owner = {message.payload: worker.worker_id for worker in workers for message in worker.messages()}
    assert len(owner) == 2 * len(ICCIDS)
    assert all(owner[as_number[iccid]] == owner[as_string[iccid]] for iccid in ICCIDS), owner
    assert len(set(owner.values())) > 1  # the keys do spread over the workers
    assert dead.messages() == []
