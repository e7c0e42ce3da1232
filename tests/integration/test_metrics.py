"""``/metrics`` and ``/healthz`` of a live router: figures that agree with what the workers received, health
that follows the workers and the broker, and the container's health check that asks it."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROOT, Client, RouterProcess, TestWorker, wait_for

pytestmark = pytest.mark.integration

METRICS = {"listen": "127.0.0.1:0"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def endpoint(router: RouterProcess) -> str:
    """The router's metrics address, from its log: it listens on a free port."""
    router.wait_log("serving /metrics")
    line = next(line for line in router.lines if "serving /metrics" in line)
    found = re.search(r"http://[\w.:\[\]]+", line)
    assert found is not None, line
    return found.group(0)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(base: str) -> Samples:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, text = get(base + "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def forwarded(samples: Samples) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in samples.items():
        if name == "mqttlb_forwarded_total":
            found[(dict(labels)["route"], dict(labels)["worker"])] = int(value)
    return found


def received(workers: list[TestWorker]) -> Counter[tuple[str, str]]:
    """(route, worker) -> messages the worker received, by the route the forward names."""
    got: Counter[tuple[str, str]] = Counter()
    for worker in workers:
        for message in worker.messages():
            got[(dict(message.properties.UserProperty)["mqttlb-route"], worker.worker_id)] += 1
    return got


def test_metrics_agree_with_what_the_workers_received(make_router, clients):
    workers = [clients(TestWorker, f"w{i}") for i in range(3)]
    router = make_router(metrics=METRICS, stats={"interval": "200ms"}, dead_letter={"max_payload": 100})
    base = endpoint(router)
    stats = clients(Client, "stats-watch")
    stats.subscribe("mqttlb/stats")
    device = clients(Client, "device")
    for n in range(120):
        device.publish(f"devices/d{n % 12}/telemetry", orjson.dumps({"n": n}))
    for n in range(60):
        device.publish(f"devices/d{n % 5}/logs/app", orjson.dumps({"n": n}))
    for _ in range(4):
        device.publish("devices/d1/telemetry", b"x" * 200)  # over max_payload
    wait_for(lambda: sum(received(workers).values()) == 180, what="180 forwards")
    expected = received(workers)
    assert {route for route, _ in expected} == {"telemetry", "logs"}

    wait_for(lambda: forwarded(scrape(base)) == expected, what="/metrics to count what the workers received")
    samples = scrape(base)
    assert samples[("mqttlb_dead_letters_total", (("reason", "too_large"), ("route", "telemetry")))] == 4
    assert samples[("mqttlb_forward_seconds_count", ())] == 180
    assert samples[("mqttlb_forward_seconds_bucket", (("le", "+Inf"),))] == 180
    assert 0 < samples[("mqttlb_forward_seconds_sum", ())] < 180 * 1.0
    assert samples[("mqttlb_connected", ())] == 1
    assert samples[("mqttlb_workers", (("pool", "default"), ("state", "up")))] == 3
    assert samples[("mqttlb_held_messages", ())] == 0
    assert samples[("mqttlb_inbound_unacked_max", ())] == 1000
    assert 1 <= samples[("mqttlb_inbound_unacked_peak", ())] <= 1000
    for worker in workers:
        labels = (("pool", "default"), ("worker", worker.worker_id))
        assert samples[("mqttlb_worker_inflight", labels)] == 0
        assert samples[("mqttlb_worker_heartbeat_age_seconds", labels)] < 2.0  # they beat every 0.5 s
        assert samples[("mqttlb_worker_state", (("pool", "default"), ("state", "up"),
                                                 ("worker", worker.worker_id)))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 0

    # The stats topic carries the same figures.
    wait_for(lambda: stats.messages() and orjson.loads(stats.messages()[-1].payload)["forwarded"] == {
        route: {w: n for (r, w), n in expected.items() if r == route} for route in ("telemetry", "logs")},
        what="the stats topic to count the same")
    assert get(base + "/nothing")[0] == 404


def test_healthz_flips_when_the_last_worker_of_a_routed_pool_dies(make_router, clients):
    # Every route uses pool "edge": "default", always configured, has no worker and must not count.
    routes = [{"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device", "pool": "edge"}]
    router = make_router(metrics=METRICS, routes=routes)
    base = endpoint(router)
    wait_for(lambda: get(base + "/healthz") == (503, "no healthy worker in pool edge\n"), what="no worker yet")

    w1, w2 = clients(TestWorker, "w1", pool="edge"), clients(TestWorker, "w2", pool="edge")
    wait_for(lambda: get(base + "/healthz") == (200, "ok\n"), what="healthy with workers")
    assert health_check(base) == 0

    w1.kill()  # the broker publishes its will: down
    wait_for(lambda: state_of(scrape(base), "w1") == "down", what="w1 down")
    assert get(base + "/healthz") == (200, "ok\n")  # w2 still serves the pool

    w2.kill()
    wait_for(lambda: get(base + "/healthz")[0] == 503, what="unhealthy without a worker")
    assert get(base + "/healthz") == (503, "no healthy worker in pool edge\n")
    assert health_check(base) != 0


def state_of(samples: Samples, worker: str) -> str | None:
    """The state /metrics gives ``worker``, whatever its pool (a will names none)."""
    return next((dict(labels)["state"] for (name, labels), value in samples.items()
                 if name == "mqttlb_worker_state" and dict(labels)["worker"] == worker and value == 1), None)


def health_check(base: str) -> int:
    """The Dockerfile's HEALTHCHECK command, pointed at ``base`` instead of the container's port 9108."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.MULTILINE)
    assert found is not None
    command = json.loads(found.group(1))
    assert command[0] == "python" and "http://127.0.0.1:9108/healthz" in command[-1]
    command = [sys.executable, *command[1:-1], command[-1].replace("http://127.0.0.1:9108", base)]
    return subprocess.run(command, capture_output=True, timeout=30).returncode


def test_healthz_fails_while_the_broker_is_away(broker, make_router, clients):
    clients(TestWorker, "w1")
    router = make_router(metrics=METRICS)
    base = endpoint(router)
    wait_for(lambda: get(base + "/healthz")[0] == 200, what="healthy")

    broker.stop()
    status, reason = wait_for(lambda: (found := get(base + "/healthz"))[0] == 503 and found, what="unhealthy")
    assert reason.startswith("not connected to the broker")
    assert scrape(base)[("mqttlb_connected", ())] == 0

    broker.start()
    wait_for(lambda: get(base + "/healthz")[0] == 200, timeout=20, what="healthy again")
    assert scrape(base)[("mqttlb_reconnects_total", ())] >= 2  # both connections


def test_a_metrics_port_in_use_stops_the_router_at_start(make_router):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        router = make_router(wait=False, metrics={"listen": f"127.0.0.1:{port}"})
        wait_for(lambda: router.process.poll() is not None, what="the router to exit")
    assert router.stop() == 1
    assert f"metrics.listen 127.0.0.1:{port}: " in router.log() and "in use" in router.log()
