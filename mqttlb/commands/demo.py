"""``mqttlb demo``: the whole system on this machine, a worker failure, and what it shows.

Why: in under a minute a newcomer should see what mqttlb is for. Devices stick
to their worker; when a worker dies its devices, and only those, move to the
others; what it held is reclaimed from its session, so nothing is lost or
stranded and each device's messages stay in order. Everything runs for real:
a private Mosquitto from ``mosquitto/`` on a free port, ``mqttlb run`` and
three ``mqttlb worker`` processes (w3 with weight 2) on a copy of
``config/mqttlb.yaml`` (with a short ``reclaim.after``), and the simulated
fleet. The victim hangs a second first (SIGSTOP), so that it dies with
messages in hand, and is never restarted: what it held comes back only by the
reclaim. An observer subscribes to every worker's inbox, so the summary
reports what the broker delivered, not what the router believes; and to the
router's stats, for what the router says it reclaimed and still holds.

The summary is computed by a pure function (``summarize``) from the observed
arrivals, so its rules can be read and tested apart from the processes. Every
process the demo starts is stopped and its temporary directory removed,
however it ends: success, failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import yaml

from ..core import config as config_module
from ..core.config import Config
from ..core.topics import filter_matches
from ..errors import MqttlbError
from ..mqtt.client import Client, Inbound
from .broker import PrivateBroker, find_mosquitto, mosquitto_dir
from .simulate import Simulator

WORKERS = {"w1": 1.0, "w2": 1.0, "w3": 2.0}
"""Worker id and weight; consistent hashing gives w3 about twice the devices of the others."""
VICTIM = "w1"
DEVICES, RATE = 100, 400.0
BEFORE, HANG, AFTER = 6.0, 1.0, 5.0
"""Seconds of traffic before the victim hangs, while it hangs (its messages pile up in its session, unacknowledged;
less than the heartbeat timeout, so the router keeps sending it its share), and after the kill."""
RECLAIM_AFTER = 2.0
"""The demo's ``reclaim.after``: the victim's session is reclaimed this long after its death, well within AFTER."""
START_TIMEOUT = 15.0
DELIVERY_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
INBOX_FILTER = "mqttlb/workers/+/in/#"
"""Where the default ``forward`` template puts a worker's messages; the demo config keeps that default."""
STICKY = "consistent_hash"


class DemoFailed(Exception):
    """Something the demo needs did not happen; the message says what, with the logs that tell why."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: stop everything and leave.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    """


# -- what the broker delivered ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrival:
    """One message as the broker delivered it to a worker's inbox."""

    worker: str
    route: str
    device: str
    seq: int
    at: float
    """time.monotonic() when it arrived."""


class Observer:
    """Records arrivals in the workers' inboxes and which workers announce themselves up."""

    def __init__(self, config: Config) -> None:
        self._routes = config.routes
        self._heartbeats = config.heartbeat
        self._stats_topic = config.stats.topic
        self._arrivals: list[Arrival] = []
        self._up: set[str] = set()
        self._stats: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, message: Inbound) -> None:
        """Runs on the client's network thread: parse, append, return."""
        if message.topic == self._stats_topic:
            self._snapshot(message.payload)
        elif filter_matches(self._heartbeats.topic, message.topic):
            self._heartbeat(self._heartbeats.worker_of(message.topic), message.payload)
        elif filter_matches(INBOX_FILTER, message.topic):
            levels = message.topic.split("/")
            self._arrived(levels[2], "/".join(levels[4:]), message.payload)

    def _arrived(self, worker: str, topic: str, payload: bytes) -> None:
        route = next((r.name for r in self._routes if r.match.match(topic) is not None), "")
        try:
            body = orjson.loads(payload)
            arrival = Arrival(worker, route, str(body["device"]), int(body["seq"]), time.monotonic())
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):  # not the simulator's: not ours to count
            return
        with self._lock:
            self._arrivals.append(arrival)

    def _heartbeat(self, worker: str, payload: bytes) -> None:
        try:
            state = orjson.loads(payload).get("state", "up") if payload else "down"
        except (orjson.JSONDecodeError, AttributeError):
            return
        with self._lock:
            (self._up.add if state == "up" else self._up.discard)(worker)

    def _snapshot(self, payload: bytes) -> None:
        try:
            figures = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(figures, dict):
            with self._lock:
                self._stats = figures

    def up(self) -> set[str]:
        with self._lock:
            return set(self._up)

    def stats(self) -> dict[str, Any] | None:
        """The router's latest stats snapshot."""
        with self._lock:
            return self._stats

    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)


