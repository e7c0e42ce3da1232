"""Real faults against a real broker, with every message accounted for.

Each message carries a unique id; at the end every id is classified as
delivered, lost or duplicated. Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

import orjson
import pytest

from .conftest import Client, TestWorker, WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

def telemetry(device: str) -> str:
    return f"devices/{device}/telemetry"


class Publisher:
    """A device fleet publishing unique, sequenced QoS 1 messages at a steady rate on a thread."""

    def __init__(self, client: Client, devices: int, rate: float, topic: Callable[[str], str] = telemetry) -> None:
        self.client, self.devices, self.rate, self.topic = client, devices, rate, topic
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
                self.client.client.publish(self.topic(device), payload, qos=1)
                self.sent.append(payload)
                n += 1
            time.sleep(0.002)

    def stop(self) -> list[bytes]:
        self._stop.set()
        self._thread.join()
        return self.sent


def received(sources: Iterable[TestWorker | WorkerProcess | Client]) -> Counter[bytes]:
    got: Counter[bytes] = Counter()
    for source in sources:
        if isinstance(source, WorkerProcess):
            got.update(source.handled())
        else:
            got.update(m.payload for m in source.messages())
    return got


def account(sent: list[bytes], sources: Iterable[TestWorker | WorkerProcess | Client]) -> tuple[int, int]:
    """(lost, duplicates) of ``sent`` over what ``sources`` received."""
    got = received(sources)
    lost = sum(1 for p in sent if got[p] == 0)
    duplicates = sum(c - 1 for c in got.values() if c > 1)
    return lost, duplicates


def accounted(label: str, sent: list[bytes], sources: list, timeout: float = 30.0) -> tuple[int, int]:
    """Wait until no message of ``sent`` is missing from ``sources``; print and return (lost, duplicates)."""
    wait_for(lambda: account(sent, sources)[0] == 0, timeout=timeout, what=f"{label}: every message")
    lost, duplicates = account(sent, sources)
    print(f"{label}: sent {len(sent)}, lost {lost}, duplicates {duplicates}")
    return lost, duplicates


def watch(clients, topic: str) -> Client:
    client = clients(Client, f"watch-{topic}")
    client.subscribe(topic)
    return client


def held_figures(stats: Client) -> list[dict[str, int]]:
    return [orjson.loads(m.payload)["inbound"] for m in stats.messages()]


def router_sees_up(stats: Client, *workers: str) -> Callable[[], bool]:
    """A condition: the router's latest stats show every one of ``workers`` up."""
    def up() -> bool:
        got = stats.messages()
        known = orjson.loads(got[-1].payload)["workers"] if got else {}
        return all(known.get(w, {}).get("state") == "up" for w in workers)
    return up


def forwarded(stats: Client, route: str, worker: str) -> int:
    """Forwards to ``worker`` on ``route`` the broker has acknowledged, by the router's latest stats."""
    got = stats.messages()
    return orjson.loads(got[-1].payload)["forwarded"].get(route, {}).get(worker, 0) if got else 0


FAST_STATS = {"interval": "100ms"}


# -- the router dies --------------------------------------------------------------------------------


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
    lost, duplicates = accounted("router SIGKILL", publisher.stop(), workers)
    assert lost == 0
    assert duplicates <= 1000  # bounded by the router's in-flight window (router.max_inflight)


# -- the broker restarts ------------------------------------------------------------------------


def test_broker_restart_mid_stream_loses_nothing(broker, make_router, clients, worker_processes):
    workers = [worker_processes(f"w{i}") for i in range(2)]
    make_router(heartbeat={"timeout": "3s"})
    publisher = Publisher(clients(Client, "device"), devices=50, rate=1000).start()
    time.sleep(1.5)
    broker.restart()  # SIGTERM: Mosquitto saves its sessions and queued messages
    time.sleep(2.0)
    assert accounted("broker restart", publisher.stop(), workers, timeout=40)[0] == 0


