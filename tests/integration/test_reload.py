"""SIGHUP: the router reads its file again and applies it under traffic, losing and repeating nothing."""

from __future__ import annotations

import signal
import time
from collections import Counter

import orjson
import pytest

from .conftest import Client, TestWorker, wait_for, write_config
from .test_faults import Publisher, account

pytestmark = pytest.mark.integration

LOGS = {"name": "logs", "match": "devices/+/logs/#", "algorithm": "round_robin"}


def logs(device: str) -> str:
    return f"devices/{device}/logs/app"


def test_sighup_switches_the_algorithm_under_traffic_losing_nothing(broker, make_router, clients):
    router = make_router(routes=[LOGS])
    workers = [clients(TestWorker, "w1", weight=1.0), clients(TestWorker, "w2", weight=3.0)]
    publisher = Publisher(clients(Client, "device"), devices=20, rate=500, topic=logs).start()
    time.sleep(1.0)
    write_config(router.config_path, broker, routes=[{**LOGS, "algorithm": "weighted_round_robin"}])
    router.process.send_signal(signal.SIGHUP)
    router.wait_log("reloaded")
    switched = len(publisher.sent)
    time.sleep(1.5)
    sent = publisher.stop()
    wait_for(lambda: account(sent, workers)[0] == 0, timeout=20, what="every message")
    assert account(sent, workers) == (0, 0)  # nothing lost, nothing twice: no reconnection
    later = set(sent[switched + 50:])  # well after the switch
    shares = Counter(w.worker_id for w in workers for m in w.messages() if m.payload in later)
    assert 2.5 < shares["w2"] / shares["w1"] < 3.5  # weighted now, 1:3
    assert "reconnecting" not in router.log()


def test_sighup_adds_a_route_and_refuses_a_broken_file(broker, make_router, clients):
    router = make_router(routes=[LOGS])
    worker = clients(TestWorker, "w1")
    device = clients(Client, "device")
    router.config_path.write_text("routes: [\n")
    router.process.send_signal(signal.SIGHUP)
    router.wait_log("reload refused")
    device.publish(logs("d1"), b"still routed")
    wait_for(lambda: [m.payload for m in worker.messages()] == [b"still routed"], what="the old config at work")
    events = {"name": "events", "match": "events/{device}", "key": "device"}
    write_config(router.config_path, broker, routes=[LOGS, events])
    router.process.send_signal(signal.SIGHUP)
    router.wait_log("reloaded")
    wait_for(lambda: _delivered(device, worker, "events/e1"), what="the new route at work")
    assert router.process.poll() is None


def _delivered(device: Client, worker: TestWorker, topic: str) -> bool:
    """Publish to ``topic`` until it reaches the worker (the new subscription takes a moment)."""
    device.publish(topic, orjson.dumps({"probe": topic}))
    time.sleep(0.1)
    return any(m.topic.endswith(topic) for m in worker.messages())


def test_sighup_with_new_broker_settings_reconnects_cleanly(broker, make_router, clients):
    router = make_router(routes=[LOGS])
    workers = [clients(TestWorker, "w1"), clients(TestWorker, "w2")]
    publisher = Publisher(clients(Client, "device"), devices=20, rate=500, topic=logs).start()
    time.sleep(1.0)
    write_config(router.config_path, broker, routes=[LOGS], broker={"keepalive": 20})
    router.process.send_signal(signal.SIGHUP)
    router.wait_log("reloaded")
    time.sleep(1.0)
    sent = publisher.stop()
    wait_for(lambda: account(sent, workers)[0] == 0, timeout=20, what="every message")
    assert "reconnecting" in router.log() or "finishing" in router.log()
    assert account(sent, workers)[0] == 0


def test_sighup_keeps_the_client_id_the_router_started_with(broker, make_router, clients):
    """The client id is the router's identity among routers: changed in place, the router took its own new
    heartbeat for a peer's, left that 'peer' about half of the reclaims, and reclaimed none of them."""
    router = make_router(routes=[LOGS])
    started_as = f"mqttlb-test-{router.config_path.stem}"
    beats = clients(Client, "router-beats")
    beats.subscribe("mqttlb/routers/+/heartbeat")
    wait_for(lambda: any(m.topic == f"mqttlb/routers/{started_as}/heartbeat" for m in beats.messages()),
             what="the router's own heartbeat")
    write_config(router.config_path, broker, routes=[LOGS], broker={"client_id": "renamed", "keepalive": 20})
    router.process.send_signal(signal.SIGHUP)
    router.wait_log("reloaded")
    assert f"broker.client_id changes only when the router restarts; it stays {started_as}" in router.log()
    worker = clients(TestWorker, "w1")
    device = clients(Client, "device")
    device.publish(logs("d1"), b"after")
    wait_for(lambda: [m.payload for m in worker.messages()] == [b"after"], what="routing after the reload")
    assert not any("renamed" in m.topic for m in beats.messages())


def test_a_large_file_is_read_while_routing_goes_on(broker, make_router, clients):
    """The file used to be read and checked in the routing loop: a few MB of YAML stopped all routing for as
    long as the parser took (seconds; minutes for tens of MB). It is read on a thread of its own now."""
    router = make_router(routes=[LOGS])
    worker = clients(TestWorker, "w1")
    device = clients(Client, "device")
    weights = {f"w{i}": {"weight": 1 + i % 3} for i in range(50_000)}  # 1.6 MB of YAML: seconds to parse
    write_config(router.config_path, broker, routes=[LOGS], pools={"default": {"workers": weights}})
    router.process.send_signal(signal.SIGHUP)
    time.sleep(0.05)  # the signal is handled and the reading begins
    wait_for(lambda: _delivered(device, worker, logs("during")), timeout=30, what="a message routed")
    assert "reloaded" not in router.log(), "nothing was routed while the file was read"
    router.wait_log("reloaded", timeout=120)
    wait_for(lambda: _delivered(device, worker, logs("after")), what="the new config at work")
