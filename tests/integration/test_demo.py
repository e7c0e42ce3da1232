"""The newcomer's first ten minutes: `mqttlb demo` and `mqttlb simulate` end to end."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import orjson
import pytest

from .conftest import ROOT, Client, wait_for

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    result = subprocess.run([sys.executable, "-m", "mqttlb", "demo"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "lost 0" in out
    assert "all of them were w1's: yes" in out
    assert "devices of the other workers stayed where they were: yes" in out
    assert "failover:" in out
    workdir = next(line.split("logs in ")[1] for line in out.splitlines() if "logs in " in line)
    leftovers = subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True)
    assert leftovers.stdout == "", "the demo left processes running"


def test_simulate_publishes_sequenced_messages_to_the_routes_topics(broker, make_router, tmp_path) -> None:
    router = make_router()
    watcher = Client(broker, "watcher")
    try:
        watcher.subscribe("devices/#")
        wait_for(lambda: watcher.client.is_connected(), what="watcher")
        result = subprocess.run([sys.executable, "-m", "mqttlb", "simulate", "-c", str(router.config_path),
                                 "--devices", "5", "--rate", "200", "--duration", "1"],
                                capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert result.returncode == 0, result.stderr
        sent = int(result.stdout.split("sent ")[1].split()[0])
        assert "from 5 devices" in result.stdout and 150 <= sent <= 250
        wait_for(lambda: len(watcher.messages()) == sent, what="every simulated message")
        seqs: dict[str, list[int]] = defaultdict(list)
        for message in watcher.messages():
            body = orjson.loads(message.payload)
            assert message.topic.split("/")[1] == body["device"]
            assert message.topic.endswith("/telemetry") or message.topic.endswith("/logs/data")
            seqs[message.topic].append(body["seq"])
        assert all(s == list(range(len(s))) for s in seqs.values())
    finally:
        watcher.close()
