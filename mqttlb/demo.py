"""``mqttlb demo``: the whole system on this machine in well under a minute.

A private Mosquitto, the router, three workers (w3 with weight 2) and a
simulated fleet; after a few seconds w1 is killed with SIGKILL and the summary
shows its devices moving to the others while every other device stays where it
was, with nothing lost. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import yaml

from . import config as config_module
from .broker import PrivateBroker, find_mosquitto, mosquitto_dir
from .simulate import Simulator
from .transport import Client, Inbound

WORKERS = {"w1": 1.0, "w2": 1.0, "w3": 2.0}
VICTIM = "w1"
DEVICES, RATE = 100, 400.0
BEFORE, AFTER = 6.0, 6.0


class Observer:
    """Records what the broker delivers to each worker's inbox (worker, device, route, payload, time)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str, str, bytes, float]] = []
        self.heartbeats: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, message: Inbound) -> None:
        levels = message.topic.split("/")
        if levels[-1] == "heartbeat":
            self.heartbeats.add(levels[2])
            return
        worker, device, route = levels[2], levels[5], levels[6]
        with self._lock:
            self.deliveries.append((worker, device, route, message.payload, time.monotonic()))

    def snapshot(self) -> list[tuple[str, str, str, bytes, float]]:
        with self._lock:
            return list(self.deliveries)


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _write_config(workdir: Path, broker: PrivateBroker) -> Path:
    data = yaml.safe_load((mosquitto_dir().parent / "config" / "mqttlb.yaml").read_text())
    data["broker"].update(host=broker.host, port=broker.port, client_id="mqttlb-demo")
    data["heartbeat"]["timeout"] = "2s"
    data["metrics"] = {"listen": None}
    path = workdir / "mqttlb.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mqttlb", *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def main(args: argparse.Namespace) -> int:
    try:
        find_mosquitto()
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="mqttlb-demo-") as tmp:
        workdir = Path(tmp)
        processes: dict[str, subprocess.Popen[bytes]] = {}
        with PrivateBroker(workdir=workdir) as broker:
            try:
                return _run(workdir, broker, processes)
            finally:
                for process in processes.values():
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                for process in processes.values():
                    try:
                        process.wait(15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()


def _run(workdir: Path, broker: PrivateBroker, processes: dict[str, subprocess.Popen[bytes]]) -> int:
    config_path = _write_config(workdir, broker)
    config = config_module.load(config_path)
    print(f"demo: private Mosquitto on {broker.host}:{broker.port}; logs in {workdir}")
    observer = Observer()
    watch = Client(config.broker, "mqttlb-demo-observer", on_message=observer)
    watch.subscribe("mqttlb/workers/+/in/#", 1)
    watch.subscribe("mqttlb/workers/+/heartbeat", 0)
    watch.start()
    for worker, weight in WORKERS.items():
        processes[worker] = _spawn(["worker", "--id", worker, "--weight", str(weight), "--interval", "0.5",
                                    "-c", str(config_path)], workdir / f"{worker}.log")
    _wait(lambda: observer.heartbeats >= set(WORKERS), 15, "the workers' heartbeats")
    router_log = workdir / "router.log"
    processes["router"] = _spawn(["run", "-c", str(config_path)], router_log)
    _wait(lambda: "routing link connected" in router_log.read_text(errors="replace"), 15, "the router")
    print(f"demo: router and workers {', '.join(WORKERS)} up; {DEVICES} devices publishing {RATE:.0f} msg/s")

    simulator = Simulator(config, DEVICES, RATE, qos=1)
    thread = threading.Thread(target=simulator.run, daemon=True)
    start = time.monotonic()
    thread.start()
    time.sleep(BEFORE)
    processes[VICTIM].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    print(f"demo: killed {VICTIM} with SIGKILL at {killed - start:.1f} s")
    time.sleep(AFTER)
    simulator.stop()
    thread.join(20)
    _wait(lambda: len(observer.snapshot()) >= simulator.sent, 20, "every message delivered")
    watch.stop()
    return _summary(observer.snapshot(), simulator.sent, killed, time.monotonic() - start)


def _summary(deliveries: list[tuple[str, str, str, bytes, float]], sent: int, killed: float, took: float) -> int:
    owner_before: dict[str, str] = {}
    owners_after: dict[str, set[str]] = defaultdict(set)
    messages: dict[str, int] = defaultdict(int)
    first_moved: float | None = None
    for worker, device, route, _, at in sorted(deliveries, key=lambda d: d[4]):
        messages[worker] += 1
        if route != "telemetry":
            continue  # the round-robin route has no affinity to show
        if at < killed:
            owner_before[device] = worker
        elif worker != VICTIM:
            owners_after[device].add(worker)
            if owner_before.get(device) == VICTIM and first_moved is None:
                first_moved = at
    unique = len({d[3] for d in deliveries})
    moved = {d for d, w in owner_before.items() if owners_after.get(d, {w}) != {w}}
    stayed = all(owners_after.get(d, {w}) == {w} for d, w in owner_before.items() if w != VICTIM)
    total = sum(messages.values())
    print("\nworker  weight  devices before  devices after  messages  share")
    for worker, weight in WORKERS.items():
        before = sum(1 for w in owner_before.values() if w == worker)
        after = sum(1 for ws in owners_after.values() if worker in ws)
        print(f"{worker:<6}  {weight:<6g}  {before:>14}  {after:>13}  {messages[worker]:>8}  "
              f"{100 * messages[worker] / max(total, 1):4.1f}%")
    lost = sent - unique
    print(f"\nsent {sent}, delivered {unique}, lost {lost}, duplicates {len(deliveries) - unique} ({took:.0f} s)")
    print(f"{VICTIM} died: its {len(moved)} devices moved to the other workers; all of them were {VICTIM}'s: "
          f"{'yes' if moved <= {d for d, w in owner_before.items() if w == VICTIM} else 'no'}")
    print(f"devices of the other workers stayed where they were: {'yes' if stayed else 'no'}")
    if first_moved is not None:
        print(f"failover: {1000 * (first_moved - killed):.0f} ms from the kill to the first message of a moved "
              f"device at its new worker")
    print("(messages routed to w1 between its death and the broker noticing wait in its persistent session and "
          "count as delivered to it: they come back when it restarts)")
    return 0 if lost == 0 and stayed and moved else 1
