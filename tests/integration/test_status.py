"""``mqttlb status`` against a live router and workers: what ``--once``, ``--json`` and the live table show."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from .conftest import ROOT, Client, TestWorker, wait_for, write_config

pytestmark = pytest.mark.integration

FAST_STATS = {"interval": "200ms"}


def status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mqttlb", "status", "-c", str(config), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)


def routed(make_router, clients):
    """Two workers (w2 of weight 2), a router, 100 messages delivered and counted on the stats topic."""
    workers = [clients(TestWorker, "w1"), clients(TestWorker, "w2", weight=2.0)]
    router = make_router(stats=FAST_STATS)
    stats = clients(Client, "stats-watch")
    stats.subscribe("mqttlb/stats")
    device = clients(Client, "device")
    for n in range(100):
        device.publish(f"devices/d{n % 10}/telemetry", orjson.dumps({"n": n}))
    wait_for(lambda: sum(len(w.messages()) for w in workers) == 100, what="100 forwards")
    wait_for(lambda: stats.messages() and sum(orjson.loads(stats.messages()[-1].payload)["forwarded"]
                                              .get("telemetry", {}).values()) == 100, what="counted in the stats")
    return router, workers


def test_once_json_shows_every_worker_with_its_messages_share_and_rate(make_router, clients):
    router, workers = routed(make_router, clients)
    result = status(router.config_path, "--once", "--json")
    assert result.returncode == 0, result.stderr
    view = orjson.loads(result.stdout)

    assert view["router"]["id"] == "mqttlb-test-router"
    assert view["router"]["connected"] is True and view["router"]["stale"] is False
    assert view["router"]["forwarded"] == 100
    assert view["router"]["rate"] == 0.0  # two snapshots, nothing sent between them
    assert view["router"]["inbound"]["unacked"] == 0
    pool = view["pools"]["default"]
    assert (pool["up"], pool["down"]) == (2, 0)
    for worker in workers:
        row = pool["workers"][worker.worker_id]
        assert row["state"] == "up" and row["source"] == "router"
        assert row["weight"] == worker.weight
        assert row["messages"] == len(worker.messages())
        assert row["rate"] == 0.0
        assert row["heartbeat_age"] is not None and row["heartbeat_age"] < 2.0
    assert sum(row["share"] for row in pool["workers"].values()) == pytest.approx(1.0, abs=0.001)


def test_once_prints_a_table_of_the_pools(make_router, clients):
    router, workers = routed(make_router, clients)
    result = status(router.config_path, "--once")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("router mqttlb-test-router: connected, up ")
    assert "forwarded 100, 0.0 msg/s" in lines[1]
    assert "pool default: 2 up" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["WORKER", "STATE"])
    rows = {line.split()[0]: line.split() for line in lines[header + 1:header + 3]}
    for worker in workers:
        assert rows[worker.worker_id][1] == "up"
        assert rows[worker.worker_id][5] == str(len(worker.messages()))


def test_once_without_a_router_shows_the_workers_by_their_heartbeats_and_fails(broker, clients, tmp_path):
    clients(TestWorker, "w1", pool="edge")
    config = write_config(tmp_path / "status.yaml", broker, stats=FAST_STATS)
    result = status(config, "--once", "--json")
    assert result.returncode == 1
    assert "no stats on mqttlb/stats" in result.stderr
    view = orjson.loads(result.stdout)
    assert view["router"] is None
    row = view["pools"]["edge"]["workers"]["w1"]
    assert row["state"] == "up" and row["source"] == "heartbeat" and row["messages"] is None
    assert view["pools"]["default"]["workers"] == {}


def test_live_json_prints_a_line_per_snapshot_until_sigterm(make_router, clients):
    router, _ = routed(make_router, clients)
    process = subprocess.Popen([sys.executable, "-m", "mqttlb", "status", "--json", "-c", str(router.config_path)],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    lines = [process.stdout.readline() for _ in range(3)]
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    process.stdout.close()
    views = [orjson.loads(line) for line in lines]
    assert all(view["router"]["forwarded"] == 100 for view in views)
    assert views[-1]["router"]["rate"] == 0.0


def test_live_on_a_terminal_redraws_in_place(make_router, clients):
    router, _ = routed(make_router, clients)
    main, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "mqttlb", "status", "-c", str(router.config_path)],
                               stdout=terminal, stderr=terminal, cwd=ROOT)
    os.close(terminal)
    shown = bytearray()

    def read() -> None:
        try:
            while chunk := os.read(main, 4096):
                shown.extend(chunk)
        except OSError:  # the terminal closed
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: shown.count(b"\x1b[H\x1b[2J") >= 2, what="two redraws")
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 0
    reader.join(5)
    os.close(main)
    last = bytes(shown).rsplit(b"\x1b[H\x1b[2J", 1)[-1].decode()
    assert last.startswith("router mqttlb-test-router: connected")
    assert "pool default: 2 up" in last


def test_once_shows_the_routers_and_a_dead_workers_session_pending_then_reclaimed(make_router, clients,
                                                                                   worker_processes):
    router = make_router(stats=FAST_STATS, reclaim={"after": "4s"})
    w1, w2 = worker_processes("w1"), worker_processes("w2")
    stats = clients(Client, "stats-watch")
    stats.subscribe("mqttlb/stats")
    wait_for(lambda: stats.messages() and all(orjson.loads(stats.messages()[-1].payload)["workers"]
                                              .get(w, {}).get("state") == "up" for w in ("w1", "w2")),
             what="the router knows both workers")
    w1.signal(signal.SIGKILL)
    router.wait_log("worker w1 of pool default is down")
    device = clients(Client, "device")
    for n in range(200):  # what the router had forwarded to w1: queued in its session
        device.publish(f"mqttlb/workers/w1/in/devices/d{n % 10}/telemetry", orjson.dumps({"n": n}))

    waiting = orjson.loads(status(router.config_path, "--once", "--json").stdout)
    assert waiting["routers"] == {"mqttlb-test-router": {"state": "up", "session": "mqttlb-test-router",
                                                         "reclaiming": []}}
    pending = waiting["reclaim"]["pending"]["worker/w1"]
    assert pending["state"] == "waiting" and pending["session"] == "mqttlb-worker-w1" and pending["devices_wait"]
    assert 0 < pending["gone_for"] < 4.0

    router.wait_log("messages from worker w1's session", timeout=30)
    wait_for(lambda: not orjson.loads(stats.messages()[-1].payload)["reclaim"]["pending"], what="stats say done")
    result = status(router.config_path, "--once")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "routers: 1 up: mqttlb-test-router" in lines
    assert "reclaim: 200 messages reclaimed (worker w1 200), 0 duplicates returned" in lines
    assert "  pending: none" in lines
    wait_for(lambda: len(w2.handled()) >= 200, what="w2 handled what w1 left")
