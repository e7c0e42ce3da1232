"""``/metrics`` (Prometheus text format) and ``/healthz`` over HTTP, on threads of their own.

Why a module apart: the routing core knows nothing of HTTP or prometheus-client.
The router thread never waits for a scrape. Every tick it hands over a
``Pulse``, the few fields ``/healthz`` needs (one reference swapped). A whole
stats snapshot costs more the bigger the fleet, so it is made only when a scrape
asks for one: the scrape raises ``wanted``, the router thread sees it at its
next tick, makes a snapshot and ``publish``es it (never changed after), and the
scrape, woken, turns it into metric families (``families``). A scrape that
waits longer than SCRAPE_WAIT serves the last snapshot. The lock is held only
to swap that reference, so the figures are the stats topic's, by construction.

Per-worker series (``mqttlb_worker_*``) are in a snapshot only while the fleet
is small (``metrics.per_worker``): one series per worker and label value is what
Prometheus warns against for big, changing sets of ids.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .core.pool import Health

log = logging.getLogger("mqttlb.metrics")

STALLED = 10.0
"""Seconds without a pulse from the routing loop (it hands one over every tick) before /healthz fails."""
SCRAPE_WAIT = 1.0
"""Seconds a scrape waits for the routing loop to make it a fresh snapshot (a tick is 0.25 s)."""

Figures = Mapping[str, Any]
"""A snapshot as ``stats.snapshot`` makes it."""


@dataclass(frozen=True, slots=True)
class Pulse:
    """What ``/healthz`` needs, from the routing loop every tick: a few fields, whatever the size of the fleet."""

    connected: bool
    stopping: bool
    staffed: frozenset[str]
    """The pools with at least one healthy worker."""
    problem: str | None = None
    """Why the router is not, or not steadily, connected: refused, taken over, unreachable."""


@dataclass(frozen=True, slots=True)
class Verdict:
    healthy: bool
    reason: str


def health(pulse: Pulse | None, age: float, pools: Iterable[str]) -> Verdict:
    """Healthy while connected, not stopping, its loop alive, and every pool in ``pools`` with a healthy worker.

    ``age`` is how long ago the routing loop handed ``pulse`` over.
    """
    if pulse is None:
        return Verdict(False, "starting")
    if pulse.stopping:
        return Verdict(False, "stopping")
    problems = []
    if age > STALLED:
        problems.append(f"the routing loop has not reported for {age:.0f}s")
    if not pulse.connected:
        problems.append("not connected to the broker" + (f": {pulse.problem}" if pulse.problem else ""))
    elif pulse.problem:  # connected, but it does not last: a session taken over
        problems.append(pulse.problem)
    empty = [pool for pool in sorted(pools) if pool not in pulse.staffed]
    if empty:
        problems.append("no healthy worker in pool " + ", ".join(empty))
    return Verdict(not problems, "; ".join(problems) or "ok")


Family = type[CounterMetricFamily] | type[GaugeMetricFamily]

_SCALARS: tuple[tuple[Family, str, str, tuple[str, ...]], ...] = (
    (GaugeMetricFamily, "mqttlb_connected", "1 while all three connections to the broker are up", ("connected",)),
    (GaugeMetricFamily, "mqttlb_held_messages", "Inbound messages waiting for a healthy worker",
     ("inbound", "held")),
    (GaugeMetricFamily, "mqttlb_inbound_unacked", "Inbound messages taken and not yet acknowledged",
     ("inbound", "unacked")),
    (GaugeMetricFamily, "mqttlb_inbound_unacked_peak", "The most inbound messages unacknowledged at once",
     ("inbound", "peak")),
    (GaugeMetricFamily, "mqttlb_inbound_unacked_max", "router.max_inflight: the bound on unacknowledged",
     ("inbound", "max_inflight")),
    (GaugeMetricFamily, "mqttlb_forwards_in_flight", "Forwards and dead letters sent and not yet acknowledged "
     "by the broker", ("awaiting_ack",)),
    (CounterMetricFamily, "mqttlb_reconnects_total", "Connections to the broker lost", ("reconnects",)),
    (CounterMetricFamily, "mqttlb_bad_heartbeats_total", "Heartbeats rejected as malformed or not allowed",
     ("bad_heartbeats",)),
    (CounterMetricFamily, "mqttlb_forwards_refused_total", "Forwards the broker refused (dead-lettered instead)",
     ("refused",)),
    (CounterMetricFamily, "mqttlb_lost_total", "Messages lost: the broker refused their dead letter too, or "
     "not even its shortest form fit the broker's Maximum Packet Size",
     ("dropped",)),
)
"""Single figures: kind, name, help, and where the snapshot has the value."""

_NESTED: tuple[tuple[Family, str, str, tuple[str, str], str], ...] = (
    (CounterMetricFamily, "mqttlb_forwarded_total", "Forwards the broker acknowledged", ("route", "worker"),
     "forwarded"),
    (CounterMetricFamily, "mqttlb_dead_letters_total", "Dead letters the broker acknowledged", ("route", "reason"),
     "dead_letters"),
    (GaugeMetricFamily, "mqttlb_workers", "Workers known, by pool and state", ("pool", "state"), "pools"),
    (CounterMetricFamily, "mqttlb_stranded_messages_total", "Messages a worker held, by its last report, when it "
     "went down or silent: they wait in its session", ("pool", "worker"), "stranded"),
    (CounterMetricFamily, "mqttlb_heartbeats_refused_total", "Heartbeats of new worker ids ignored: the pool "
     "already had max_workers (pool \"+\": the pools the config does not name, together)", ("pool", "reason"),
     "heartbeats_refused"),
)
"""Figures by two labels: kind, name, help, the labels, and the snapshot's ``{outer: {inner: value}}``."""


