"""``mqttlb bench``: throughput and latency of mqttlb beside a plain paho relay and the broker alone.

Everything runs against one private Mosquitto on this machine:
``bench_publisher``'s raw client publishes the JSON messages to ``bench/in``
(the peak burst, and the paced ones that latency is measured on), and two
``mosquitto_sub`` stand in for the workers, stamping each arrival (``%U``).

- *wire*: ``mqttlb.commands.bench_wire``, a relay with no routing on mqttlb's own MQTT session, so
  the gap between it and mqttlb is what routing costs;
- *relay*: ``mqttlb.commands.bench_relay``, the ten-minute paho relay;
- *mqttlb*: ``mqttlb run`` with a consistent-hash route on ``payload.device``,
  health, dead letters, stats and metrics on, acknowledging at QoS 1 only
  after the forward is acknowledged;
- *shared*: no router hop; the two subscribers share ``bench/in`` through the
  broker's ``$share`` group, the ceiling any router is measured against.

For each, at QoS 0 and 1: the peak rate (a burst of ``--messages`` as fast as
the publisher can), then latency at half that rate (publish time in the
payload to arrival) and the p99 a system adds to *shared*'s, CPU seconds per
100,000 messages of the middle process, and its memory at the start and the
end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

import orjson
import yaml

from .bench_publisher import RawPublisher, packet_id, publish_packet
from .broker import PrivateBroker

WORKERS = ("w0", "w1")
DEVICES = 1000
SYSTEMS = ("mqttlb", "wire", "relay", "shared")
"""mqttlb first: half its peak is the rate at which every system's latency is measured."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Result:
    system: str
    qos: int
    sent: int
    delivered: int
    msgs_per_second: float
    latency_rate: float
    p50_ms: float
    p99_ms: float
    cpu_seconds_per_100k: float | None
    rss_start_mib: float | None
    rss_end_mib: float | None
    round: int = 0
    """Which of ``--repeat`` rounds measured it."""


def payload(n: int, sent_ns: int = 0) -> bytes:
    return orjson.dumps({"device": f"d{n % DEVICES}", "seq": n, "ts": sent_ns})


class Subscribers:
    """Two ``mosquitto_sub`` processes, one per worker (or both in the shared group), writing ``%U %p`` lines."""

    def __init__(self, broker: PrivateBroker, system: str, qos: int, workdir: Path) -> None:
        self.files = [workdir / f"{system}-{qos}-{w}.out" for w in WORKERS]
        topics = ["$share/bench/bench/in" if system == "shared" else f"mqttlb/workers/{w}/in/#" for w in WORKERS]
        self.processes = []
        for topic, path in zip(topics, self.files, strict=True):
            with path.open("wb") as out:  # the child has its own copy of the descriptor
                self.processes.append(subprocess.Popen(
                    ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", str(qos), "-V", "5",
                     "--nodelay", "-F", "%U %p", "-t", topic], stdout=out, stderr=subprocess.DEVNULL))

    def lines(self) -> Iterator[bytes]:
        for path in self.files:
            with path.open("rb") as out:
                yield from (line for line in out if line.endswith(b"}\n"))

    def count(self) -> int:
        return sum(path.read_bytes().count(b"\n") for path in self.files)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)


def arrivals(lines: Iterator[bytes]) -> list[tuple[float, dict[str, int]]]:
    found = []
    for line in lines:
        stamp, _, body = line.partition(b" ")
        found.append((float(stamp), orjson.loads(body)))
    return found


class Middle:
    """The process between publisher and subscribers (none for ``shared``): started, measured, stopped."""

    def __init__(self, broker: PrivateBroker, system: str, qos: int, workdir: Path) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        if system in ("relay", "wire"):
            module = f"mqttlb.commands.bench_{system}"
            command = [sys.executable, "-m", module, broker.host, str(broker.port), str(qos), *WORKERS]
        elif system == "mqttlb":
            config = workdir / "mqttlb.yaml"
            config.write_text(yaml.safe_dump(router_config(broker, qos)))
            command = [sys.executable, "-m", "mqttlb", "run", "-c", str(config), "--log-level", "warning"]
        else:
            return
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # its warnings show with the progress

    def cpu_seconds(self) -> float | None:
        if self.process is None:
            return None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mib(self) -> float | None:
        if self.process is None:
            return None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(15)


def router_config(broker: PrivateBroker, qos: int) -> dict[str, object]:
    return {
        # A session that ends with the router: a kept one would gather the other systems' messages for the
        # next round's router, which would take them first (and time them from when they were sent).
        "broker": {"host": broker.host, "port": broker.port, "client_id": f"bench-mqttlb-{qos}", "session_expiry": 0},
        "heartbeat": {"timeout": "1h", "expire": "2h"},
        "metrics": {"listen": "127.0.0.1:0"},
        "routes": [{"name": "bench", "match": "bench/in", "key": "payload.device", "algorithm": "consistent_hash",
                    "qos": qos}],
    }


