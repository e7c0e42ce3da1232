"""mqttlb.Worker against a real broker and router: deliveries, failures, drain without loss."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import orjson
import pytest

from mqttlb import Delivery, Worker
from mqttlb.config import BrokerSettings

from .conftest import ROOT, Client, wait_for
from .test_faults import Publisher

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self, fail_on: bytes | None = None) -> None:
        self.got: list[Delivery] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> None:
        if delivery.payload == self.fail_on:
            raise RuntimeError("poison")
        with self.lock:
            self.got.append(delivery)


def make_worker(broker, worker_id: str, handler, **kw) -> Worker:
    return Worker(worker_id, handler, broker=BrokerSettings(host=broker.host, port=broker.port), interval=0.5,
                  **kw).start()


def test_handler_gets_device_topic_payload_and_route(broker, make_router, clients):
    recorder = Recorder()
    worker = make_worker(broker, "w1", recorder)
    try:
        make_router()
        device = clients(Client, "device")
        device.publish("devices/d9/telemetry", b'{"t": 21.5}')
        wait_for(lambda: recorder.got, what="a delivery")
        delivery = recorder.got[0]
        assert (delivery.device, delivery.topic, delivery.payload, delivery.route) == \
            ("d9", "devices/d9/telemetry", b'{"t": 21.5}', "telemetry")
    finally:
        worker.stop()


def test_heartbeat_is_retained_with_load_and_down_after_stop(broker, make_router, clients):
    worker = make_worker(broker, "w1", Recorder(), pool="default", weight=2.5)
    watcher = clients(Client, "watcher")
    watcher.subscribe("mqttlb/workers/+/heartbeat")
    beat = orjson.loads(wait_for(watcher.messages, what="retained heartbeat")[0].payload)
    assert beat["worker"] == "w1" and beat["state"] == "up" and beat["weight"] == 2.5 and beat["inflight"] == 0
    worker.stop()
    late = clients(Client, "late-watcher")
    late.subscribe("mqttlb/workers/+/heartbeat")
    assert orjson.loads(wait_for(late.messages, what="retained down")[0].payload)["state"] == "down"


def test_a_raising_handler_is_counted_and_the_worker_goes_on(broker, make_router, clients):
    recorder = Recorder(fail_on=b"poison")
    worker = make_worker(broker, "w1", recorder)
    try:
        make_router()
        device = clients(Client, "device")
        for payload in (b"one", b"poison", b"two"):
            device.publish("devices/d1/telemetry", payload)
        wait_for(lambda: len(recorder.got) == 2, what="the messages around the poison one")
        assert [d.payload for d in recorder.got] == [b"one", b"two"]
        assert worker.failed == 1 and worker.handled == 2
    finally:
        worker.stop()


def test_drain_on_stop_loses_nothing(broker, make_router, clients):
    a, b = Recorder(), Recorder()
    wa, wb = make_worker(broker, "wa", a), make_worker(broker, "wb", b)
    make_router(routes=[{"name": "logs", "match": "devices/+/telemetry", "algorithm": "round_robin"}])
    publisher = Publisher(clients(Client, "device"), devices=20, rate=500).start()
    time.sleep(1.5)
    wa.stop()
    time.sleep(1.5)
    publisher.stop()
    sent = set(publisher.sent)
    # Whatever reached wa's session after it left comes back when it restarts with the same id.
    wa2 = make_worker(broker, "wa", a)
    try:
        wait_for(lambda: {d.payload for d in a.got} | {d.payload for d in b.got} >= sent, timeout=20,
                 what="every message handled")
    finally:
        wa2.stop()
        wb.stop()


def test_mqttlb_worker_command_counts_and_exits_0_on_sigterm(broker, make_router, clients, tmp_path):
    router = make_router()
    process = subprocess.Popen([sys.executable, "-m", "mqttlb", "worker", "--id", "cli1", "--interval", "0.5",
                                "-c", str(router.config_path)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        watcher = clients(Client, "watcher")
        watcher.subscribe("mqttlb/workers/cli1/heartbeat")
        wait_for(watcher.messages, what="the worker's heartbeat")
        device = clients(Client, "device")
        for i in range(5):
            device.publish(f"devices/d{i}/telemetry", b"x")
        time.sleep(1.0)
        process.terminate()
        out, _ = process.communicate(timeout=20)
        assert process.returncode == 0, out
        assert "5 messages from 5 devices" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
