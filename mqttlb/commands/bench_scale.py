"""``mqttlb bench scale``: does a message cost the same with 3 workers and 100 devices as with 10,000 and 1M?

One private Mosquitto per fleet size. Its workers are fake: one retained
heartbeat each (weight 1, up), published before the router starts, and a
heartbeat timeout of an hour keeps them up. Every worker's forwards are
received by ONE ``mosquitto_sub`` on ``mqttlb/workers/+/in/#`` stamping each
arrival (``%U``), so 10,000 inboxes cost no more than 3. The route is
``consistent_hash`` on a topic level, ``bench/{device}/in``: each message of a
burst goes to a device drawn at random (seeded) from the cell's N ids, so
with 1M devices nearly every pick is one the router's per-device cache has
never seen. With ``--primed`` every device has sent one message through the
router before the burst, and its cache is sized to hold them all: the steady
state of a fleet whose devices keep publishing.

For each cell (workers x devices) and QoS, a fresh ``mqttlb run`` (a session
that ends with it, ready once its stats say all the workers are up) takes a
burst of ``--messages`` published as fast as the socket takes them. The
publisher is ``bench_publisher``'s raw MQTT 3.1.1 client (``mosquitto_pub -l``
has one topic per run, and paho would be the bottleneck): its packets are
built before the clock starts, and at QoS 1 it keeps at most ``WINDOW``
unacknowledged. It reports:

- msg/s: messages delivered / time from the first publish to the last arrival,
  and that as a multiple of the 3 workers x 100 devices cell at the same QoS;
- router CPU per message (µs): the router's CPU time (/proc/<pid>/stat, its
  children included) over the burst, divided by the messages delivered.

On a shared machine one burst can be a fifth slower than the next for no
reason of ours. ``--repeat N`` measures every cell N times, a round of all
of them after another, and reports medians: each multiple is the median of
the round-by-round multiples (a cell against the baseline of its own round),
shown with their range.

``--processes N`` then compares ``mqttlb run`` with ``mqttlb run --processes N``
(a share group) on 3 workers x 100 devices, at both QoS, with the broker's CPU
per message and how busy the machine's cores were (whoever used them): on a
machine whose cores the broker, the clients and one router already fill, a
second router adds overhead and no core.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from ..core.balancers.hashing import ConsistentHash
from .bench_publisher import RawPublisher, packet_ids, publish_packet
from .bench_throughput import CLOCK_TICKS, wait_until
from .broker import PrivateBroker

WORKERS = (3, 100, 1000, 10_000)
DEVICES = (100, 100_000, 1_000_000)
BASELINE = (3, 100)
"""The cell every other is compared with: the fleet of the first measurement in the issue."""
SEED = 13
READY_SECONDS = 120.0
STALL_SECONDS = 10.0
"""A burst is over when nothing more has arrived for this long."""
PRIME_STEP = 50_000
"""Devices primed at a time: the broker's queue to the router stays far below its limit."""


@dataclass(frozen=True, slots=True)
class Cell:
    workers: int
    devices: int
    qos: int
    processes: int
    sent: int
    delivered: int
    msgs_per_second: float
    cpu_us_per_message: float
    """The router's CPU time over the burst (all its processes) per message delivered."""
    broker_cpu_us_per_message: float
    machine_busy: float
    """The share of all the machine's cores busy during the burst, whoever used them (1.0: saturated)."""
    round: int = 0
    """Which of ``--repeat`` rounds measured it."""


def device_draw(devices: int, messages: int, seed: int = SEED) -> list[int]:
    """The device of each message of a burst: uniform over ``devices`` ids, the same for the same seed."""
    draw = random.Random(seed)
    return [draw.randrange(devices) for _ in range(messages)]


def device_topic(device: int) -> str:
    return f"bench/d{device}/in"


def burst(devices: int, messages: int, qos: int) -> list[bytes]:
    ids = packet_ids()
    return [publish_packet(device_topic(device), b'{"seq":%d}' % n, qos, next(ids) if qos else 0)
            for n, device in enumerate(device_draw(devices, messages))]


