"""mqttlb.Worker against a real Mosquitto and the real router: deliveries, heartbeats, failures, drain."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from mqttlb import Delivery, Worker
from mqttlb.core.config import BrokerSettings

from .conftest import ROOT, Client, wait_for

pytestmark = pytest.mark.integration


class Recorder:
    """A handler that keeps what it gets, takes ``delay`` seconds per message, and raises on one payload."""

    def __init__(self, fail_on: bytes | None = None, delay: float = 0.0) -> None:
        self.got: list[Delivery] = []
        self.fail_on, self.delay = fail_on, delay
        self.lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> None:
        time.sleep(self.delay)
        if delivery.payload == self.fail_on:
            raise RuntimeError("poison")
        with self.lock:
            self.got.append(delivery)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [d.payload for d in self.got]


def make_worker(broker: Any, worker_id: str, handler: Any, **kw: Any) -> Worker:
    return Worker(worker_id, handler, broker=BrokerSettings(host=broker.host, port=broker.port), interval=0.5,
                  **kw).start()


def retained_heartbeat(clients: Any, worker_id: str, name: str) -> dict[str, Any]:
    """The heartbeat the broker holds for ``worker_id``, as a client connecting now learns it."""
    watcher = clients(Client, name)
    watcher.subscribe(f"mqttlb/workers/{worker_id}/heartbeat")
    message = wait_for(watcher.messages, what=f"{worker_id}'s retained heartbeat")[0]
    assert message.retain
    return dict(orjson.loads(message.payload))


def test_handler_gets_device_topic_payload_and_route(broker, make_router, clients):
    recorder = Recorder()
    worker = make_worker(broker, "w1", recorder)
    try:
        make_router()
        device = clients(Client, "device")
        payload = bytes(range(256))  # not JSON, not UTF-8: passed through untouched
        device.publish("devices/d9/telemetry", payload)
        device.publish("devices/d9/logs/app/errors", b"oops")
        wait_for(lambda: len(recorder.payloads()) == 2, what="two deliveries")
        telemetry, logs = recorder.got
        assert (telemetry.device, telemetry.topic, telemetry.payload, telemetry.route) == \
            ("d9", "devices/d9/telemetry", payload, "telemetry")
        assert (logs.device, logs.topic, logs.route) == (None, "devices/d9/logs/app/errors", "logs")
        assert ("mqttlb-route", "telemetry") in telemetry.properties
        assert worker.received == worker.handled == 2 and worker.inflight == 0
    finally:
        worker.stop()


def test_heartbeats_are_retained_with_load_and_the_will_marks_a_dropped_worker_down(broker, clients):
    worker = make_worker(broker, "w1", Recorder(), pool="default", weight=2.5)
    beat = retained_heartbeat(clients, "w1", "watcher")
    assert {k: beat[k] for k in ("worker", "pool", "state", "weight", "inflight", "interval")} == \
        {"worker": "w1", "pool": "default", "state": "up", "weight": 2.5, "inflight": 0, "interval": 0.5}
    live = clients(Client, "live")
    live.subscribe("mqttlb/workers/w1/heartbeat")
    wait_for(lambda: len(live.messages()) >= 3, what="periodic heartbeats")
    # Drop the connection without DISCONNECT, as a crash or a network failure would.
    worker._client.kill()
    wait_for(lambda: orjson.loads(live.messages()[-1].payload) == {"worker": "w1", "state": "down",
                                                                   "session": "mqttlb-worker-w1"},
             what="the will")
    assert retained_heartbeat(clients, "w1", "late")["state"] == "down"


def test_a_raising_handler_is_counted_and_the_worker_goes_on(broker, make_router, clients):
    recorder = Recorder(fail_on=b"poison")
    worker = make_worker(broker, "w1", recorder)
    try:
        make_router()
        device = clients(Client, "device")
        for payload in (b"one", b"poison", b"two", b"poison", b"three"):
            device.publish("devices/d1/telemetry", payload)
        wait_for(lambda: worker.handled + worker.failed == 5, what="all five messages finished")
        assert recorder.payloads() == [b"one", b"two", b"three"]
        assert (worker.received, worker.handled, worker.failed, worker.inflight) == (5, 3, 2, 0)
    finally:
        worker.stop()
    # Failed messages were acknowledged too: a restart does not bring the poison back.
    again = make_worker(broker, "w1", recorder)
    try:
        assert retained_heartbeat(clients, "w1", "watcher")["state"] == "up"
        device.publish("devices/d1/telemetry", b"four")
        wait_for(lambda: again.handled == 1, what="the next message")
        assert again.received == 1 and again.failed == 0
    finally:
        again.stop()


def test_what_a_crashed_worker_held_comes_back_when_it_restarts(broker, clients):
    gate = threading.Event()
    held = Recorder()
    worker = make_worker(broker, "w1", lambda delivery: (gate.wait(10), held(delivery)))
    router = clients(Client, "router")  # publishes forwards as the router does, without its properties
    for n in range(5):
        router.publish(f"mqttlb/workers/w1/in/devices/d{n}/telemetry", b"%d" % n)
    wait_for(lambda: worker.received == 5, what="five messages held")
    worker._client.kill()  # crash: the connection drops without DISCONNECT, nothing acknowledged
    gate.set()
    again = Recorder()
    restarted = make_worker(broker, "w1", again)
    try:
        wait_for(lambda: len(again.payloads()) == 5, what="the held messages again")
        assert [(d.device, d.topic, d.payload) for d in again.got] == \
            [(None, f"devices/d{n}/telemetry", b"%d" % n) for n in range(5)]
    finally:
        restarted.stop()


def test_a_handler_may_stop_its_worker(broker, clients):
    seen: list[bytes] = []

    def handler(delivery: Delivery) -> None:
        seen.append(delivery.payload)
        if delivery.payload == b"last":
            worker.stop()

    worker = make_worker(broker, "w1", handler, drain_quiet=0.2)
    router = clients(Client, "router")
    for payload in (b"one", b"last"):
        router.publish("mqttlb/workers/w1/in/devices/d1/telemetry", payload)
    wait_for(lambda: worker.state == "down", what="the worker down")
    assert seen == [b"one", b"last"] and worker.handled == 2
    assert retained_heartbeat(clients, "w1", "watcher")["state"] == "down"


class Stream:
    """A device fleet publishing ``count`` unique QoS 1 messages at ``rate`` per second, on a thread."""

    def __init__(self, client: Client, count: int, rate: float, devices: int = 50) -> None:
        self.client, self.count, self.rate, self.devices = client, count, rate, devices
        self.sent: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        for n in range(self.count):
            while n > (time.monotonic() - start) * self.rate:
                time.sleep(0.002)
            device = f"d{n % self.devices}"
            self.client.client.publish(f"devices/{device}/telemetry", orjson.dumps({"seq": n}), qos=1)
            self.sent.append(orjson.dumps({"seq": n}))


def test_drain_on_stop_loses_nothing(broker, make_router, clients):
    a, b = Recorder(delay=0.01), Recorder()  # wa is slower than its share of the stream: it holds a backlog
    wa, wb = make_worker(broker, "wa", a), make_worker(broker, "wb", b)
    forwards = clients(Client, "forwards")
    forwards.subscribe("mqttlb/workers/+/in/#")
    make_router()
    stream = Stream(clients(Client, "device"), count=4000, rate=500)  # wa stops mid-stream, even on a busy machine
    wait_for(lambda: len(a.payloads()) >= 100 and len(b.payloads()) >= 200, what="both workers busy")
    held = wa.inflight
    wa.stop()
    assert held > 20 and len(stream.sent) < stream.count, "nothing held or the stream over: nothing was tested"
    assert (wa.state, wa.inflight, wa.failed, wa.handled) == ("down", 0, 0, wa.received)
    assert retained_heartbeat(clients, "wa", "watcher")["state"] == "down"
    stream.thread.join(20)
    sent = set(stream.sent)

    def in_wa_session() -> set[bytes]:  # forwarded to wa after it had left: waiting in its session
        return {m.payload for m in forwards.messages() if m.topic.startswith("mqttlb/workers/wa/")} - set(a.payloads())

    # Every message handled or in wa's session. Counting forwards was not enough: in a CI run the count was reached
    # while the stream's last 41 were at no worker yet (seen forwarded before wb handled them, or a forward twice).
    wait_for(lambda: set(a.payloads()) | set(b.payloads()) | in_wa_session() >= sent, what="every message forwarded")
    in_session = in_wa_session()
    assert set(a.payloads()) | set(b.payloads()) | in_session == sent
    again = Recorder()
    wa2 = make_worker(broker, "wa", again)
    try:
        wait_for(lambda: set(again.payloads()) >= in_session, what="wa's session delivered on restart")
        got = Counter(a.payloads() + b.payloads() + again.payloads())
        assert set(got) == sent
        assert [p for p, n in got.items() if n > 1] == [], "a message was handled twice"
    finally:
        wa2.stop()
        wb.stop()


def test_mqttlb_worker_command_counts_and_exits_0_on_sigterm(broker, make_router, clients):
    router = make_router()
    process = subprocess.Popen([sys.executable, "-m", "mqttlb", "worker", "--id", "cli1", "--weight", "2",
                                "--interval", "0.5", "-c", str(router.config_path)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        watcher = clients(Client, "watcher")
        watcher.subscribe("mqttlb/workers/cli1/heartbeat")
        first = wait_for(watcher.messages, timeout=15, what="the worker's first heartbeat")[0]
        assert orjson.loads(first.payload)["weight"] == 2
        inbox = clients(Client, "inbox-watcher")
        inbox.subscribe("mqttlb/workers/cli1/in/#")
        device = clients(Client, "device")
        wait_for(lambda: inbox.client.is_connected(), what="the inbox watcher")
        for i in range(5):
            device.publish(f"devices/d{i}/telemetry", b"x")
        wait_for(lambda: len(inbox.messages()) == 5, what="five forwards to cli1")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
        assert process.returncode == 0, out
        assert "worker cli1: 5 messages from 5 devices" in out, out
        assert retained_heartbeat(clients, "cli1", "late")["state"] == "down"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