# -- the summary (pure) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerRow:
    worker: str
    weight: float
    devices_before: int
    devices_after: int
    messages: int
    share: float


@dataclass(frozen=True, slots=True)
class Summary:
    rows: tuple[WorkerRow, ...]
    sent: int
    delivered: int
    lost: int
    duplicates: int
    victim_devices: frozenset[str]
    """Devices of the sticky routes that the victim served before the kill."""
    moved: frozenset[str]
    """Devices whose worker after the kill differs from the one before."""
    stayed: int
    """Devices of the other workers that kept their worker throughout."""
    strays: frozenset[str]
    """Devices that reached more than one worker when they should not have: none, when all is well."""
    failover: float | None
    """Seconds from the kill to the first message of a moved device at its new worker."""
    reclaimed_seen: int
    """Messages that reached the victim's inbox and, after the kill, another worker's: taken from its session."""
    reclaimed: int | None
    """The victim's messages the router says it reclaimed (stats ``reclaim.reclaimed``); None: no reclaim ended."""
    pending: str | None
    """The state of the victim's reclaim when the router's stats still list it as pending (stats
    ``reclaim.pending``), else None: nothing is left in its session."""
    stranded: int | None
    """Messages the router counts as stranded in the victim's session for good (stats ``stranded``); None: no
    stats."""
    inverted: int
    """Messages of the victim's devices that reached their new worker after a newer one of the same device."""

    @property
    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} of {self.sent} messages never reached a worker")
        if not self.victim_devices:
            found.append(f"{VICTIM} served no device before the kill")
        elif self.moved != self.victim_devices:
            found.append(f"the devices that moved are not exactly {VICTIM}'s: "
                         f"{', '.join(sorted(self.moved ^ self.victim_devices)[:5])}")
        if self.strays:
            found.append(f"devices reached more than one worker: {', '.join(sorted(self.strays)[:5])}")
        if self.failover is None and self.victim_devices:
            found.append(f"no device of {VICTIM} reached a new worker")
        if self.stranded is None:
            found.append("no stats from the router: what it reclaimed is unknown")
        elif self.pending is not None:
            found.append(f"{VICTIM}'s session was not reclaimed by the end (its reclaim is {self.pending})")
        elif self.reclaimed is None:
            found.append(f"the router did not reclaim {VICTIM}'s session")
        if self.stranded:
            found.append(f"the router counts {self.stranded} messages stranded in {VICTIM}'s session")
        if self.inverted:
            found.append(f"{self.inverted} messages of {VICTIM}'s devices overtook older ones")
        return found