def heartbeats(workers: int) -> list[bytes]:
    ids = packet_ids()
    return [publish_packet(f"mqttlb/workers/w{i}/heartbeat",
                           orjson.dumps({"worker": f"w{i}", "state": "up", "weight": 1}), 1, next(ids), retain=True)
            for i in range(workers)]


class Arrivals:
    """One ``mosquitto_sub`` on every worker's inbox, writing one ``%U`` stamp per forward; read incrementally."""

    def __init__(self, broker: PrivateBroker, qos: int, path: Path) -> None:
        self._path = path
        with path.open("wb") as out:
            self._process = subprocess.Popen(
                ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", str(qos), "-V", "5",
                 "--nodelay", "-F", "%U", "-t", "mqttlb/workers/+/in/#"], stdout=out, stderr=subprocess.DEVNULL)
        self._offset = 0
        self.count = 0
        self.last = 0.0
        """The stamp of the latest arrival (unix seconds)."""

    def poll(self) -> int:
        with self._path.open("rb") as out:
            out.seek(self._offset)
            used, count, last = stamps(out.read())
        self._offset += used
        self.count += count
        self.last = last or self.last
        return self.count

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def stamps(data: bytes) -> tuple[int, int, float | None]:
    """Of ``%U`` lines, a last one perhaps cut short: (bytes of whole lines, how many, the last one's stamp)."""
    whole = data[:data.rfind(b"\n") + 1]
    if not whole:
        return 0, 0, None
    return len(whole), whole.count(b"\n"), float(whole[whole.rfind(b"\n", 0, -1) + 1:])


class StatsWatch:
    """The routers' stats snapshots (``mqttlb/stats`` and ``mqttlb/stats/<i>``), the latest per router."""

    def __init__(self, broker: PrivateBroker) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-scale-stats")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda client, *_: client.subscribe([("mqttlb/stats", 0), ("mqttlb/stats/+", 0)])
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if message.payload:
            snapshot = orjson.loads(message.payload)
            self.latest[str(snapshot.get("router"))] = snapshot

    def ready(self, routers: Sequence[str], workers: int) -> bool:
        """Every router connected and knowing all the workers as up."""
        return all((s := self.latest.get(r)) is not None and s.get("connected") is True and not s.get("stopping")
                   and s.get("pools", {}).get("default", {}).get("up") == workers
                   for r in routers)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def router_config(broker: PrivateBroker, client_id: str, workers: int, qos: int,
                  share_group: bool, devices: int | None = None) -> dict[str, object]:
    """``devices``: a cache sized to hold that many (``--primed``), if the default holds fewer."""
    cache = max(ConsistentHash.DEFAULT_CACHE_SIZE, devices or 0)
    return {
        "broker": {"host": broker.host, "port": broker.port, "client_id": client_id, "session_expiry": 0},
        "router": {"share_group": "mqttlb" if share_group else None},
        "heartbeat": {"timeout": "1h", "expire": "2h"},
        "pools": {"default": {"max_workers": workers}},
        "stats": {"interval": "1s"},
        "metrics": {"listen": None},
        "balancers": {"consistent_hash": {"cache_size": cache}},
        "routes": [{"name": "bench", "match": "bench/{device}/in", "key": "device", "algorithm": "consistent_hash",
                    "qos": qos}],
    }


