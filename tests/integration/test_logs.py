"""The router's log: one JSON object per line with ``--log-format json``, and bad input logged once per
interval however much of it comes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from .conftest import ROOT, Client, TestWorker, wait_for, write_config

pytestmark = pytest.mark.integration


def test_json_log_lines_and_rate_limited_bad_input(broker, clients, tmp_path):
    routes = [{"name": "events", "match": "events/+", "key": "payload.id", "algorithm": "consistent_hash"}]
    config = write_config(tmp_path / "router.yaml", broker, routes=routes)
    process = subprocess.Popen([sys.executable, "-m", "mqttlb", "run", "-c", str(config), "--log-format", "json"],
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
    reader.start()
    try:
        clients(TestWorker, "w1")
        dead = clients(Client, "dead-watch")
        dead.subscribe("mqttlb/deadletter/#")
        device = clients(Client, "device")
        wait_for(lambda: any("routing link connected" in line for line in lines), what="the router ready")
        for n in range(50):
            device.publish("events/e1", b"not json")
            device.publish(f"mqttlb/workers/w{n}/heartbeat", b"{", qos=0)  # each on an id of its own
        wait_for(lambda: len(dead.messages()) == 50, what="50 dead letters")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(5)
    process.stderr.close()

    entries = [json.loads(line) for line in lines]
    assert all(set(entry) == {"ts", "level", "logger", "msg"} for entry in entries)
    assert {entry["level"] for entry in entries} <= {"info", "warning"}
    dead_letters = [e for e in entries if e["msg"].startswith("dead letter (bad_key) on route events")]
    heartbeats = [e for e in entries if e["msg"].startswith("ignoring heartbeat on mqttlb/workers/w")]
    assert len(dead_letters) == 1 and dead_letters[0]["level"] == "warning"
    assert len(heartbeats) == 1 and heartbeats[0]["logger"] == "mqttlb.router"
    assert entries[-1]["msg"] == "stopped"