def summarize(arrivals: list[Arrival], expected: set[tuple[str, str, int]], sticky: set[str],
              killed: float, stats: Mapping[str, Any] | None = None) -> Summary:
    """What the arrivals show, for the ``expected`` (route, device, seq) and a kill of VICTIM at ``killed``, and
    what the router's last ``stats`` snapshot says of the victim's session."""
    seen = {(a.route, a.device, a.seq) for a in arrivals}
    at_victim = {(a.route, a.device, a.seq) for a in arrivals if a.worker == VICTIM}
    reclaimed_seen = {(a.route, a.device, a.seq) for a in arrivals
                      if a.worker != VICTIM and a.at >= killed and (a.route, a.device, a.seq) in at_victim}
    ordered = sorted((a for a in arrivals if a.route in sticky), key=lambda a: a.at)
    before = [a for a in ordered if a.at < killed]
    owner_before = {a.device: a.worker for a in before}  # the last worker each device reached
    owner_after = {a.device: a.worker for a in ordered}
    workers_before, workers_of = _workers(before), _workers(ordered)
    victim_devices = frozenset(d for d, w in owner_before.items() if w == VICTIM)
    others = [d for d, w in owner_before.items() if w != VICTIM]
    strays = ({d for d in others if workers_of[d] != {owner_before[d]}}
              | {d for d in victim_devices if len(workers_of[d] - {VICTIM}) > 1}
              | {d for d, workers in workers_before.items() if len(workers) > 1})
    firsts = [a.at for a in ordered if a.at >= killed and a.device in victim_devices and a.worker != VICTIM]
    messages = Counter(a.worker for a in arrivals)
    rows = tuple(WorkerRow(w, weight, _count(owner_before, w), _count(owner_after, w), messages[w],
                           messages[w] / max(1, len(arrivals))) for w, weight in WORKERS.items())
    reclaim = (stats or {}).get("reclaim") or {}
    pending = (reclaim.get("pending") or {}).get(f"worker/{VICTIM}")
    return Summary(rows=rows, sent=len(expected), delivered=len(expected & seen), lost=len(expected - seen),
                   duplicates=len(arrivals) - len(seen) - len(reclaimed_seen), victim_devices=victim_devices,
                   moved=frozenset(d for d, w in owner_before.items() if owner_after[d] != w),
                   stayed=sum(1 for d in others if d not in strays), strays=frozenset(strays),
                   failover=min(firsts) - killed if firsts else None, reclaimed_seen=len(reclaimed_seen),
                   reclaimed=(reclaim.get("reclaimed") or {}).get("worker", {}).get(VICTIM),
                   pending=pending["state"] if pending is not None else None,
                   stranded=None if stats is None else
                   sum(workers.get(VICTIM, 0) for workers in (stats.get("stranded") or {}).values()),
                   inverted=_inversions([a for a in ordered if a.device in victim_devices and a.worker != VICTIM]))


def _inversions(arrivals: list[Arrival]) -> int:
    """Arrivals (in the order they came) of a message after a newer one of its device and route, first arrivals
    only: a duplicate is no overtaking."""
    newest: dict[tuple[str, str], int] = {}
    first: set[tuple[str, str, int]] = set()
    inverted = 0
    for a in arrivals:
        if (a.route, a.device, a.seq) in first:
            continue
        first.add((a.route, a.device, a.seq))
        inverted += a.seq < newest.get((a.route, a.device), -1)
        newest[(a.route, a.device)] = max(a.seq, newest.get((a.route, a.device), -1))
    return inverted


def _workers(arrivals: list[Arrival]) -> dict[str, set[str]]:
    """The workers each device reached."""
    found: dict[str, set[str]] = defaultdict(set)
    for arrival in arrivals:
        found[arrival.device].add(arrival.worker)
    return found


def _count(owners: dict[str, str], worker: str) -> int:
    return sum(1 for owner in owners.values() if owner == worker)


