"""The router against a real Mosquitto: affinity, balancing, failover, holding."""

from __future__ import annotations

from collections import defaultdict

import orjson
import pytest

from .conftest import Client, TestWorker, wait_for

pytestmark = pytest.mark.integration

INBOX = "mqttlb/workers/{}/in/"


def by_worker(workers: list[TestWorker]) -> dict[str, list[tuple[str, bytes]]]:
    """What each worker received: (original topic, payload) in arrival order."""
    out = {}
    for w in workers:
        prefix = INBOX.format(w.worker_id)
        out[w.worker_id] = [(m.topic[len(prefix):], m.payload) for m in w.messages()]
    return out


def total(workers: list[TestWorker]) -> int:
    return sum(len(w.messages()) for w in workers)


def device_owner(workers: list[TestWorker]) -> dict[str, set[str]]:
    owners: dict[str, set[str]] = defaultdict(set)
    for worker, got in by_worker(workers).items():
        for topic, _ in got:
            owners[topic.split("/")[1]].add(worker)
    return owners


def publish_fleet(device: Client, devices: int, per_device: int, start: int = 0, route: str = "telemetry") -> None:
    for seq in range(start, start + per_device):
        for d in range(devices):
            device.publish(f"devices/d{d}/{route}", orjson.dumps({"device": f"d{d}", "seq": seq}))


def test_consistent_hash_keeps_every_device_on_one_worker_in_order(make_router, clients):
    workers = [clients(TestWorker, f"w{i}") for i in range(3)]
    make_router()
    device = clients(Client, "device")
    publish_fleet(device, devices=30, per_device=10)
    wait_for(lambda: total(workers) == 300, what="300 forwards")

    owners = device_owner(workers)
    assert len(owners) == 30
    assert all(len(ws) == 1 for ws in owners.values()), owners
    assert len({next(iter(ws)) for ws in owners.values()}) == 3  # every worker has devices
    for got in by_worker(workers).values():
        seqs: dict[str, list[int]] = defaultdict(list)
        for topic, payload in got:
            body = orjson.loads(payload)
            assert payload == orjson.dumps(body)  # bytes unchanged
            assert topic == f"devices/{body['device']}/telemetry"
            seqs[body["device"]].append(body["seq"])
        assert all(s == list(range(10)) for s in seqs.values())  # per-device order kept


def test_forward_carries_mqtt5_properties_and_no_retain(make_router, clients):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    worker = clients(TestWorker, "w1")
    make_router()
    device = clients(Client, "device")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("trace", "abc")]
    props.ContentType = "application/json"
    device.publish("devices/d7/telemetry", b'{"t": 1}', properties=props, retain=True)
    message = wait_for(worker.messages, what="the forward")[0]
    assert message.topic == "mqttlb/workers/w1/in/devices/d7/telemetry"
    assert message.payload == b'{"t": 1}'
    assert not message.retain
    assert message.qos == 1
    user = dict(message.properties.UserProperty)
    assert user == {"trace": "abc", "mqttlb-route": "telemetry", "mqttlb-key": "d7",
                    "mqttlb-topic": "devices/d7/telemetry"}
    assert message.properties.ContentType == "application/json"


def test_round_robin_spreads_stateless_traffic_evenly(make_router, clients):
    workers = [clients(TestWorker, f"w{i}") for i in range(3)]
    make_router()
    device = clients(Client, "device")
    for i in range(90):
        device.publish(f"devices/d{i % 7}/logs/app", b"line %d" % i)
    wait_for(lambda: total(workers) == 90, what="90 forwards")
    assert [len(w.messages()) for w in workers] == [30, 30, 30]


def test_weighted_round_robin_follows_heartbeat_weights(make_router, clients):
    workers = [clients(TestWorker, "a", weight=1), clients(TestWorker, "b", weight=2)]
    routes = [{"name": "logs", "match": "devices/+/logs/#", "algorithm": "weighted_round_robin"}]
    make_router(routes=routes)
    device = clients(Client, "device")
    for i in range(60):
        device.publish("devices/x/logs/app", b"%d" % i)
    wait_for(lambda: total(workers) == 60, what="60 forwards")
    assert [len(w.messages()) for w in workers] == [20, 40]


