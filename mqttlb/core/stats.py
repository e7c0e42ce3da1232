"""What the router has done and what it holds, as counters and as the JSON of the stats topic.

The service counts; ``snapshot`` turns the counts and the fleet's view into
plain data, so the stats topic, ``/metrics``, ``mqttlb status`` and the tests
read one shape. Nothing here touches the network or the clock.

The pools' figures come from the fleet's census, kept as workers change, so
they cost the same for ten workers or ten thousand. The list of every worker
does not: it is in the snapshot only when the caller passes the workers
(``metrics.per_worker``, by default while the fleet has fewer than
PER_WORKER_AUTO of them).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .pool import Census, Health, WorkerView

FORWARD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds, in seconds, of the forward latency buckets: loopback forwards take about a millisecond,
messages held for a worker up to ``dead_letter.hold``."""


@dataclass(slots=True)
class Histogram:
    """Observations counted into buckets, as Prometheus histograms count them (cheap: one bisect)."""

    bounds: tuple[float, ...] = FORWARD_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(FORWARD_BUCKETS) + 1))
    """Per bucket, not cumulative; the last one is above every bound."""
    sum: float = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """``count`` observations of ``value``."""
        self.counts[bisect_left(self.bounds, value)] += count
        self.sum += value * count

    def figures(self) -> dict[str, Any]:
        """Count, sum and cumulative buckets keyed by their upper bound ("+Inf" last), for JSON."""
        buckets: dict[str, int] = {}
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets[bound] = running
        return {"count": running, "sum": round(self.sum, 6), "buckets": buckets}


@dataclass(slots=True)
class Counters:
    """What the router has done since it started."""

    forwarded: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(route, worker) -> forwards the broker acknowledged."""
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(route, reason) -> dead letters the broker acknowledged."""
    stranded: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(pool, worker) -> messages a worker held, by its last report, when it went down or silent."""
    forward_seconds: Histogram = field(default_factory=Histogram)
    """From a message's arrival at the router to the broker's acknowledgement of its forward."""
    refused: int = 0
    """Forwards the broker refused (they went to the dead letters instead)."""
    dropped: int = 0
    """Dead letters the broker refused too: logged as errors, the only loss we cannot avoid."""
    bad_heartbeats: int = 0


@dataclass(frozen=True, slots=True)
class Backlog:
    """The inbound messages the router holds, against its window (the stats' ``inbound`` section)."""

    unacked: int
    """Taken from the broker and not yet acknowledged: held plus those whose forward is on its way."""
    held: int
    """Waiting for a healthy worker."""
    peak: int
    """The most ``unacked`` has been since the router started: never above ``max_inflight``."""
    max_inflight: int


@dataclass(frozen=True, slots=True)
class Moment:
    """When a snapshot is taken, and what state the router is in then."""

    ts: float
    """Unix time."""
    now: float
    """The router's clock, against which workers' ``last_seen`` is measured."""
    uptime: float
    connected: bool
    """Both connections are up: messages come in, and their forwards go out."""
    stopping: bool = False
    problem: str | None = None
    """Why the router is not, or not steadily, connected: refused, taken over, unreachable."""


def snapshot(*, router: str, moment: Moment, inbound: Backlog, counters: Counters, pools: Iterable[str],
             census: Census, workers: Iterable[WorkerView] | None, reconnects: int,
             awaiting_ack: int, reclaim: Mapping[str, Any] | None = None,
             routers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The stats topic's payload (before JSON encoding); ``pools`` are the configured ones.

    ``workers`` None: the fleet is too big to list worker by worker (``per_worker`` false, ``workers`` {}).
    """
    states: dict[str, Any] = {pool: {health.value: 0 for health in Health} for pool in pools}
    states.update(census.states)
    listed: dict[str, dict[str, Any]] = {}
    if workers is not None:
        forwarded_to, stranded_at = _by_worker(counters.forwarded), _by_worker(counters.stranded)
        total = forwarded_to.total()
        for view in workers:
            listed[view.worker] = {
                "pool": view.pool, "state": view.health.value, "weight": view.weight, "inflight": view.inflight,
                "heartbeat_age": round(max(0.0, moment.now - view.last_seen), 3),
                "forwarded": forwarded_to[view.worker],
                "share": round(forwarded_to[view.worker] / total, 4) if total else 0.0,
                "stranded": stranded_at[view.worker],
            }
    return {
        "router": router, "ts": round(moment.ts, 3), "uptime": round(moment.uptime, 3),
        "connected": moment.connected, "stopping": moment.stopping, "problem": moment.problem,
        "inbound": {"unacked": inbound.unacked, "held": inbound.held, "peak": inbound.peak,
                    "max_inflight": inbound.max_inflight},
        "awaiting_ack": awaiting_ack,
        "per_worker": workers is not None, "workers": listed, "pools": states,
        "forwarded": _nested(counters.forwarded), "dead_letters": _nested(counters.dead_letters),
        "stranded": _nested(counters.stranded), "forward_seconds": counters.forward_seconds.figures(),
        "refused": counters.refused, "dropped": counters.dropped, "bad_heartbeats": counters.bad_heartbeats,
        "heartbeats_refused": _nested(census.refused), "reconnects": reconnects,
        "reclaim": dict(reclaim or {"reclaimed": {}, "returned": 0, "pending": {}}), "routers": dict(routers or {}),
    }


def _by_worker(counts: Mapping[tuple[str, str], int]) -> Counter[str]:
    """``{(route or pool, worker): count}`` summed by worker."""
    totals: Counter[str] = Counter()
    for (_, worker), count in counts.items():
        totals[worker] += count
    return totals


def _nested(counts: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """``{(outer, inner): count}`` as ``{outer: {inner: count}}``, both sorted."""
    nested: dict[str, dict[str, int]] = {}
    for (outer, inner), count in sorted(counts.items()):
        nested.setdefault(outer, {})[inner] = count
    return nested
