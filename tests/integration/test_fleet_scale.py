"""A fleet of thousands of workers on a real Mosquitto: their heartbeats must not slow real traffic, and a flood
of made-up worker ids is bounded by ``pools.<name>.max_workers``.

The fleet is cheap: one paho client publishes the retained heartbeats of every id, spread over the interval,
and one subscriber takes every worker's inbox, so each forward is seen whoever the balancer picked.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest

from mqttlb.commands.broker import PrivateBroker

from .conftest import Client, RouterProcess, wait_for
from .test_metrics import METRICS, endpoint, scrape

pytestmark = pytest.mark.integration

RATE, SECONDS, DEVICES = 300, 10, 500
"""Real traffic: messages a second, for how long, from how many devices."""
GRACE = 2.0
"""Seconds after the last message is sent within which the 95% must have arrived."""


class FakeFleet:
    """The retained heartbeats of ``ids``, each every ``interval`` seconds, from one client in small bursts."""

    def __init__(self, broker: PrivateBroker, ids: list[str], *, interval: float = 2.5, pool: str = "default",
                 client_id: str = "fake-fleet") -> None:
        self.ids, self.interval, self.pool = ids, interval, pool
        self.beats = 0
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self._client.max_queued_messages_set(0)
        self._client.connect(broker.host, broker.port, 30)
        self._client.loop_start()
        wait_for(self._client.is_connected, what="fake fleet connected")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeFleet:
        self._thread.start()
        return self

    def _run(self) -> None:
        bursts = 10  # per interval: a burst every 0.25 s
        per_burst = -(-len(self.ids) // bursts)
        while not self._stop.is_set():
            for burst in range(bursts):
                started = time.monotonic()
                for worker in self.ids[burst * per_burst:(burst + 1) * per_burst]:
                    beat = {"worker": worker, "pool": self.pool, "inflight": self.beats % 5, "interval": self.interval}
                    self._client.publish(f"mqttlb/workers/{worker}/heartbeat", orjson.dumps(beat), 0, retain=True)
                    self.beats += 1
                if self._stop.wait(max(0.0, self.interval / bursts - (time.monotonic() - started))):
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.disconnect()
        self._client.loop_stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def workers_up(base: str) -> float:
    return scrape(base).get(("mqttlb_workers", (("pool", "default"), ("state", "up"))), 0.0)


def traffic(clients, inboxes: Client, seconds: float) -> tuple[float, float]:
    """Route every device once, then send ``RATE`` messages a second for ``seconds`` from ``DEVICES`` devices:
    the share delivered within ``GRACE`` of the last one, and the p99 latency at the receivers, in seconds."""
    devices = clients(Client, "devices")
    for n in range(DEVICES):  # consistent_hash picks each new key once among every worker: not what is measured
        devices.publish(f"devices/d{n}/telemetry", orjson.dumps({"n": -1, "sent": time.monotonic()}))
    wait_for(lambda: len(inboxes.messages()) >= DEVICES, what="every device routed once")
    count = int(RATE * seconds)
    start = time.monotonic()
    for n in range(count):
        delay = start + n / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body = orjson.dumps({"n": n, "sent": time.monotonic()})
        devices.client.publish(f"devices/d{n % DEVICES}/telemetry", body, 1)
    window = time.monotonic() + GRACE
    wait_for(lambda: len(inboxes.messages()) >= DEVICES + count or time.monotonic() > window,
             timeout=GRACE + 5, what="the window to close")
    received = [m for m in inboxes.messages() if m.timestamp <= window and orjson.loads(m.payload)["n"] >= 0]
    latencies = sorted(m.timestamp - orjson.loads(m.payload)["sent"] for m in received)
    delivered = len({orjson.loads(m.payload)["n"] for m in received}) / count
    return delivered, latencies[int(len(latencies) * 0.99)] if latencies else float("inf")


FLEET = 5000
"""Fake workers beating every 2.5 s: the issue's figure."""