def test_least_connections_avoids_the_loaded_worker(make_router, clients):
    busy, idle = clients(TestWorker, "busy"), clients(TestWorker, "idle")
    busy.inflight = 1000
    busy.beat()
    routes = [{"name": "logs", "match": "devices/+/logs/#", "algorithm": "least_connections"}]
    make_router(routes=routes)
    device = clients(Client, "device")
    for i in range(50):
        device.publish("devices/x/logs/app", b"%d" % i)
    wait_for(lambda: total([busy, idle]) == 50, what="50 forwards")
    assert len(busy.messages()) == 0
    assert len(idle.messages()) == 50


def _failover(make_router, clients, fail) -> None:
    workers = [clients(TestWorker, f"w{i}") for i in range(3)]
    make_router(heartbeat={"timeout": "1.5s"})
    device = clients(Client, "device")
    publish_fleet(device, devices=40, per_device=1)
    wait_for(lambda: total(workers) == 40, what="first round")
    before = {d: next(iter(ws)) for d, ws in device_owner(workers).items()}
    victim = workers[0]
    victims_devices = {d for d, w in before.items() if w == victim.worker_id}
    assert victims_devices
    fail(victim)
    # After the router knows, the victim gets nothing more; keep publishing until then.
    wait_for(lambda: _published_round_reaches_only_survivors(device, workers, victim), timeout=10,
             what="failover")
    after = defaultdict(set)
    for worker in workers[1:]:
        for topic, _ in by_worker([worker])[worker.worker_id]:
            after[topic.split("/")[1]].add(worker.worker_id)
    for d, w in before.items():
        if w != victim.worker_id:
            assert after[d] == {w}, f"{d} moved from {w} although its worker stayed"
        else:
            assert len(after[d]) == 1 and victim.worker_id not in after[d]


def _published_round_reaches_only_survivors(device, workers, victim) -> bool:
    victim_before = len(victim.messages())
    survivors_before = total(workers[1:])
    publish_fleet(device, devices=40, per_device=1)
    wait_for(lambda: total(workers) - victim_before - survivors_before >= 40 or
             total(workers[1:]) - survivors_before == 40, timeout=5, what="a round")
    return len(victim.messages()) == victim_before and total(workers[1:]) - survivors_before == 40


def test_failover_when_a_worker_dies_uses_its_will(make_router, clients):
    _failover(make_router, clients, lambda w: w.kill())


def test_failover_when_heartbeats_stop_within_the_timeout(make_router, clients):
    _failover(make_router, clients, lambda w: w.silence())