def render(summary: Summary, config: Config, took: float, killed_at: float) -> list[str]:
    """The summary as plain text, each figure with a line on what it means."""
    sticky = [r.name for r in config.routes if r.algorithm == STICKY]
    routes = ", ".join(f"{r.name} ({r.algorithm})" for r in config.routes)
    after = config.reclaim.after
    lines = ["", "What happened",
             f"  {DEVICES} devices sent {summary.sent} messages in {took:.1f} s, one device after another,",
             f"  taking turns on the routes {routes}.",
             f"  At {killed_at - HANG:.1f} s {VICTIM} hung (SIGSTOP) with messages in hand; at {killed_at:.1f} s "
             f"it was killed with SIGKILL:",
             "  no goodbye, as in a crash. It is not restarted.", "",
             "worker  weight  devices before  devices after  messages  share"]
    killed = f"  (killed; {summary.reclaimed_seen} of them reclaimed)" if summary.reclaimed_seen else "  (killed)"
    for row in summary.rows:
        lines.append(f"{row.worker:<6}  {row.weight:>6g}  {row.devices_before:>14}  {row.devices_after:>13}  "
                     f"{row.messages:>8}  {100 * row.share:>4.1f}%{killed if row.worker == VICTIM else ''}")
    lines += ["",
              f"  devices before/after: how many devices of route {', '.join(sticky) or '-'} each worker served",
              "  just before the kill and at the end. Consistent hashing keeps a device on one worker; w3, with",
              "  weight 2, is meant to get twice the share of w1 or w2 (with 100 devices, roughly so).",
              "  messages, share: everything the worker was sent, from every route, and its part of the total",
              "  (a reclaimed message counts at the killed worker and at the one it went to next).", "",
              f"sent {summary.sent}, delivered {summary.delivered}, lost {summary.lost}, "
              f"duplicates {summary.duplicates}",
              "  delivered: reached a worker's inbox at the broker. The router acknowledges a device's message",
              "  only once the broker has taken the forward, so a message cannot fall between the two.",
              "  duplicates: messages that reached workers twice (at-least-once allows it); the reclaimed ones,",
              f"  which reached {VICTIM}'s inbox and then another worker's, are counted below, not here.",
              f"moved: {len(summary.moved)} devices, all of them {VICTIM}'s: "
              f"{'yes' if summary.moved and summary.moved == summary.victim_devices else 'no'}",
              f"  the broker saw {VICTIM}'s connection drop and published its will, a heartbeat saying \"down\";",
              f"  the router stopped choosing {VICTIM}, so its devices went to where they score next best.",
              f"stayed: {'no' if summary.strays else 'yes'} ({summary.stayed} devices of the other workers "
              f"kept their worker throughout)",
              "  consistent hashing moves only the devices of the worker that left; the rest keep their state.",
              "failover: " + ("none" if summary.failover is None else f"{1000 * summary.failover:.0f} ms"),
              "  from the kill to the first message of a moved device at its new worker. The router gave "
              f"{VICTIM}",
              f"  reclaim.after ({_seconds(after)}) to come back; then what {VICTIM} held went first, and its "
              "devices' new messages,",
              "  held meanwhile, after them.",
              f"reclaimed: {_figure(summary.reclaimed)} of {VICTIM}'s messages by the router's count, "
              f"{summary.reclaimed_seen} seen arriving at other workers",
              f"  {VICTIM} died holding them in its session at the broker. The router took the session over "
              f"(client id",
              f"  mqttlb-worker-{VICTIM}), routed each message again to its device's new worker, and ended "
              "the session.",
              f"stranded: {_stranded(summary)}",
              f"  messages left in {VICTIM}'s session, by the router's stats: a reclaim still pending, or stranded.",
              f"in order: {'yes' if not summary.inverted else f'no, {summary.inverted} overtook older ones'}",
              f"  each of {VICTIM}'s devices' messages reached its new worker in the order the device sent them."]
    return lines


def _figure(count: int | None) -> str:
    return "none" if count is None else str(count)


def _seconds(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:g} s"


def _stranded(summary: Summary) -> str:
    if summary.stranded is None:
        return "unknown (no stats from the router)"
    if summary.pending is not None:
        return f"not yet known: the reclaim of {VICTIM}'s session is {summary.pending}"
    return str(summary.stranded)


# -- the processes ------------------------------------------------------------------------


class Processes:
    """The router and workers, each writing its log to the demo's directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._killed: set[str] = set()

    def spawn(self, name: str, *args: str) -> int:
        with (self.workdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "mqttlb", *args], stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._running[name] = process
        return process.pid

    def hang(self, name: str) -> None:
        """SIGSTOP: the process stops taking its messages and heartbeating, its connection stays open."""
        self._running[name].send_signal(signal.SIGSTOP)

    def kill(self, name: str) -> None:
        self._killed.add(name)
        self._running[name].send_signal(signal.SIGKILL)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check(self) -> None:
        """Raises DemoFailed when a process has exited that the demo did not kill."""
        for name, process in self._running.items():
            if name not in self._killed and process.poll() is not None:
                tail = "\n".join(self.log(name).splitlines()[-15:])
                raise DemoFailed(f"{name} exited with status {process.returncode}; its log ends:\n{tail}")

    def stop_all(self) -> None:
        """SIGTERM to every process still running, then wait; SIGKILL what does not stop in time."""
        for process in self._running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.send_signal(signal.SIGCONT)  # one that hangs, if the demo was interrupted then
        give_up = time.monotonic() + STOP_TIMEOUT
        for process in self._running.values():
            try:
                process.wait(max(0.1, give_up - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Background:
    """The simulator on a thread of its own; an error it meets is kept for the main thread."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo-simulator", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.simulator.run()
        except Exception as error:  # handed to the main thread, which reports it
            self.error = error

    def stop(self) -> None:
        self.simulator.stop()
        self._thread.join(STOP_TIMEOUT)