def test_thousands_of_workers_beating_leave_real_traffic_flowing(make_router, clients, broker):
    router: RouterProcess = make_router(heartbeat={"timeout": "8s"}, metrics=METRICS, stats={"interval": "1s"})
    base = endpoint(router)
    inboxes = clients(Client, "inboxes")
    inboxes.subscribe("mqttlb/workers/+/in/#", 1)
    fleet = FakeFleet(broker, [f"fake-{i:04d}" for i in range(FLEET)]).start()
    try:
        wait_for(lambda: workers_up(base) == FLEET, timeout=30, what=f"{FLEET:,} healthy workers")
        samples = scrape(base)
        assert not any(name.startswith("mqttlb_worker_") for name, _ in samples)  # too many to list one by one
        delivered, p99 = traffic(clients, inboxes, SECONDS)
        rss = rss_mib(router.process.pid)
        assert fleet.beats > FLEET * (SECONDS / fleet.interval)  # the fleet beat all along
    finally:
        fleet.close()
    print(f"\n{FLEET:,} workers, {RATE} msg/s: delivered {delivered:.1%}, p99 {p99 * 1000:.1f} ms, RSS {rss:.1f} MiB")
    assert delivered >= 0.95
    assert p99 <= 0.100
    assert rss < 200
    assert workers_up(base) == FLEET  # no one timed out under the load


def test_a_flood_of_new_worker_ids_beyond_max_workers_is_ignored_and_counted(make_router, clients, broker):
    router: RouterProcess = make_router(heartbeat={"timeout": "8s"}, metrics=METRICS,
                                        pools={"default": {"max_workers": 50}})
    base = endpoint(router)
    inboxes = clients(Client, "inboxes")
    inboxes.subscribe("mqttlb/workers/+/in/#", 1)
    stats = clients(Client, "stats")
    stats.subscribe("mqttlb/stats", 0)
    flood = FakeFleet(broker, [f"fake-{i:04d}" for i in range(2000)], interval=1.0).start()
    try:
        refused = ("mqttlb_heartbeats_refused_total", (("pool", "default"), ("reason", "max_workers")))
        wait_for(lambda: scrape(base).get(refused, 0) >= 1950, timeout=20, what="the flood refused")
        samples = scrape(base)
        assert sum(value for (name, labels), value in samples.items()
                   if name == "mqttlb_workers" and ("pool", "default") in labels) == 50
        devices = clients(Client, "devices")
        for n in range(100):
            devices.publish(f"devices/d{n}/telemetry", orjson.dumps({"n": n}))
        wait_for(lambda: len(inboxes.messages()) >= 100, what="every message routed")
    finally:
        flood.close()
    figures = wait_for(lambda: [orjson.loads(m.payload) for m in stats.messages()
                                if orjson.loads(m.payload)["heartbeats_refused"]], what="stats with refusals")[-1]
    assert figures["heartbeats_refused"]["default"]["max_workers"] >= 1950
    assert sum(figures["pools"]["default"].values()) == 50
    assert sum("ignoring heartbeat" in line for line in router.lines) <= 3  # rate-limited, not one per id


STORM_RATE, STORM_IDS = 20_000, 5
"""Heartbeats a second, from how many worker ids: a worker gone mad, or someone who wants the router busy."""


def test_a_storm_of_heartbeats_never_holds_back_forwards(make_router, clients, broker):
    router: RouterProcess = make_router(heartbeat={"timeout": "8s"}, stats={"interval": "1s"})
    inboxes = clients(Client, "inboxes")
    inboxes.subscribe("mqttlb/workers/+/in/#", 1)
    storms = [subprocess.Popen(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "0", "-l",
                                "-t", f"mqttlb/workers/storm-{i}/heartbeat"], stdin=subprocess.PIPE)
              for i in range(STORM_IDS)]
    stop = threading.Event()
    sent_beats = [0]

    def storm() -> None:  # STORM_RATE a second, in tenths, spread over the ids
        per_tenth = STORM_RATE // 10 // STORM_IDS
        while not stop.wait(0.1):
            for i, process in enumerate(storms):
                assert process.stdin is not None
                lines = b"".join(orjson.dumps({"worker": f"storm-{i}", "inflight": n % 7}) + b"\n"
                                 for n in range(per_tenth))
                process.stdin.write(lines)
                process.stdin.flush()
                sent_beats[0] += per_tenth

    storming = threading.Thread(target=storm, daemon=True)
    storming.start()
    try:
        seconds = 5
        delivered, p99 = traffic(clients, inboxes, seconds)
        assert sent_beats[0] >= STORM_RATE * seconds * 0.8  # the storm blew all along
    finally:
        stop.set()
        storming.join(5)
        for process in storms:
            process.kill()
            process.communicate()  # closes its stdin
    assert router.process.poll() is None
    print(f"\n{STORM_RATE} heartbeats/s from {STORM_IDS} ids, {RATE} msg/s: delivered {delivered:.1%}, "
          f"p99 {p99 * 1000:.1f} ms")
    assert delivered >= 0.95
    assert p99 <= 0.5  # about 30 ms on an idle machine; the old transport: 5.8 s, and 20% delivered