def announce_workers(broker: PrivateBroker) -> None:
    for worker in WORKERS:
        subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-r",
                        "-t", f"mqttlb/workers/{worker}/heartbeat", "-m",
                        orjson.dumps({"worker": worker, "state": "up"}).decode()], check=True)


def publisher(broker: PrivateBroker, qos: int, stdin: int | IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", str(qos), "-V", "5",
                             "--nodelay", "-t", "bench/in", "-l"], stdin=stdin, stderr=subprocess.DEVNULL)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def warm_up(broker: PrivateBroker, qos: int, subscribers: Subscribers) -> None:
    """Until a message goes all the way through (the middle process is subscribed and knows the workers)."""
    probe = publisher(broker, qos, subprocess.PIPE)
    assert probe.stdin is not None
    n = 0
    while subscribers.count() == 0 and n < 600:
        probe.stdin.write(payload(n) + b"\n")
        probe.stdin.flush()
        n += 1
        time.sleep(0.05)
    probe.stdin.close()
    probe.wait(10)
    wait_until(lambda: subscribers.count() >= n, 10)


def peak(broker: PrivateBroker, qos: int, messages: int, subscribers: Subscribers) -> tuple[int, float]:
    """Publish a burst as fast as the publisher can; (delivered, msg/s from first publish to last arrival)."""
    before = subscribers.count()
    packets = [publish_packet("bench/in", payload(n), qos, packet_id(n) if qos else 0) for n in range(messages)]
    publisher = RawPublisher(broker, "bench-burst")
    start = time.time()
    try:
        publisher.send(packets, qos)
    finally:
        publisher.close()
    wait_until(lambda: subscribers.count() - before >= messages, 60)
    time.sleep(0.5)  # stragglers at QoS 0 are not waited for beyond this
    delivered = subscribers.count() - before
    last = max(stamp for stamp, _ in arrivals(subscribers.lines()))
    return delivered, delivered / (last - start)


def paced(broker: PrivateBroker, qos: int, rate: float, seconds: float, subscribers: Subscribers) -> list[float]:
    """Publish at ``rate`` for ``seconds`` with the send time in each payload; the latencies, in ms.

    ``bench_publisher``'s raw client publishes here, on time, every fraction of a millisecond: the paho client
    that did before took half a core of this two-core machine, and the systems measured waited for it (a p99
    of 2-15 ms that was not theirs).
    """
    before = subscribers.count()
    first = 10_000_000
    publisher = RawPublisher(broker, "bench-paced")
    try:
        sent = publisher.paced(lambda n: publish_packet("bench/in", payload(first + n, time.time_ns()), qos,
                                                        packet_id(n) if qos else 0), rate, seconds)
    finally:
        publisher.close()
    wait_until(lambda: subscribers.count() - before >= sent, 30)
    return [(stamp - body["ts"] / 1e9) * 1000 for stamp, body in arrivals(subscribers.lines())
            if body["seq"] >= first and body["ts"]]


def run_one(broker: PrivateBroker, system: str, qos: int, messages: int, workdir: Path,
            latency_rate: float | None) -> Result:
    """One system at one QoS; latency at ``latency_rate``, or half its own peak when None."""
    subscribers = Subscribers(broker, system, qos, workdir)
    middle = Middle(broker, system, qos, workdir)
    try:
        warm_up(broker, qos, subscribers)
        rss_start = middle.rss_mib()
        cpu_before = middle.cpu_seconds()
        delivered, rate = peak(broker, qos, messages, subscribers)
        cpu_after = middle.cpu_seconds()
        latency_rate = latency_rate or rate / 2
        latencies = sorted(paced(broker, qos, latency_rate, 3.0, subscribers))
        cpu = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / delivered * 100_000
        return Result(system, qos, messages, delivered, rate, latency_rate, statistics.median(latencies),
                      latencies[int(len(latencies) * 0.99)], cpu, rss_start, middle.rss_mib())
    finally:
        middle.stop()
        subscribers.stop()


def run(messages: int, systems: tuple[str, ...] = SYSTEMS, qos_levels: tuple[int, ...] = (0, 1),
        repeat: int = 1) -> list[Result]:
    """Every system at every QoS, ``repeat`` rounds of them one after another."""
    results = []
    with tempfile.TemporaryDirectory(prefix="mqttlb-bench-") as tmp, PrivateBroker(workdir=Path(tmp)) as broker:
        announce_workers(broker)
        for round_ in range(repeat):
            for qos in qos_levels:
                latency_rate = None
                for system in systems:
                    of = f" (round {round_ + 1} of {repeat})" if repeat > 1 else ""
                    print(f"bench: {system}, QoS {qos}{of} ...", file=sys.stderr, flush=True)
                    result = run_one(broker, system, qos, messages, Path(tmp), latency_rate)
                    results.append(replace(result, round=round_))
                    latency_rate = latency_rate or result.latency_rate
    return results


