"""What the router has done and what it holds, as counters and as the JSON of the stats topic.

The service counts; ``snapshot`` turns the counts and the fleet's view into
plain data, so the stats topic, ``mqttlb status`` and the tests read one
shape. Nothing here touches the network or the clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from .pool import Health, WorkerView


@dataclass(slots=True)
class Counters:
    """What the router has done since it started."""

    forwarded: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(route, worker) -> forwards the broker acknowledged."""
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(route, reason) -> dead letters the broker acknowledged."""
    stranded: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(pool, worker) -> messages a worker held, by its last report, when it went down or silent."""
    refused: int = 0
    """Forwards the broker refused (they went to the dead letters instead)."""
    dropped: int = 0
    """Dead letters the broker refused too: logged as errors, the only loss we cannot avoid."""
    bad_heartbeats: int = 0


@dataclass(frozen=True, slots=True)
class Inbound:
    """The inbound messages the router holds, against its window."""

    unacked: int
    """Taken from the broker and not yet acknowledged: held plus those whose forward is on its way."""
    held: int
    """Waiting for a healthy worker."""
    peak: int
    """The most ``unacked`` has been since the router started: never above ``max_inflight``."""
    max_inflight: int


def snapshot(*, router: str, ts: float, uptime: float, connected: bool, inbound: Inbound, counters: Counters,
             pools: Iterable[str], workers: Iterable[WorkerView], reconnects: int) -> dict[str, Any]:
    """The stats topic's payload (before JSON encoding); ``pools`` are the configured ones."""
    per_worker: Counter[str] = Counter()
    forwarded: dict[str, dict[str, int]] = {}
    for (route, worker), count in sorted(counters.forwarded.items()):
        forwarded.setdefault(route, {})[worker] = count
        per_worker[worker] += count
    dead_letters: dict[str, dict[str, int]] = {}
    for (route, reason), count in sorted(counters.dead_letters.items()):
        dead_letters.setdefault(route, {})[reason] = count
    stranded = Counter({worker: count for (_, worker), count in counters.stranded.items()})
    total = per_worker.total()
    states: dict[str, dict[str, int]] = {pool: {health.value: 0 for health in Health} for pool in pools}
    listed: dict[str, dict[str, Any]] = {}
    for view in workers:
        states.setdefault(view.pool, {health.value: 0 for health in Health})[view.health.value] += 1
        listed[view.worker] = {
            "pool": view.pool, "state": view.health.value, "weight": view.weight, "inflight": view.inflight,
            "forwarded": per_worker[view.worker],
            "share": round(per_worker[view.worker] / total, 4) if total else 0.0,
            "stranded": stranded[view.worker],
        }
    return {
        "router": router, "ts": round(ts, 3), "uptime": round(uptime, 3), "connected": connected,
        "inbound": {"unacked": inbound.unacked, "held": inbound.held, "peak": inbound.peak,
                    "max_inflight": inbound.max_inflight},
        "workers": listed, "pools": states, "forwarded": forwarded, "dead_letters": dead_letters,
        "refused": counters.refused, "dropped": counters.dropped, "bad_heartbeats": counters.bad_heartbeats,
        "reconnects": reconnects,
    }
