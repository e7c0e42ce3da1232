"""Reclaim: what a dead worker left in its broker session reaches a live one, in each device's order.

Real router processes, real worker processes (``mqttlb.Worker``, whose
heartbeats name its session), real faults; every message is counted by id at
the receivers, and each device's messages are checked for order at every
worker that took them over. Run with the fault suite: ``pytest -m faults``.
"""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict

import orjson
import pytest

from .conftest import Client, WorkerProcess, wait_for
from .test_faults import FAST_STATS, Publisher, accounted, router_sees_up, watch

pytestmark = [pytest.mark.integration, pytest.mark.faults]

QUICK = {"after": "1s", "wait": "30s"}


def inversions(worker: WorkerProcess) -> int:
    """Messages ``worker`` handled before an older one of the same device (first deliveries only)."""
    seen: set[int] = set()
    newest: dict[str, int] = defaultdict(lambda: -1)
    inverted = 0
    for line in worker.handled():
        message = orjson.loads(line)
        if message["id"] in seen:
            continue  # a duplicate: at-least-once allows it
        seen.add(message["id"])
        if message["seq"] < newest[message["device"]]:
            inverted += 1
        newest[message["device"]] = max(newest[message["device"]], message["seq"])
    return inverted


def reclaimed_line(router) -> str:
    router.wait_log("messages from worker w1's session", timeout=60)
    return next(line for line in router.lines if "messages from worker w1's session" in line)


def test_a_worker_that_stalls_times_out_and_dies_loses_nothing_and_keeps_each_devices_order(
        make_router, clients, worker_processes):
    router = make_router(heartbeat={"timeout": "2s"}, reclaim=QUICK, stats=FAST_STATS)
    stats = watch(clients, "mqttlb/stats")
    w1, w2, w3 = (worker_processes(f"w{i}") for i in (1, 2, 3))
    wait_for(router_sees_up(stats, "w1", "w2", "w3"), what="the router knows the three workers")
    publisher = Publisher(clients(Client, "device"), devices=300, rate=600).start()
    time.sleep(2.0)
    w1.signal(signal.SIGSTOP)  # it stalls: its messages queue in its session
    router.wait_log("worker w1 of pool default is silent")
    router.wait_log("took over worker w1's session")
    w1.signal(signal.SIGKILL)  # and dies for good
    line = reclaimed_line(router)
    time.sleep(2.0)
    sent = publisher.stop()
    assert len(sent) >= 600 * 5
    lost, _ = accounted("stall, timeout, death", sent, [w1, w2, w3])
    assert lost == 0
    print(line)
    assert int(re.search(r"reclaimed (\d+) messages", line).group(1)) > 0  # type: ignore[union-attr]
    assert (inversions(w2), inversions(w3)) == (0, 0), router.log()


def test_a_worker_killed_with_a_backlog_is_reclaimed_without_a_restart(make_router, clients, worker_processes):
    router = make_router(heartbeat={"timeout": "2s"}, reclaim=QUICK, stats=FAST_STATS)
    stats = watch(clients, "mqttlb/stats")
    w1 = worker_processes("w1", delay=0.005)  # handles 200 msg/s and is sent about 500: a backlog builds
    w2, w3 = worker_processes("w2"), worker_processes("w3")
    wait_for(router_sees_up(stats, "w1", "w2", "w3"), what="the router knows the three workers")
    publisher = Publisher(clients(Client, "device"), devices=300, rate=1500).start()
    time.sleep(8.0)
    w1.signal(signal.SIGKILL)
    line = reclaimed_line(router)
    time.sleep(1.0)
    sent = publisher.stop()
    lost, _ = accounted("SIGKILL with a backlog, never restarted", sent, [w1, w2, w3], timeout=60)
    assert lost == 0
    print(line)
    count = int(re.search(r"reclaimed (\d+) messages", line).group(1))  # type: ignore[union-attr]
    assert count >= 1000, line
    assert (inversions(w2), inversions(w3)) == (0, 0), router.log()