def families(figures: Figures) -> list[Metric]:
    """The metric families of one snapshot."""
    return [
        *(_nested(kind(name, doc, labels=labels), figures[key]) for kind, name, doc, labels, key in _NESTED),
        _latency(figures["forward_seconds"]),
        *(kind(name, doc, value=float(_dig(figures, path))) for kind, name, doc, path in _SCALARS),
        *_per_worker(figures["workers"]),
        *_reclaims(figures["reclaim"]),
    ]


def _reclaims(figures: Figures) -> list[Metric]:
    pending = GaugeMetricFamily("mqttlb_reclaims", "Departed workers' and routers' sessions not yet reclaimed: "
                                "waiting out reclaim.after, being reclaimed here, or by another router",
                                labels=["state"])
    holding = GaugeMetricFamily("mqttlb_reclaim_holding_messages", "About how many messages the sessions not yet "
                                "reclaimed hold (their owners' last reports): stranded until reclaimed")
    states = Counter(entry["state"] for entry in figures["pending"].values())
    for state in ("waiting", "reclaiming", "elsewhere"):
        pending.add_metric([state], states[state])
    holding.add_metric([], sum(max(0, entry["holding"] - entry["reclaimed"])
                               for entry in figures["pending"].values()))
    reclaimed = _nested(CounterMetricFamily("mqttlb_reclaimed_total", "Messages taken from a departed worker's "
                                            "(kind=\"router\": router's) broker session and routed again",
                                            labels=["kind", "worker"]), figures["reclaimed"])
    returned = CounterMetricFamily("mqttlb_reclaim_returned_total", "Messages taken from a session whose owner "
                                   "took it back before they were acknowledged: it gets them again (duplicates)",
                                   value=figures["returned"])
    return [reclaimed, pending, holding, returned]


def _dig(figures: Figures, path: tuple[str, ...]) -> Any:
    for key in path:
        figures = figures[key]
    return figures


def _nested(family: CounterMetricFamily | GaugeMetricFamily,
            values: Mapping[str, Mapping[str, float]]) -> Metric:
    for outer, inner in values.items():
        for label, value in inner.items():
            family.add_metric([outer, label], value)
    return family


_go_float: Callable[[float], str] = floatToGoString
"""A bucket bound as Prometheus writes it (``+Inf``, ``0.005``); prometheus-client leaves it untyped."""


def _latency(figures: Figures) -> Metric:
    buckets = [(_go_float(float(bound)), count) for bound, count in figures["buckets"].items()]
    return HistogramMetricFamily("mqttlb_forward_seconds", "From a message's arrival at the router to the "
                                 "broker's acknowledgement of its forward", buckets=buckets,
                                 sum_value=figures["sum"])


def _per_worker(workers: Mapping[str, Figures]) -> list[Metric]:
    labels = ["pool", "worker"]
    state = GaugeMetricFamily("mqttlb_worker_state", "1 for the state the router sees a worker in, else 0",
                              labels=[*labels, "state"])
    weight = GaugeMetricFamily("mqttlb_worker_weight", "The weight balancers use (static, heartbeat, "
                               "slow start)", labels=labels)
    inflight = GaugeMetricFamily("mqttlb_worker_inflight", "Messages the worker holds, by its last heartbeat",
                                 labels=labels)
    age = GaugeMetricFamily("mqttlb_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat",
                            labels=labels)
    for worker, seen in workers.items():
        names = [seen["pool"], worker]
        for health in Health:
            state.add_metric([*names, health.value], int(seen["state"] == health.value))
        weight.add_metric(names, seen["weight"])
        inflight.add_metric(names, seen["inflight"])
        age.add_metric(names, seen["heartbeat_age"])
    return [state, weight, inflight, age]