# -- the run ----------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """``mqttlb demo``: exit 0 when everything shown worked, 1 otherwise, 130 when interrupted."""
    try:
        find_mosquitto()
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, piped too
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    started = time.monotonic()
    try:
        with ExitStack() as cleanup:
            problems = _demo(cleanup)
            print("\ndemo: stopping the router, the workers and Mosquitto")
    except Interrupted:
        print("\ndemo: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    except (DemoFailed, MqttlbError, OSError, RuntimeError) as error:
        print(f"\ndemo: failed: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"demo: FAILED: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"demo: ok in {time.monotonic() - started:.0f} s; every process it started is stopped, "
          f"its files removed")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C or SIGTERM ends the demo; later ones are ignored so the cleanup can finish."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted()


def _demo(cleanup: ExitStack) -> list[str]:
    """Start everything (registering its cleanup), run the scenario, print the summary; returns the problems."""
    workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="mqttlb-demo-")))
    (workdir / "broker").mkdir()
    broker = cleanup.enter_context(PrivateBroker(workdir=workdir / "broker"))
    pid = broker.process.pid if broker.process is not None else "?"
    print(f"demo: Mosquitto on {broker.host}:{broker.port} (pid {pid}); files in {workdir}")
    config_path = _write_config(workdir, broker)
    config = config_module.load(config_path)
    processes = Processes(workdir)
    cleanup.callback(processes.stop_all)
    observer = Observer(config)
    watch = Client(config.broker, f"mqttlb-demo-observer-{os.getpid()}", on_message=observer)
    watch.subscribe(INBOX_FILTER, 1)
    watch.subscribe(config.heartbeat.topic, 0)
    watch.subscribe(config.stats.topic, 0)
    watch.start()
    cleanup.callback(watch.stop)
    _start_workers_and_router(processes, observer, config_path)
    simulator = Simulator(config, DEVICES, RATE, qos=1)
    background = Background(simulator)
    cleanup.callback(background.stop)
    start, killed, end = _scenario(processes, background)
    _await_delivery(processes, observer, simulator, killed)
    expected = {(maker.route, device, seq) for maker, device, seq in map(simulator.devices.identity,
                                                                           range(simulator.sent))}
    sticky = {r.name for r in config.routes if r.algorithm == STICKY}
    summary = summarize(observer.arrivals(), expected, sticky, killed, observer.stats())
    print("\n".join(render(summary, config, end - start, killed - start)))
    return summary.problems