def medians(results: list[Result]) -> list[Result]:
    """One result per system and QoS, each figure the median of its rounds (the fewest delivered)."""
    grouped: dict[tuple[str, int], list[Result]] = {}
    for result in results:
        grouped.setdefault((result.system, result.qos), []).append(result)

    def median(rounds: list[Result], figure: str) -> Any:
        values = [getattr(r, figure) for r in rounds if getattr(r, figure) is not None]
        return statistics.median(values) if values else None

    figures = ("msgs_per_second", "latency_rate", "p50_ms", "p99_ms", "cpu_seconds_per_100k", "rss_start_mib",
               "rss_end_mib")
    return [replace(rounds[0], delivered=min(r.delivered for r in rounds),
                    **{figure: median(rounds, figure) for figure in figures}) for rounds in grouped.values()]


def soak(seconds: float, rate: float, qos: int = 1) -> list[tuple[float, float, int]]:
    """mqttlb alone at a steady ``rate`` for ``seconds``: (elapsed s, RSS MiB, delivered) once a minute."""
    samples = []
    with tempfile.TemporaryDirectory(prefix="mqttlb-soak-") as tmp, PrivateBroker(workdir=Path(tmp)) as broker:
        announce_workers(broker)
        subscribers = Subscribers(broker, "mqttlb", qos, Path(tmp))
        middle = Middle(broker, "mqttlb", qos, Path(tmp))
        feed = publisher(broker, qos, subprocess.PIPE)
        assert feed.stdin is not None
        try:
            warm_up(broker, qos, subscribers)
            start, n, next_sample = time.monotonic(), 0, 0.0
            while (elapsed := time.monotonic() - start) < seconds:
                due = int(elapsed * rate)
                feed.stdin.write(b"".join(payload(i) + b"\n" for i in range(n, due)))
                feed.stdin.flush()
                n = max(n, due)
                if elapsed >= next_sample:
                    samples.append((elapsed, middle.rss_mib() or 0.0, subscribers.count()))
                    print(f"soak: {elapsed:5.0f} s, RSS {samples[-1][1]:.1f} MiB, {samples[-1][2]:,} delivered",
                          file=sys.stderr, flush=True)
                    next_sample += 60.0
                time.sleep(0.01)
            samples.append((time.monotonic() - start, middle.rss_mib() or 0.0, subscribers.count()))
        finally:
            feed.stdin.close()
            feed.wait(30)
            middle.stop()
            subscribers.stop()
    return samples


def table(results: list[Result], rounds: int = 1) -> str:
    """``results``: one per system and QoS (``medians`` of ``rounds``)."""
    relay = {r.qos: r.msgs_per_second for r in results if r.system == "relay"}
    shared = {r.qos: r.p99_ms for r in results if r.system == "shared"}
    of = f"; medians of {rounds} rounds" if rounds > 1 else ""
    lines = [f"{os.cpu_count()} cores; {results[0].sent:,} messages per burst; latency at half mqttlb's peak, "
             f"for every system; +p99: over shared's{of}",
             "",
             f"{'system':8} {'QoS':>3} {'msg/s':>9} {'x relay':>8} {'at msg/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'+p99 ms':>7} {'CPU s/100k':>10} {'RSS MiB':>13} {'delivered':>10}"]
    for r in results:
        ratio = f"{r.msgs_per_second / relay[r.qos]:.2f}" if r.qos in relay else "-"
        added = f"{r.p99_ms - shared[r.qos]:.2f}" if r.qos in shared and r.system != "shared" else "-"
        cpu = f"{r.cpu_seconds_per_100k:.2f}" if r.cpu_seconds_per_100k is not None else "-"
        rss = f"{r.rss_start_mib:.0f} -> {r.rss_end_mib:.0f}" if r.rss_start_mib and r.rss_end_mib else "-"
        lines.append(f"{r.system:8} {r.qos:>3} {r.msgs_per_second:>9,.0f} {ratio:>8} {r.latency_rate:>9,.0f} "
                     f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {added:>7} {cpu:>10} {rss:>13} {r.delivered:>10,}")
    if any(r.delivered < r.sent for r in results):
        lines += ["", "Fewer delivered than sent: at QoS 0 the broker drops what it cannot keep up with."]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.measure == "soak":
        samples = soak(args.seconds, args.rate)
        print(f"mqttlb at {args.rate:,.0f} msg/s for {args.seconds:,.0f} s: RSS {samples[0][1]:.1f} MiB at the start, "
              f"{samples[-1][1]:.1f} MiB at the end; {samples[-1][2]:,} messages delivered")
        return 0
    results = run(args.messages, repeat=args.repeat)
    if args.json:
        print(orjson.dumps({"cores": os.cpu_count(), "results": [asdict(r) for r in results]},
                           option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(medians(results), args.repeat))
    return 0