# -- a worker dies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_a_dead_worker_gets_nothing_new_and_what_it_held_comes_back(fault, make_router, clients, worker_processes):
    """SIGKILL: the broker publishes its will; SIGSTOP: it goes silent and the router times it out."""
    router = make_router(heartbeat={"timeout": "2s"}, stats=FAST_STATS)
    stats = watch(clients, "mqttlb/stats")
    slow = worker_processes("w1", delay=0.005)  # handles 200 msg/s and is sent about 300: a backlog builds
    others = [clients(TestWorker, "w2"), clients(TestWorker, "w3")]
    wait_for(router_sees_up(stats, "w1", "w2", "w3"), what="the router knows the three workers")
    inbox = watch(clients, "mqttlb/workers/w1/in/#")
    publisher = Publisher(clients(Client, "device"), devices=60, rate=900).start()
    time.sleep(2.0)
    slow.signal(signal.SIGKILL if fault == "sigkill" else signal.SIGSTOP)
    router.wait_log("worker w1 of pool default " + ("is down" if fault == "sigkill" else "is silent"))
    first_after = len(publisher.sent)  # published after the router knew: none of them may go to w1
    time.sleep(1.5)
    sent = publisher.stop()
    wait_for(lambda: account(sent[first_after:], others)[0] == 0, timeout=20, what="the rest at w2 and w3")
    # By id, not by how many the inbox holds at some moment: under load the watcher may still be reading forwards
    # routed before the router knew.
    at_w1 = {message.payload for message in inbox.messages()}
    assert set(sent[:first_after]) & at_w1, "w1 got nothing before it died: the ids below would prove nothing"
    late = set(sent[first_after:]) & at_w1
    assert not late, f"{len(late)} messages reached w1 after the router knew it was gone"
    line = next(line for line in router.lines if "worker w1 of pool default" in line)
    found = re.search(r"held about (\d+) messages", line)
    assert found is not None, line
    holding = int(found.group(1))
    assert holding > 0

    if fault == "sigkill":
        sources = [*others, slow, worker_processes("w1")]  # back with its persistent session
    else:
        slow.signal(signal.SIGCONT)
        sources = [*others, slow]
    assert accounted(f"worker {fault} (w1 held about {holding})", sent, sources)[0] == 0


# -- no healthy worker ----------------------------------------------------------------------------


def test_no_worker_within_the_hold_nothing_is_lost_or_dead_lettered(make_router, clients, worker_processes):
    router = make_router(dead_letter={"hold": "10s"}, stats=FAST_STATS)
    stats = watch(clients, "mqttlb/stats")
    dead = watch(clients, "mqttlb/deadletter/#")
    workers = [worker_processes("w1"), worker_processes("w2")]
    wait_for(router_sees_up(stats, "w1", "w2"), what="the router knows both workers")
    publisher = Publisher(clients(Client, "device"), devices=40, rate=500).start()
    wait_for(lambda: all(w.handled() for w in workers), what="both workers handling")
    for worker in workers:
        worker.signal(signal.SIGKILL)
    router.wait_log("worker w1 of pool default is down")
    router.wait_log("worker w2 of pool default is down")
    time.sleep(2.0)  # nobody to route to: the router holds
    workers.append(worker_processes("w1"))  # back within the hold
    time.sleep(1.0)
    sent = publisher.stop()
    workers.append(worker_processes("w2"))  # and w2, for what it held when it died
    assert accounted("no worker within the hold", sent, workers)[0] == 0
    assert dead.messages() == []


def test_no_worker_past_the_hold_every_message_is_dead_lettered_or_delivered(make_router, clients,
                                                                            worker_processes):
    make_router(dead_letter={"hold": "1s"})
    dead = watch(clients, "mqttlb/deadletter/#")
    publisher = Publisher(clients(Client, "device"), devices=40, rate=300).start()
    time.sleep(3.0)  # no worker at all for three holds
    worker = worker_processes("w1")
    time.sleep(1.0)
    lost, _ = accounted("no worker past the hold (dead letters or the worker)", publisher.stop(), [worker, dead])
    reasons = Counter(m.topic.split("/")[2] for m in dead.messages())
    print(f"  dead letters {dict(reasons)}, handled {len(worker.handled())}")
    assert lost == 0
    assert set(reasons) == {"no_worker"} and reasons["no_worker"] >= 300  # the first second's at least
    assert worker.handled()


# -- backpressure ---------------------------------------------------------------------------------


def test_the_router_holds_no_more_than_max_inflight(make_router, clients):
    make_router(router={"max_inflight": 50}, stats=FAST_STATS, dead_letter={"hold": "1m"})
    stats = watch(clients, "mqttlb/stats")
    device = clients(Client, "device")
    for n in range(1000):
        device.client.publish(telemetry(f"d{n % 20}"), orjson.dumps({"id": n}), qos=1)
    wait_for(lambda: any(f["held"] == 50 for f in held_figures(stats)), what="a full window")
    time.sleep(1.0)  # the broker keeps the other 950 while the window is full
    assert held_figures(stats)[-1] == {"unacked": 50, "held": 50, "peak": 50, "max_inflight": 50}
    worker = clients(TestWorker, "w1")
    wait_for(lambda: len(worker.messages()) == 1000, timeout=20, what="all 1000 after the worker came")
    wait_for(lambda: held_figures(stats)[-1]["unacked"] == 0, what="every message settled")
    assert held_figures(stats)[-1]["peak"] == 50