class Router:
    """``mqttlb run`` (with ``--processes N`` when N > 1) as a subprocess; its CPU time, its children's included."""

    def __init__(self, broker: PrivateBroker, workdir: Path, client_id: str, workers: int, qos: int,
                 processes: int, devices: int | None = None) -> None:
        config = workdir / f"{client_id}.yaml"
        config.write_text(yaml.safe_dump(router_config(broker, client_id, workers, qos, processes > 1, devices)))
        self.ids = [f"{client_id}-{i}" for i in range(processes)] if processes > 1 else [client_id]
        self.process = subprocess.Popen([sys.executable, "-m", "mqttlb", "run", "-c", str(config), "--log-level",
                                         "warning", "--processes", str(processes)], stdout=subprocess.DEVNULL)

    def cpu_seconds(self) -> float:
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
        return sum(process_cpu_seconds(pid) for pid in pids)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_times() -> tuple[int, int]:
    """(busy, total) clock ticks of all the cores since boot, from /proc/stat."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def announce(broker: PrivateBroker, workers: int) -> None:
    publisher = RawPublisher(broker, "bench-scale-workers")
    try:
        publisher.send(heartbeats(workers), qos=1)
    finally:
        publisher.close()


def measure(broker: PrivateBroker, stats: StatsWatch, workdir: Path, workers: int, devices: int, qos: int,
            messages: int, processes: int = 1, primed: bool = False, round_: int = 0) -> Cell:
    """One burst through a fresh router; ``primed``: after one message from every device."""
    name = f"bench-scale-{workers}-{devices}-{qos}-{processes}-{round_}"
    packets = burst(devices, messages, qos)
    with ExitStack() as stack:
        arrivals = Arrivals(broker, qos, workdir / f"{name}.out")
        stack.callback(arrivals.stop)
        router = Router(broker, workdir, name, workers, qos, processes, devices if primed else None)
        stack.callback(router.stop)
        if not wait_until(lambda: stats.ready(router.ids, workers), READY_SECONDS):
            raise RuntimeError(f"{name}: the router did not report {workers} workers up in {READY_SECONDS:.0f} s")
        publisher = RawPublisher(broker, f"{name}-devices")
        stack.callback(publisher.close)
        warm_up(publisher, arrivals, qos)
        if primed:
            prime(publisher, arrivals, devices)
        assert broker.process is not None
        before, cpu_before, broker_before, idle_before = (arrivals.count, router.cpu_seconds(),
                                                          process_cpu_seconds(broker.process.pid), machine_times())
        start = time.time()
        publisher.send(packets, qos)
        wait_for_arrivals(arrivals, before + messages)
        cpu, broker_cpu = router.cpu_seconds() - cpu_before, process_cpu_seconds(broker.process.pid) - broker_before
        busy, total = (after - earlier for after, earlier in zip(machine_times(), idle_before, strict=True))
        delivered = arrivals.count - before
    rate = delivered / (arrivals.last - start) if delivered else 0.0
    per_message = 1e6 / max(delivered, 1)
    return Cell(workers, devices, qos, processes, messages, delivered, rate, cpu * per_message,
                broker_cpu * per_message, busy / total if total else 0.0, round_)


def warm_up(publisher: RawPublisher, arrivals: Arrivals, qos: int) -> None:
    """Until a message goes all the way through (the router's subscription is in place)."""
    ids = packet_ids()
    for _ in range(600):
        publisher.send([publish_packet("bench/warm-up/in", b"{}", qos, next(ids) if qos else 0)], qos)
        if wait_until(lambda: arrivals.poll() > 0, 0.1):
            return
    raise RuntimeError("nothing went through the router in 60 s")


def prime(publisher: RawPublisher, arrivals: Arrivals, devices: int) -> None:
    """One message (QoS 0) from every device, ``PRIME_STEP`` at a time, each step waited for."""
    for first in range(0, devices, PRIME_STEP):
        step = range(first, min(devices, first + PRIME_STEP))
        expected = arrivals.poll() + len(step)
        publisher.send([publish_packet(device_topic(device), b"{}", 0) for device in step], 0)
        wait_for_arrivals(arrivals, expected)


def wait_for_arrivals(arrivals: Arrivals, expected: int) -> None:
    """Until ``expected`` have arrived, or nothing has for ``STALL_SECONDS`` (QoS 0 may drop under overload)."""
    seen, since = arrivals.poll(), time.monotonic()
    while seen < expected and time.monotonic() - since < STALL_SECONDS:
        time.sleep(0.05)
        if arrivals.poll() > seen:
            seen, since = arrivals.count, time.monotonic()
    if seen < expected:
        print(f"bench: {expected - seen:,} messages never arrived", file=sys.stderr, flush=True)


def run(workers: Sequence[int], devices: Sequence[int], qos_levels: Sequence[int], messages: int,
        processes: int, primed: bool = False, repeat: int = 1) -> tuple[list[Cell], list[Cell]]:
    """The scale cells, then (when ``processes`` > 1) 1 vs ``processes`` routers on the baseline fleet; all of
    it ``repeat`` times, a round after another."""
    cells: list[Cell] = []
    compared: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="mqttlb-scale-") as tmp:
        for round_ in range(repeat):
            for w in sorted(set(workers) | ({BASELINE[0]} if processes > 1 else set())):
                workdir = Path(tmp) / f"{w}-{round_}"
                workdir.mkdir()
                with PrivateBroker(workdir=workdir) as broker:
                    announce(broker, w)
                    stats = StatsWatch(broker)
                    try:
                        for d in (devices if w in workers else ()):
                            for qos in qos_levels:
                                _progress(f"{w:,} workers x {d:,} devices, QoS {qos}", round_, repeat)
                                cells.append(measure(broker, stats, workdir, w, d, qos, messages, primed=primed,
                                                     round_=round_))
                        if w == BASELINE[0] and processes > 1:
                            for qos in qos_levels:
                                for n in (1, processes):
                                    _progress(f"{n} router process(es), QoS {qos}", round_, repeat)
                                    compared.append(measure(broker, stats, workdir, w, BASELINE[1], qos, messages,
                                                            n, round_=round_))
                    finally:
                        stats.close()
    return cells, compared