def _write_config(workdir: Path, broker: PrivateBroker) -> Path:
    """A copy of config/mqttlb.yaml for the private broker, with a short heartbeat timeout, a short reclaim.after,
    frequent stats and no metrics port."""
    data = yaml.safe_load((mosquitto_dir().parent / "config" / "mqttlb.yaml").read_text()) or {}
    protocol = (data.get("broker") or {}).get("protocol", 5)
    data["broker"] = {"host": broker.host, "port": broker.port, "client_id": f"mqttlb-demo-{os.getpid()}",
                      "protocol": protocol}
    data["heartbeat"] = {**(data.get("heartbeat") or {}), "timeout": "2s"}
    data["dead_letter"] = {**(data.get("dead_letter") or {}), "hold": "10s"}
    data["reclaim"] = {**(data.get("reclaim") or {}), "after": f"{RECLAIM_AFTER:g}s"}
    data["stats"] = {**(data.get("stats") or {}), "interval": "500ms"}
    data["metrics"] = {"listen": None}
    data["routes"] = [{k: v for k, v in route.items() if k not in ("pool", "forward")} if isinstance(route, dict)
                      else route for route in data.get("routes") or []]  # the workers serve the default pool
    path = workdir / "mqttlb.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _start_workers_and_router(processes: Processes, observer: Observer, config_path: Path) -> None:
    """The workers first, then the router, which learns them from their retained heartbeats before routing."""
    pids = []
    for worker, weight in WORKERS.items():
        pid = processes.spawn(worker, "worker", "--id", worker, "--weight", f"{weight:g}", "--interval", "0.5",
                              "-c", str(config_path))
        pids.append(f"{worker} (pid {pid}{', weight 2' if weight == 2 else ''})")
    _wait(lambda: observer.up() >= set(WORKERS), processes, "the workers' heartbeats")
    print(f"demo: workers {', '.join(pids)} up")
    pid = processes.spawn("router", "run", "-c", str(config_path))
    _wait(lambda: "routing link connected" in processes.log("router"), processes, "the router to connect")
    print(f"demo: router (pid {pid}) up; it knows the workers from their retained heartbeats")
    print(f"demo: {DEVICES} devices publishing {RATE:g} msg/s")


def _scenario(processes: Processes, background: Background) -> tuple[float, float, float]:
    """Traffic, the victim hangs, the kill, more traffic; returns when the traffic started, when the kill came and
    when it ended."""
    start = time.monotonic()
    _pause(BEFORE, processes, background)
    print(f"demo: {time.monotonic() - start:4.1f} s: {background.simulator.sent} messages sent; "
          f"{VICTIM} hangs (SIGSTOP): its messages pile up in its session")
    processes.hang(VICTIM)
    _pause(HANG, processes, background)
    print(f"demo: {time.monotonic() - start:4.1f} s: {background.simulator.sent} messages sent; "
          f"killing {VICTIM} with SIGKILL; its session is reclaimed after {RECLAIM_AFTER:g} s")
    processes.kill(VICTIM)
    killed = time.monotonic()
    _pause(AFTER, processes, background)
    background.stop()
    end = time.monotonic()
    print(f"demo: {end - start:4.1f} s: {background.simulator.sent} messages sent; devices stopped")
    return start, killed, end


def _pause(seconds: float, processes: Processes, background: Background) -> None:
    """Sleep, watching that nothing has died and the simulator still runs."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
        processes.check()
        if background.error is not None:
            raise DemoFailed(f"the simulated devices stopped: {background.error}")


def _await_delivery(processes: Processes, observer: Observer, simulator: Simulator, killed: float) -> None:
    """Until the broker has delivered as many messages as were sent, and the router's stats say the victim's
    session is reclaimed and what it held has reached other workers; or DELIVERY_TIMEOUT: the summary tells."""
    print(f"demo: waiting for every message to reach a worker, and {VICTIM}'s session to be reclaimed")
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while not _delivered(observer, simulator.sent, killed):
        if time.monotonic() > deadline:
            return
        processes.check()
        time.sleep(0.1)


def _delivered(observer: Observer, sent: int, killed: float) -> bool:
    arrivals, stats = observer.arrivals(), observer.stats()
    if len({(a.route, a.device, a.seq) for a in arrivals}) < sent or stats is None:
        return False
    reclaim = stats.get("reclaim") or {}
    reclaimed: int | None = (reclaim.get("reclaimed") or {}).get("worker", {}).get(VICTIM)
    if reclaimed is None or f"worker/{VICTIM}" in (reclaim.get("pending") or {}):
        return False
    at_victim = {(a.route, a.device, a.seq) for a in arrivals if a.worker == VICTIM}
    elsewhere = {(a.route, a.device, a.seq) for a in arrivals if a.worker != VICTIM and a.at >= killed}
    return len(at_victim & elsewhere) >= reclaimed


def _wait(condition: Callable[[], bool], processes: Processes, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        processes.check()
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {START_TIMEOUT:g} s waiting for {what}")
        time.sleep(0.05)
