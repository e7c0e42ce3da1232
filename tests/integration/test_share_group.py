"""Several routers in a share group split one stream, and agree on every device's worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import defaultdict

import orjson
import pytest

from mqttlb.commands.broker import free_port
from mqttlb.processes import auto_count, too_many

from .conftest import Client, RouterProcess, TestWorker, wait_for, write_config
from .test_faults import Publisher, account

pytestmark = pytest.mark.integration


def test_two_routers_in_a_group_split_the_stream_and_agree_on_every_device(make_router, clients):
    workers = [clients(TestWorker, f"w{i}") for i in range(3)]
    routers = [make_router(name=name, router={"share_group": "mqttlb"}, stats={"topic": f"mqttlb/stats/{name}"})
               for name in ("a", "b")]
    stats = clients(Client, "stats-watch")
    stats.subscribe("mqttlb/stats/+")
    publisher = Publisher(clients(Client, "device"), devices=60, rate=600).start()
    time.sleep(3.0)
    sent = publisher.stop()
    wait_for(lambda: account(sent, workers)[0] == 0, timeout=20, what="every message")
    assert account(sent, workers) == (0, 0)  # nothing lost, nothing twice
    owners: dict[str, set[str]] = defaultdict(set)
    for worker in workers:
        for message in worker.messages():
            owners[orjson.loads(message.payload)["device"]].add(worker.worker_id)
    assert len(owners) == 60 and all(len(ws) == 1 for ws in owners.values())  # the routers agree

    def forwarded_by_each() -> dict[str, int]:
        latest = {m.topic: orjson.loads(m.payload) for m in stats.messages()}
        return {topic: sum(sum(per.values()) for per in figures["forwarded"].values())
                for topic, figures in latest.items()}

    wait_for(lambda: len(forwarded_by_each()) == 2 and sum(forwarded_by_each().values()) == len(sent),
             timeout=15, what="both routers' final counts")
    assert all(count > len(sent) / 5 for count in forwarded_by_each().values())  # the broker split the stream
    assert all(router.process.poll() is None for router in routers)


def test_run_processes_starts_routers_in_the_group_and_stops_them(tmp_path, broker, clients):
    config = write_config(tmp_path / "many.yaml", broker, router={"share_group": "mqttlb"})
    parent = RouterProcess(config, "--processes", "2")
    wait_for(lambda: sum("routing link connected" in line for line in parent.lines) == 2, timeout=15,
             what="both routers connected")
    workers = [clients(TestWorker, f"w{i}") for i in range(2)]
    publisher = Publisher(clients(Client, "device"), devices=30, rate=300).start()
    time.sleep(2.0)
    sent = publisher.stop()
    wait_for(lambda: account(sent, workers)[0] == 0, timeout=20, what="every message")
    assert account(sent, workers) == (0, 0)
    assert {"mqttlb-test-many-0", "mqttlb-test-many-1"} <= set(broker.log().split())  # one session each
    assert parent.stop() == 0
    assert "Traceback" not in parent.log()
    warned = too_many(2, broker.host, os.cpu_count() or 1) is not None  # 2 routers and the broker on 2 cores
    assert ("have no core of their own" in parent.log()) is warned


def test_run_processes_auto_runs_one_router_per_core_the_broker_leaves(tmp_path, broker):
    expected = auto_count(broker.host, os.cpu_count() or 1)
    parent = RouterProcess(write_config(tmp_path / "auto.yaml", broker, router={"share_group": "mqttlb"}),
                           "--processes", "auto")
    wait_for(lambda: sum("routing link connected" in line for line in parent.lines) == expected, timeout=15,
             what=f"{expected} router(s) connected")
    sessions = set(broker.log().split())
    assert ("mqttlb-test-auto" in sessions) is (expected == 1)  # one router: no instance suffix
    assert ("mqttlb-test-auto-0" in sessions) is (expected > 1)
    assert parent.stop() == 0
    assert "have no core of their own" not in parent.log()


def test_run_processes_needs_a_share_group(tmp_path, broker):
    parent = RouterProcess(write_config(tmp_path / "alone.yaml", broker), "--processes", "2")
    assert parent.process.wait(15) == 2
    parent.stop()
    assert "router.share_group: --processes needs a share group" in parent.log()


def running(pattern: str) -> list[int]:
    """The processes whose command line matches ``pattern`` (as the demo's test finds what it left running)."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_router_that_cannot_start_is_started_again_ever_later_and_a_stop_ends_it_for_good(tmp_path, broker):
    """Router 1's metrics port is taken: it exits at once, every time. The parent starts it again after 1 s, then
    2 s, router 0 routes meanwhile, and a SIGTERM while router 1 waits stops the group: it was slept through
    before, and router 1 then started after the signal, was never told to stop, and the parent waited on it."""
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        config = write_config(tmp_path / "crashing.yaml", broker, router={"share_group": "mqttlb"},
                              metrics={"listen": f"127.0.0.1:{port}"})
        parent = RouterProcess(config, "--processes", "2")
        parent.wait_log("router 1 exited with status 1; starting it again in 1 s", timeout=20)
        parent.wait_log("router 1 exited with status 1; starting it again in 2 s", timeout=20)
        assert sum("routing link connected" in line for line in parent.lines) == 1  # router 0 runs on
        assert parent.stop(timeout=10) == 1  # router 1's last exit: it had failed
    restarts = sum("starting it again" in line for line in parent.lines)
    time.sleep(2.5)  # past router 1's next start, had it been left to start
    assert sum("starting it again" in line for line in parent.lines) == restarts
    assert running(str(config)) == []  # no router left behind
    assert "Traceback" not in parent.log()


def test_a_stop_while_a_crashed_router_waits_to_start_again_stops_the_group(tmp_path, broker):
    """Router 1 is SIGKILLed, and the parent told to stop while it waits to start it again: the parent used to
    sleep through that wait, start router 1 after the signal, never tell it to stop, and wait for it forever."""
    config = write_config(tmp_path / "killed.yaml", broker, router={"share_group": "mqttlb"})
    parent = RouterProcess(config, "--processes", "2")
    wait_for(lambda: sum("routing link connected" in line for line in parent.lines) == 2, timeout=15,
             what="both routers connected")
    [second] = running(f"{config} .*--instance 1")
    os.kill(second, signal.SIGKILL)
    parent.wait_log("router 1 exited with status -9; starting it again in 1 s")
    parent.process.send_signal(signal.SIGTERM)
    parent.stop(timeout=10)
    assert running(str(config)) == []
    assert sum("routing link connected" in line for line in parent.lines) == 2  # router 1 was not started again
