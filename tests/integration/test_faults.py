"""Real faults against a real broker, with every message accounted for.

Each message carries a unique id; at the end every id is classified as
delivered, lost or duplicated. Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import orjson
import pytest

from .conftest import Client, TestWorker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]


class Publisher:
    """A device fleet publishing unique, sequenced QoS 1 messages at a steady rate on a thread."""

    def __init__(self, client: Client, devices: int, rate: float) -> None:
        self.client, self.devices, self.rate = client, devices, rate
        self.sent: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while n < due:
                device = f"d{n % self.devices}"
                payload = orjson.dumps({"id": n, "device": device, "seq": n // self.devices})
                self.client.client.publish(f"devices/{device}/telemetry", payload, qos=1)
                self.sent.append(payload)
                n += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def account(sent: list[bytes], workers: list[TestWorker]) -> tuple[int, int, int]:
    """(lost, duplicates, per-device order violations), ignoring duplicates for order."""
    got = Counter(m.payload for w in workers for m in w.messages())
    lost = sum(1 for p in sent if got[p] == 0)
    duplicates = sum(c - 1 for c in got.values() if c > 1)
    reordered = 0
    for w in workers:
        last: dict[str, int] = {}
        for m in w.messages():
            body = orjson.loads(m.payload)
            if body["seq"] < last.get(body["device"], -1) and got[m.payload] == 1:
                reordered += 1
            last[body["device"]] = max(last.get(body["device"], -1), body["seq"])
    return lost, duplicates, reordered


def test_router_sigkill_mid_stream_loses_nothing(make_router, clients):
    workers = [clients(TestWorker, f"w{i}") for i in range(3)]
    router = make_router(name="r")
    publisher = Publisher(clients(Client, "device"), devices=50, rate=1500).start()
    time.sleep(1.5)
    router.process.send_signal(signal.SIGKILL)
    router.process.wait()
    time.sleep(1.0)
    make_router(name="r")
    time.sleep(1.5)
    publisher.stop()
    sent = publisher.sent
    wait_for(lambda: account(sent, workers)[0] == 0, timeout=30, what="every message delivered")
    lost, duplicates, _ = account(sent, workers)
    print(f"router SIGKILL: sent {len(sent)}, lost {lost}, duplicates {duplicates}")
    assert lost == 0
    assert duplicates <= 1000  # bounded by the broker's in-flight window for the router (max_inflight_messages)


def test_broker_restart_mid_stream_loses_nothing(broker, make_router, clients):
    from mqttlb import Worker
    from mqttlb.config import BrokerSettings

    got: list[bytes] = []
    lock = threading.Lock()

    def handle(delivery) -> None:
        with lock:
            got.append(delivery.payload)

    settings = BrokerSettings(host=broker.host, port=broker.port)
    workers = [Worker(f"w{i}", handle, broker=settings, interval=0.5).start() for i in range(2)]
    try:
        make_router(heartbeat={"timeout": "3s"})
        publisher = Publisher(clients(Client, "device"), devices=50, rate=1000).start()
        time.sleep(1.5)
        broker.restart()  # SIGTERM: Mosquitto saves its sessions and queued messages
        time.sleep(2.0)
        publisher.stop()
        sent = set(publisher.sent)

        def missing() -> int:
            with lock:
                return len(sent - set(got))

        wait_for(lambda: missing() == 0, timeout=40, what="every message after the broker restart")
        print(f"broker restart: sent {len(sent)}, lost {missing()}, duplicates {len(got) - len(set(got))}")
        assert missing() == 0
    finally:
        for worker in workers:
            worker.stop(timeout=3)
