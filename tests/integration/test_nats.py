"""The router on a broker that is not Mosquitto: NATS's MQTT gateway (MQTT 3.1.1 only, sessions in JetStream).

Skipped where ``nats-server`` is not installed (Debian's package ``nats-server``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import paho.mqtt.client as paho
import pytest

from mqttlb import Worker
from mqttlb.commands.broker import free_port, wait_listening
from mqttlb.core.config import BrokerSettings
from mqttlb.worker import Delivery

from .conftest import Client, RouterProcess, wait_for, write_config

NATS_SERVER = shutil.which("nats-server") or next(
    (path for path in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server") if os.access(path, os.X_OK)), None)
DEVICES = [f"d{n}" for n in range(6)]


@dataclass(frozen=True)
class NatsBroker:
    host: str
    port: int
    """Its MQTT listener's."""


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsBroker]:
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed")
    port, mqtt_port = free_port(), free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f"listen: 127.0.0.1:{port}\nserver_name: mqttlb-test\n"
                    f"jetstream {{ store_dir: \"{tmp_path / 'jetstream'}\" }}\n"
                    f"mqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n")
    process = subprocess.Popen([NATS_SERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening("127.0.0.1", mqtt_port, 15)
        yield NatsBroker("127.0.0.1", mqtt_port)
    finally:
        process.terminate()
        process.wait(15)


def test_devices_keep_their_worker_and_nothing_is_lost_across_a_router_crash(nats: NatsBroker,
                                                                             tmp_path: Path) -> None:
    broker = cast(Any, nats)
    config = write_config(tmp_path / "nats.yaml", broker, broker={"protocol": "3.1.1"},
                          routes=[{"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device",
                                   "algorithm": "consistent_hash", "qos": 1}])
    got: dict[str, list[tuple[str, int]]] = {"w1": [], "w2": []}

    def handler(worker: str) -> Callable[[Delivery], None]:
        return lambda delivery: got[worker].append((delivery.topic.split("/")[1],
                                                    orjson.loads(delivery.payload)["n"]))

    workers = [Worker(name, handler(name),
                      broker=BrokerSettings(host=nats.host, port=nats.port, client_id=name, protocol="3.1.1")).start()
               for name in got]
    device = Client(broker, "nats-device", protocol=paho.MQTTv311)
    router = RouterProcess(config).wait_ready()
    try:
        def send(numbers: range) -> None:
            for n in numbers:
                for name in DEVICES:
                    device.publish(f"devices/{name}/telemetry", orjson.dumps({"n": n}), qos=1)

        send(range(20))
        wait_for(lambda: sum(map(len, got.values())) >= 20 * len(DEVICES), 20, "the first half at the workers")
        router.stop(signal.SIGKILL)
        send(range(20, 40))  # queued in the router's session, in JetStream
        router = RouterProcess(config).wait_ready()
        wait_for(lambda: sum(map(len, got.values())) >= 40 * len(DEVICES), 30, "the second half at the workers")
    finally:
        router.stop()
        device.close()
        for worker in workers:
            worker.stop()
    received = sorted(item for items in got.values() for item in items)
    assert sorted(set(received)) == sorted((name, n) for name in DEVICES for n in range(40))  # none lost
    owners = {name: {worker for worker, items in got.items() if any(d == name for d, _ in items)}
              for name in DEVICES}
    assert all(len(found) == 1 for found in owners.values()), owners  # each device on one worker
    assert len({next(iter(found)) for found in owners.values()}) == 2  # and both workers used
    for items in got.values():
        for name in DEVICES:
            firsts = list(dict.fromkeys(n for d, n in items if d == name))  # a crash may bring duplicates
            assert firsts == sorted(firsts)  # each device's order kept