def test_messages_wait_for_a_worker_and_are_not_dead_lettered(make_router, clients):
    make_router(dead_letter={"hold": "20s"})
    dead = clients(Client, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = clients(Client, "device")
    publish_fleet(device, devices=5, per_device=4)
    worker = clients(TestWorker, "late")
    wait_for(lambda: len(worker.messages()) == 20, what="held messages released")
    seqs = defaultdict(list)
    for m in worker.messages():
        body = orjson.loads(m.payload)
        seqs[body["device"]].append(body["seq"])
    assert all(s == [0, 1, 2, 3] for s in seqs.values())
    assert dead.messages() == []


def test_queued_messages_after_a_router_restart_reach_the_right_workers(make_router, clients):
    workers = [clients(TestWorker, f"w{i}") for i in range(3)]
    router = make_router(name="r")
    device = clients(Client, "device")
    publish_fleet(device, devices=30, per_device=1)
    wait_for(lambda: total(workers) == 30, what="first round")
    owners = {d: next(iter(ws)) for d, ws in device_owner(workers).items()}
    assert router.stop() == 0
    publish_fleet(device, devices=30, per_device=5, start=1)  # queued at the broker meanwhile
    dead = clients(Client, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    make_router(name="r")
    wait_for(lambda: total(workers) == 180, what="queued messages")
    assert {d: ws for d, ws in device_owner(workers).items()} == {d: {w} for d, w in owners.items()}
    assert dead.messages() == []


def test_no_worker_dead_letters_after_the_hold(make_router, clients):
    make_router(dead_letter={"hold": "1s"})
    dead = clients(Client, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = clients(Client, "device")
    device.publish("devices/d1/telemetry", b"payload-1")
    got = wait_for(dead.messages, what="no_worker dead letter")
    assert got[0].topic == "mqttlb/deadletter/no_worker/devices/d1/telemetry"
    assert got[0].payload == b"payload-1"
    assert dict(got[0].properties.UserProperty)["mqttlb-reason"].startswith("no_worker")


def test_mqtt_311_routes_too(make_router, clients):
    worker = clients(TestWorker, "w1")
    make_router(broker={"protocol": "3.1.1"})
    device = clients(Client, "device")
    publish_fleet(device, devices=3, per_device=3)
    wait_for(lambda: len(worker.messages()) == 9, what="forwards over MQTT 3.1.1")
    assert {m.topic for m in worker.messages()} == {f"mqttlb/workers/w1/in/devices/d{i}/telemetry" for i in range(3)}


def test_router_reconnects_and_resubscribes_after_a_broker_restart(broker, make_router, clients):
    workers = [clients(TestWorker, "w1")]
    router = make_router()
    broker.restart()
    router.wait_log("routing link connected (session present: True)", timeout=15)
    for w in workers:  # the test worker itself does not come back on its own after a restart
        w.close()
    workers = [clients(TestWorker, "w1b")]
    device = clients(Client, "device")
    publish_fleet(device, devices=5, per_device=2)
    wait_for(lambda: len(workers[0].messages()) == 10, timeout=15, what="routing after the broker restart")
    assert router.process.poll() is None


def test_qos_0_routes_keep_flowing_past_the_window(make_router, clients):
    """A QoS 0 forward is settled as soon as it is written: the window never fills with them."""
    routes = [{"name": "logs", "match": "devices/+/logs/#", "algorithm": "round_robin", "qos": 0}]
    make_router(routes=routes, router={"max_inflight": 20})
    worker = clients(TestWorker, "w1")
    device = clients(Client, "device")
    for n in range(300):
        device.publish(f"devices/d{n % 7}/logs/app", b"%d" % n, qos=0)
    wait_for(lambda: len(worker.messages()) == 300, what="all 300 QoS 0 messages")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_retained_device_messages_are_routed_once_across_a_broker_restart(make_router, clients, broker, protocol):
    """A reconnect that finds the router's session present does not subscribe again: an MQTT 3.1.1 broker
    answers every SUBSCRIBE with the retained messages it matches, which were routed again on each reconnect
    (MQTT 5 has retain handling for it)."""
    clients(TestWorker, "w1")
    watcher = clients(Client, "watcher", clean=False)
    watcher.subscribe("mqttlb/workers/+/in/#")
    router = make_router(broker={"protocol": protocol}, stats={"interval": "0.25s"})
    stats = clients(Client, "stats")
    stats.subscribe("mqttlb/stats")
    device = clients(Client, "device")
    for i in range(3):
        device.publish(f"devices/r{i}/telemetry", b"state", retain=True)
    wait_for(lambda: len(watcher.messages()) == 3, what="the retained messages routed")
    seen = len(stats.messages())
    wait_for(lambda: any(orjson.loads(m.payload)["inbound"]["unacked"] == 0 for m in stats.messages()[seen:]),
             what="the router's acknowledgements written")  # else the broker may rightly send them again
    broker.restart()  # SIGTERM: Mosquitto keeps the router's session, its subscriptions and the retained messages
    wait_for(lambda: router.log().count("session present: True") == 1, timeout=20, what="the router back")
    wait_for(device.client.is_connected, timeout=20, what="the device back")
    device.publish("devices/after/telemetry", b"news")
    wait_for(lambda: any(m.topic.endswith("/after/telemetry") for m in watcher.messages()), timeout=20,
             what="a new message routed")
    # Retained messages sent again would come with the SUBACK, before the new one, and be forwarded in order;
    # what the broker sends the watcher again (its own acknowledgement lost in the restart) is marked DUP.
    assert sorted(m.topic.split("/in/")[1] for m in watcher.messages() if not m.dup) == \
        ["devices/after/telemetry", "devices/r0/telemetry", "devices/r1/telemetry", "devices/r2/telemetry"]
