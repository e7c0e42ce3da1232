"""`mqttlb simulate`: topics and payloads made from the routes, and a real fleet against a real Mosquitto."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from mqttlb.commands.broker import PrivateBroker
from mqttlb.commands.simulate import Devices, TopicMaker, device_ids
from mqttlb.core.config import Config, load, parse

from .conftest import ROOT, Client, wait_for, write_config

pytestmark = pytest.mark.integration

FINAL = re.compile(r"^simulate: sent (\d+) messages from (\d+) devices in [\d.]+ s$", re.M)


def config_with(*routes: dict[str, Any]) -> Config:
    return parse({"routes": list(routes)}, base_dir=ROOT, environ={})


DEFAULT_ROUTES = (
    {"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device", "algorithm": "consistent_hash"},
    {"name": "logs", "match": "devices/+/logs/#", "algorithm": "round_robin"},
)


# -- the pure part ---------------------------------------------------------------------


def test_device_ids_are_numbered_from_one() -> None:
    assert device_ids(3) == ("dev-0001", "dev-0002", "dev-0003")
    assert device_ids(10001)[-1] == "dev-10001"


def test_every_plus_level_holds_the_device_and_a_trailing_hash_becomes_data() -> None:
    config = config_with(*DEFAULT_ROUTES, {"name": "sites", "match": "site/{site}/+/x/#", "algorithm": "random"})
    telemetry, logs, sites = (TopicMaker.for_route(route) for route in config.routes)
    assert telemetry.topic("dev-0001") == "devices/dev-0001/telemetry"
    assert logs.topic("dev-0001") == "devices/dev-0001/logs/data"
    assert sites.topic("d") == "site/d/d/x/data"


def test_payload_carries_device_seq_and_time() -> None:
    maker = TopicMaker.for_route(config_with(*DEFAULT_ROUTES).routes[0])
    assert orjson.loads(maker.payload("dev-0007", 3, 1.5)) == {"device": "dev-0007", "seq": 3, "ts": 1.5}


def test_a_payload_key_finds_the_device_where_the_route_looks() -> None:
    config = config_with({"name": "gw", "match": "gateway/+/up", "key": "payload.meta.id",
                          "algorithm": "consistent_hash"},
                         {"name": "flat", "match": "flat/+", "key": "payload.device", "algorithm": "consistent_hash"})
    for route in config.routes:
        maker = TopicMaker.for_route(route)
        topic, payload = maker.topic("dev-0002"), maker.payload("dev-0002", 0, 0.0)
        captures = route.match.match(topic)
        assert captures is not None and route.key is not None
        assert route.key.extract(captures, payload) == "dev-0002"
    assert orjson.loads(TopicMaker.for_route(config.routes[0]).payload("d", 1, 2.0)) == {
        "device": "d", "seq": 1, "ts": 2.0, "meta": {"id": "d"}}


@pytest.mark.parametrize("key", ["payload.seq", "payload.ts", "payload.device.id"])
def test_a_payload_key_on_the_simulators_own_fields_is_refused(key: str) -> None:
    route = config_with({"name": "r", "match": "a/+", "key": key, "algorithm": "consistent_hash"}).routes[0]
    with pytest.raises(ValueError, match="collides"):
        TopicMaker.for_route(route)


def test_the_fleet_takes_devices_in_turn_and_routes_by_rounds() -> None:
    devices = Devices.from_config(config_with(*DEFAULT_ROUTES), 3)
    order = [(maker.route, device, seq) for maker, device, seq in map(devices.identity, range(7))]
    assert order == [("telemetry", "dev-0001", 0), ("telemetry", "dev-0002", 0), ("telemetry", "dev-0003", 0),
                     ("logs", "dev-0001", 0), ("logs", "dev-0002", 0), ("logs", "dev-0003", 0),
                     ("telemetry", "dev-0001", 1)]
    topic, payload = devices.message(6, 9.0)
    assert topic == "devices/dev-0001/telemetry"
    assert orjson.loads(payload) == {"device": "dev-0001", "seq": 1, "ts": 9.0}


def test_a_fleet_needs_a_device() -> None:
    with pytest.raises(ValueError, match="at least one device"):
        Devices.from_config(config_with(*DEFAULT_ROUTES), 0)


# -- against a real broker -------------------------------------------------------------------


def simulate(config_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mqttlb", "simulate", "-c", str(config_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def check_received(watcher: Client, config: Config, sent: int, devices: int) -> None:
    """Every message arrived once, on a topic of its route, with per-topic seqs 0..n-1 in order."""
    wait_for(lambda: len(watcher.messages()) >= sent, what=f"{sent} simulated messages")
    time.sleep(0.2)
    messages = watcher.messages()
    assert len(messages) == sent
    seqs: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        body = orjson.loads(message.payload)
        route = next(r for r in config.routes if r.match.match(message.topic) is not None)
        assert TopicMaker.for_route(route).topic(body["device"]) == message.topic
        seqs[message.topic].append(body["seq"])
    assert len({topic.split("/")[1] for topic in seqs}) == min(devices, sent)
    assert all(s == list(range(len(s))) for s in seqs.values()), seqs


@pytest.mark.parametrize("qos", ["0", "1"])
def test_simulate_publishes_sequenced_messages_to_the_routes_topics(broker: PrivateBroker, tmp_path: Path,
                                                                     qos: str) -> None:
    config_path = write_config(tmp_path / "sim.yaml", broker)
    watcher = Client(broker, "watcher")
    try:
        watcher.subscribe("devices/#")
        time.sleep(0.2)  # the SUBACK
        process = simulate(config_path, "--devices", "5", "--rate", "200", "--duration", "1", "--qos", qos)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        found = FINAL.search(out)
        assert found is not None, out
        assert found.groups() == ("200", "5")
        check_received(watcher, load(config_path), 200, 5)
    finally:
        watcher.close()


def test_sigterm_ends_simulate_cleanly_with_the_final_count(broker: PrivateBroker, tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "sim.yaml", broker)
    watcher = Client(broker, "watcher")
    try:
        watcher.subscribe("devices/#")
        time.sleep(0.2)
        process = simulate(config_path, "--devices", "50", "--rate", "500")
        wait_for(lambda: len(watcher.messages()) > 100, what="the fleet publishing")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        found = FINAL.search(out)
        assert found is not None, out
        check_received(watcher, load(config_path), int(found.group(1)), 50)
    finally:
        watcher.close()


def test_simulate_without_a_broker_says_so(tmp_path: Path) -> None:
    broker = PrivateBroker(workdir=tmp_path)  # never started: nothing listens on its port
    config_path = write_config(tmp_path / "sim.yaml", broker)
    process = simulate(config_path, "--duration", "1")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "cannot connect" in err and "Traceback" not in err


def test_simulate_refuses_a_fleet_without_devices(tmp_path: Path, broker: PrivateBroker) -> None:
    process = simulate(write_config(tmp_path / "sim.yaml", broker), "--devices", "0")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "at least one device" in err