def test_a_worker_that_returns_in_the_middle_of_its_reclaim_loses_nothing(broker, make_router, clients,
                                                                          worker_processes):
    router = make_router(heartbeat={"timeout": "2s"}, reclaim={"after": "2s"}, stats=FAST_STATS)
    stats = watch(clients, "mqttlb/stats")
    w1 = worker_processes("w1")
    w2 = worker_processes("w2")
    wait_for(router_sees_up(stats, "w1", "w2"), what="the router knows both workers")
    w1.signal(signal.SIGKILL)
    router.wait_log("worker w1 of pool default is down")
    device = clients(Client, "device")
    sent = []
    for n in range(30000):  # what the router had forwarded to w1: queued in its session
        payload = orjson.dumps({"id": n, "device": f"d{n % 100}", "seq": n // 100})
        device.client.publish(f"mqttlb/workers/w1/in/devices/d{n % 100}/telemetry", payload, qos=1)
        sent.append(payload)
    router.wait_log("took over worker w1's session", timeout=30)
    back = worker_processes("w1")
    router.wait_log("worker w1 is back", timeout=30)
    lost, duplicates = accounted("a worker back during its reclaim", sent, [w1, w2, back], timeout=60)
    assert lost == 0
    assert "messages from worker w1's session" not in router.log(), "the reclaim ended before w1 came back"
    assert len(w2.handled()) > 0 and len(back.handled()) > 0
    print(next(line for line in router.lines if "went while it was being reclaimed" in line))
    assert duplicates < len(sent) // 5  # what the broker had sent the reclaim link, unacknowledged, goes to w1 too


def test_a_router_of_a_share_group_killed_for_good_loses_nothing(make_router, clients, worker_processes):
    """Mosquitto keeps queueing a dead member's share in its session: the live router reclaims it."""
    group = {"share_group": "mqttlb"}
    survivor = make_router(name="a", router=group, reclaim=QUICK, stats={"topic": "mqttlb/stats/a"})
    doomed = make_router(name="b", router=group, reclaim=QUICK, stats={"topic": "mqttlb/stats/b"})
    workers = [worker_processes(f"w{i}") for i in (1, 2)]
    stats = watch(clients, "mqttlb/stats/a")
    wait_for(router_sees_up(stats, "w1", "w2"), what="the routers know both workers")
    publisher = Publisher(clients(Client, "device"), devices=100, rate=600).start()
    time.sleep(2.0)
    doomed.kill()  # SIGKILL, never restarted: its share queues in its session
    survivor.wait_log("router mqttlb-test-b is down")
    survivor.wait_log("messages from router mqttlb-test-b's session", timeout=30)  # while the devices publish
    time.sleep(1.0)
    sent = publisher.stop()
    lost, duplicates = accounted("a share-group router killed for good", sent, workers, timeout=60)
    assert lost == 0
    line = next(line for line in survivor.lines if "messages from router mqttlb-test-b's session" in line)
    print(line)
    assert int(re.search(r"reclaimed (\d+) messages", line).group(1)) > 0  # type: ignore[union-attr]


def test_with_two_routers_one_reclaims_a_dead_workers_session_and_the_other_waits_for_it(
        make_router, clients, worker_processes):
    group = {"share_group": "mqttlb"}
    routers = [make_router(name=name, router=group, heartbeat={"timeout": "2s"}, reclaim=QUICK,
                           stats={"topic": f"mqttlb/stats/{name}"}) for name in ("a", "b")]
    stats = watch(clients, "mqttlb/stats/a")
    w1 = worker_processes("w1", delay=0.005)
    w2, w3 = worker_processes("w2"), worker_processes("w3")
    wait_for(router_sees_up(stats, "w1", "w2", "w3"), what="the routers know the three workers")
    publisher = Publisher(clients(Client, "device"), devices=300, rate=1200).start()
    time.sleep(5.0)
    w1.signal(signal.SIGKILL)
    for router in routers:
        router.wait_log("worker w1 of pool default is down")
    wait_for(lambda: sum("messages from worker w1's session" in router.log() for router in routers) == 1,
             timeout=30, what="one router reclaimed w1's session")
    wait_for(lambda: sum("was reclaimed by router" in router.log() for router in routers) == 1,
             timeout=30, what="the other router saw it done")
    time.sleep(1.0)
    sent = publisher.stop()
    lost, _ = accounted("two routers, a dead worker", sent, [w1, w2, w3], timeout=60)
    assert lost == 0
    assert (inversions(w2), inversions(w3)) == (0, 0)


def test_a_worker_that_dies_while_no_router_runs_is_reclaimed_by_the_next(make_router, clients, worker_processes):
    """Its will is all the next router hears of it. The will named no session, and a worker first heard down
    made no departure, so what it held stayed in its session for good: 62 of 200 messages, in a probe."""
    config = {"heartbeat": {"timeout": "2s"}, "reclaim": QUICK, "stats": FAST_STATS}
    router = make_router(**config)
    stats = watch(clients, "mqttlb/stats")
    w1 = worker_processes("w1", delay=0.02)  # 50 msg/s: a backlog builds in its session
    w2 = worker_processes("w2")
    wait_for(router_sees_up(stats, "w1", "w2"), what="the router knows both workers")
    publisher = Publisher(clients(Client, "device"), devices=50, rate=200).start()
    time.sleep(3.0)
    sent = publisher.stop()
    assert router.stop() == 0
    w1.signal(signal.SIGKILL)  # no router hears it die: its will is retained
    restarted = make_router(**config)  # the same client id, a new process
    line = reclaimed_line(restarted)
    lost, _ = accounted("a worker dead before the router started", sent, [w1, w2], timeout=60)
    assert lost == 0
    assert "worker w1" in line


def test_a_message_too_long_to_forward_in_a_dead_workers_session_is_a_dead_letter(make_router, clients,
                                                                                  worker_processes):
    """A reclaim link reads past what is too long to forward (here published straight to the worker's inbox), as
    the routing link does (``test_dead_letters`` measures the memory): the reclaim takes it as a dead letter
    and goes on."""
    router = make_router(heartbeat={"timeout": "2s"}, reclaim=QUICK, stats=FAST_STATS)
    stats = watch(clients, "mqttlb/stats")
    dead = watch(clients, "mqttlb/deadletter/#")
    w1 = worker_processes("w1")
    wait_for(router_sees_up(stats, "w1"), what="the router knows w1")
    w1.signal(signal.SIGSTOP)  # its session keeps what comes from now on
    sender = clients(Client, "inbox-writer")
    sender.publish("mqttlb/workers/w1/in/devices/d1/telemetry", bytes(2 << 20))
    sender.publish("mqttlb/workers/w1/in/devices/d1/telemetry", orjson.dumps({"id": 1, "device": "d1", "seq": 0}))
    w1.signal(signal.SIGKILL)
    w2 = worker_processes("w2")
    line = reclaimed_line(router)
    [letter] = wait_for(dead.messages, timeout=30, what="the dead letter")
    assert (letter.topic, letter.payload) == ("mqttlb/deadletter/too_large/devices/d1/telemetry", b"")
    assert f"{2 << 20} bytes > 262144" in dict(letter.properties.UserProperty)["mqttlb-reason"]
    wait_for(lambda: [orjson.loads(m)["id"] for m in w2.handled()] == [1], what="the small one at w2")
    assert "reclaimed 2 messages" in line