def _progress(what: str, round_: int, repeat: int) -> None:
    where = f" (round {round_ + 1} of {repeat})" if repeat > 1 else ""
    print(f"bench: {what}{where} ...", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Summary:
    """A cell's rounds: medians, and its multiples of the reference cell, round by round."""

    cells: tuple[Cell, ...]
    ratios: tuple[float, ...]
    """Each round's rate over its reference's in that round; empty without a reference."""

    @property
    def rate(self) -> float:
        return statistics.median(c.msgs_per_second for c in self.cells)

    @property
    def cpu(self) -> float:
        return statistics.median(c.cpu_us_per_message for c in self.cells)

    @property
    def lost(self) -> int:
        return sum(c.sent - c.delivered for c in self.cells if c.delivered < c.sent)

    def multiple(self, suffix: str = "") -> str:
        """The median multiple and, over several rounds, their range: ``0.81×, 0.74–0.86``."""
        if not self.ratios:
            return ""
        spread = f", {min(self.ratios):.2f}–{max(self.ratios):.2f}" if len(self.ratios) > 1 else ""
        return f"{statistics.median(self.ratios):.2f}{suffix}{spread}"


Reference = Callable[[Cell], tuple[int, int, int, int, int]]
"""The (workers, devices, qos, processes, round) of the cell a cell is measured against."""


def summaries(cells: Sequence[Cell], reference: Reference) -> dict[tuple[int, int, int, int], Summary]:
    """Cells by (workers, devices, qos, processes), each with its multiples of the cell ``reference`` names, in the
    rounds that measured that one."""
    rates = {(c.workers, c.devices, c.qos, c.processes, c.round): c.msgs_per_second for c in cells}
    grouped: dict[tuple[int, int, int, int], list[Cell]] = {}
    for c in cells:
        grouped.setdefault((c.workers, c.devices, c.qos, c.processes), []).append(c)
    out = {}
    for key, group in grouped.items():
        ratios = []
        for c in group:
            ref = reference(c)
            if rates.get(ref):
                ratios.append(c.msgs_per_second / rates[ref])
        out[key] = Summary(tuple(group), tuple(ratios))
    return out


def _count(n: int) -> str:
    """100, 100k, 1M, 10,000: the issue's way of writing fleet sizes."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 100_000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def table(cells: Sequence[Cell]) -> str:
    """Workers x devices down, QoS 0 and 1 across, each rate beside its multiple of the baseline cell (medians
    over rounds)."""
    by_cell = summaries(cells, lambda c: (*BASELINE, c.qos, c.processes, c.round))
    rows = sorted({(c.workers, c.devices) for c in cells})
    lines = ["| workers × devices | QoS 0 msg/s (× 3×100) | QoS 1 msg/s (× 3×100) | router µs CPU/msg (QoS 0) "
             "| router µs CPU/msg (QoS 1) |",
             "|---|---:|---:|---:|---:|"]
    for w, d in rows:
        rates, cpus = [], []
        for qos in (0, 1):
            summary = by_cell.get((w, d, qos, 1))
            if summary is None:
                rates.append("-")
                cpus.append("-")
                continue
            multiple = summary.multiple("×")
            lost = f", {summary.lost:,} lost" if summary.lost else ""
            rates.append(f"{summary.rate:,.0f}{f' ({multiple})' if multiple else ''}{lost}")
            cpus.append(f"{summary.cpu:.1f}")
        lines.append(f"| {_count(w)} × {_count(d)} | {rates[0]} | {rates[1]} | {cpus[0]} | {cpus[1]} |")
    return "\n".join(lines)


def processes_table(compared: Sequence[Cell]) -> str:
    """1 vs N router processes: rate, the ratio, CPU per message of the routers and of the broker, cores busy
    (medians over rounds)."""
    by_cell = summaries(compared, lambda c: (c.workers, c.devices, c.qos, 1, c.round))
    lines = ["| routers | QoS | msg/s | × 1 process | routers µs CPU/msg | broker µs CPU/msg | machine busy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for (_, _, qos, processes), summary in sorted(by_cell.items(), key=lambda item: (item[0][2], item[0][3])):
        command = "mqttlb run" if processes == 1 else f"mqttlb run --processes {processes}"
        broker = statistics.median(c.broker_cpu_us_per_message for c in summary.cells)
        busy = statistics.median(c.machine_busy for c in summary.cells)
        lines.append(f"| `{command}` | {qos} | {summary.rate:,.0f} | {summary.multiple() or '-'} | {summary.cpu:.1f} "
                     f"| {broker:.1f} | {busy:.0%} |")
    return "\n".join(lines)


def sizes(text: str) -> list[int]:
    """``"3,100,10k,1M"`` -> [3, 100, 10000, 1000000]."""
    factors = {"k": 1000, "m": 1_000_000}
    out = []
    for item in text.split(","):
        item = item.strip().lower().replace("_", "")
        factor = factors.get(item[-1:], 1)
        number = int(item[:-1] if factor > 1 else item)
        if number < 1:
            raise ValueError(f"{item}: must be at least 1")
        out.append(number * factor)
    return out


def main(args: argparse.Namespace) -> int:
    cells, compared = run(sizes(args.workers), sizes(args.devices), [int(q) for q in args.qos.split(",")],
                          args.messages, args.processes, args.primed, args.repeat)
    if args.json:
        print(orjson.dumps({"cores": os.cpu_count(), "messages": args.messages, "primed": args.primed,
                            "repeat": args.repeat,
                            "cells": [asdict(c) for c in cells], "processes": [asdict(c) for c in compared]},
                           option=orjson.OPT_INDENT_2).decode())
        return 0
    devices = "every device primed (routed once before)" if args.primed else "devices new to the router"
    rounds = f"; medians of {args.repeat} rounds, beside the range of the multiples" if args.repeat > 1 else ""
    print(f"{os.cpu_count()} cores; {args.messages:,} messages per burst; consistent_hash on bench/{{device}}/in; "
          f"{devices}{rounds}\n")
    if cells:
        print(table(cells))
    if compared:
        print()
        print(processes_table(compared))
    return 0