class _SnapshotCollector(Collector):
    def __init__(self, server: MetricsServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        figures = self._server.fresh()
        if figures is not None:
            yield from families(figures)


MAX_CLIENTS = 32
"""Connections served at once. A thread and a file descriptor each: clients that hold connections open (a
slowloris) took every descriptor the process had, and then the broker's too. A connection beyond it cuts the
oldest off: refusing the newest instead let 32 idle connections fail every /healthz probe, and an orchestrator
then restarts a router that is routing fine, again and again."""
CUT_WAIT = 1.0
"""Seconds a new connection waits for the oldest one's thread to let go of its slot, before it is closed."""
CLIENT_TIMEOUT = 10.0
"""Seconds a client may take to send its request or read the answer, before it is cut off."""


class _Quiet(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT

    def parse_request(self) -> bool:
        """False for a connection cut off to make room while its headers were read: it gets no answer."""
        cut_off = getattr(self.server, "cut_off", None)
        return super().parse_request() and not (cut_off is not None and cut_off(self.connection))

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing: a scrape every few seconds would flood the log."""


def _server_class(host: str) -> type[WSGIServer]:
    family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family
        request_queue_size = 64  # socketserver's 5 drops a burst of scrapers' SYNs: a second each to try again
        _slots = threading.BoundedSemaphore(MAX_CLIENTS)
        _lock = threading.Lock()
        _served: dict[socket.socket, bool] = {}
        """The connections being served, oldest first, and whether each was cut off."""

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self._slots.acquire(blocking=False):
                self._cut_oldest()
                if not self._slots.acquire(timeout=CUT_WAIT):
                    self.shutdown_request(request)  # no thread, no descriptor kept: the client may try again
                    return
            with self._lock:
                self._served[request] = False
            try:
                super().process_request(request, client_address)
            except BaseException:
                self._let_go(request)
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._let_go(request)

        def _let_go(self, request: socket.socket) -> None:
            with self._lock:
                del self._served[request]
            self._slots.release()

        def cut_off(self, request: socket.socket) -> bool:
            with self._lock:
                return self._served.get(request, False)

        def _cut_oldest(self) -> None:
            """Wake the oldest connection's thread: its read or write fails, and it ends and lets go of its slot."""
            with self._lock:
                oldest = next((request for request, cut in self._served.items() if not cut), None)
                if oldest is not None:
                    self._served[oldest] = True
            if oldest is not None:
                try:
                    oldest.shutdown(socket.SHUT_RDWR)
                except OSError:  # closed meanwhile (a closed socket object has no descriptor to reuse)
                    pass

        def handle_error(self, request: Any, client_address: Any) -> None:
            """A client that timed out or went away: socketserver would print a traceback for each."""
            log.debug("metrics client %s: %s", client_address, sys.exc_info()[1])

    return Server


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` from the latest published snapshot, on daemon threads."""

    def __init__(self, listen: tuple[str, int], pools: Iterable[str]) -> None:
        """Bind ``listen`` (port 0: any free port; raises OSError) and serve; ``pools`` are those routes use."""
        self._pools = frozenset(pools)
        self._pulse: tuple[float, Pulse] | None = None
        self._figures: Figures | None = None
        self._published = 0
        """How many snapshots were published: a scrape waits for this to move."""
        self._snapshots = threading.Condition()
        self.wanted = False
        """A scrape waits for a snapshot: the router thread reads it every tick, and makes one."""
        registry = CollectorRegistry()
        registry.register(_SnapshotCollector(self))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self._prometheus: Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]] = make_wsgi_app(registry)
        host, port = listen
        self._server = make_server(host, port, self._app, server_class=_server_class(host), handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, name="mqttlb-metrics", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def set_pools(self, pools: Iterable[str]) -> None:
        """The pools /healthz checks, after a reload (one reference swapped: no lock)."""
        self._pools = frozenset(pools)

    def beat(self, pulse: Pulse) -> None:
        """From the router thread, every tick: what /healthz goes by (one reference swapped: no lock)."""
        self._pulse = (time.monotonic(), pulse)

    def publish(self, figures: Figures) -> None:
        """From the router thread: the snapshot to serve from now on. It must not be changed afterwards."""
        with self._snapshots:
            self._figures = figures
            self._published += 1
            self.wanted = False
            self._snapshots.notify_all()

    def fresh(self, wait: float = SCRAPE_WAIT) -> Figures | None:
        """From a scrape: the snapshot the router thread makes for it, or after ``wait`` the last one it made."""
        with self._snapshots:
            published = self._published
            self.wanted = True
            self._snapshots.wait_for(lambda: self._published != published, wait)
            return self._figures

    def health(self) -> Verdict:
        pulse = self._pulse
        if pulse is None:
            return health(None, 0.0, self._pools)
        return health(pulse[1], time.monotonic() - pulse[0], self._pools)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._prometheus(environ, start_response)
        if path == "/healthz":
            verdict = self.health()
            start_response("200 OK" if verdict.healthy else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [verdict.reason.encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: mqttlb serves /metrics and /healthz\n"]