def test_a_pool_without_workers_does_not_stall_the_others(make_router, clients):
    routes = [{"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device",
               "algorithm": "consistent_hash"},
              {"name": "jobs", "match": "jobs/{job}", "algorithm": "round_robin", "pool": "gpu"}]
    make_router(routes=routes, router={"max_inflight": 40, "max_held": 20}, dead_letter={"hold": "1m"},
                stats=FAST_STATS)
    stats = watch(clients, "mqttlb/stats")
    dead = watch(clients, "mqttlb/deadletter/#")
    worker = clients(TestWorker, "w1")
    wait_for(router_sees_up(stats, "w1"), what="the router knows w1")
    device = clients(Client, "device")
    jobs = [orjson.dumps({"job": n}) for n in range(300)]
    readings = [orjson.dumps({"reading": n}) for n in range(300)]
    for job, reading in zip(jobs, readings, strict=True):
        device.client.publish(f"jobs/j{orjson.loads(job)['job']}", job, qos=1)
        device.client.publish(telemetry("d1"), reading, qos=1)
    wait_for(lambda: account(readings, [worker])[0] == 0, timeout=10, what="telemetry past the stuck pool")
    wait_for(lambda: len(dead.messages()) == 280, timeout=10, what="all but max_held jobs dead-lettered")
    gpu = clients(TestWorker, "g1", pool="gpu")
    wait_for(lambda: len(gpu.messages()) == 20, timeout=10, what="the held jobs at the gpu worker")
    assert account(jobs, [gpu, dead]) == (0, 0)
    assert all("router.max_held" in dict(m.properties.UserProperty)["mqttlb-reason"] for m in dead.messages())


def test_a_slow_worker_does_not_stall_the_others(make_router, clients, worker_processes):
    make_router(stats=FAST_STATS)
    stats = watch(clients, "mqttlb/stats")
    slow = worker_processes("slow", delay=0.02)  # 50 msg/s
    fast = clients(TestWorker, "fast")
    wait_for(router_sees_up(stats, "slow", "fast"), what="the router knows both workers")
    device = clients(Client, "device")
    logs = [orjson.dumps({"id": n}) for n in range(600)]
    for n, payload in enumerate(logs):
        device.client.publish(f"devices/d{n}/logs/app", payload, qos=1)  # round robin: 300 each
    wait_for(lambda: sum(received([fast])[p] for p in logs) == 300, timeout=5, what="the fast worker's share")
    assert len(slow.handled()) < 250  # still busy: its backlog waits in its session, not in the router
    wait_for(lambda: account(logs, [fast, slow])[0] == 0, timeout=30, what="the slow worker's share")


# -- restarts and the broker's limits ---------------------------------------------------------------


def test_after_a_router_restart_nothing_goes_to_a_worker_that_died_meanwhile(make_router, clients):
    workers = {w: clients(TestWorker, w) for w in ("w1", "w2")}
    router = make_router(name="r")
    inbox = watch(clients, "mqttlb/workers/w1/in/#")
    assert router.stop() == 0
    workers["w1"].kill()  # its will marks it down while the router is away
    dead = watch(clients, "mqttlb/deadletter/#")
    device = clients(Client, "device")
    sent = [orjson.dumps({"id": n}) for n in range(300)]
    for n, payload in enumerate(sent):
        device.client.publish(telemetry(f"d{n % 50}"), payload, qos=1)
    time.sleep(0.5)
    make_router(name="r")
    wait_for(lambda: account(sent, [workers["w2"]])[0] == 0, timeout=20, what="the queued messages at w2")
    assert inbox.messages() == [] and dead.messages() == []


def test_the_shipped_broker_config_queues_far_beyond_mosquittos_default(make_router, clients, worker_processes):
    """Mosquitto drops QoS 1 messages past max_queued_messages (default 1000) without a word."""
    make_router(stats=FAST_STATS, heartbeat={"timeout": "1m"})  # the paused worker stays healthy
    stats = watch(clients, "mqttlb/stats")
    worker = worker_processes("w1")
    wait_for(router_sees_up(stats, "w1"), what="the router knows the worker")
    worker.signal(signal.SIGSTOP)  # connected, reading nothing: the broker queues for it
    device = clients(Client, "device")
    sent = [orjson.dumps({"id": n}) for n in range(5000)]
    for n, payload in enumerate(sent):
        device.client.publish(telemetry(f"d{n % 20}"), payload, qos=1)
    wait_for(lambda: forwarded(stats, "telemetry", "w1") == 5000, timeout=20, what="all 5000 forwarded")
    worker.signal(signal.SIGCONT)
    wait_for(lambda: account(sent, [worker])[0] == 0, timeout=30, what="all 5000 after the pause")
