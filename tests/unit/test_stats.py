"""The stats topic's payload, from counters and the fleet's view."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from mqttlb.core.pool import Census, Health, WorkerView
from mqttlb.core.stats import FORWARD_BUCKETS, Backlog, Counters, Histogram, Moment, snapshot

MOMENT = Moment(ts=100.12345, now=50.0, uptime=5.0, connected=True)


def census_of(workers: Iterable[WorkerView], refused: Mapping[tuple[str, str], int] | None = None) -> Census:
    """The census a fleet of these workers keeps."""
    counted: dict[str, Counter[str]] = {}
    for worker in workers:
        counted.setdefault(worker.pool, Counter())[worker.health.value] += 1
    return Census(sum(c.total() for c in counted.values()),
                  {pool: {h.value: c[h.value] for h in Health} for pool, c in counted.items()}, refused or {})


def stats_of(workers: list[WorkerView], counters: Counters | None = None, listed: bool = True,
             **fields: Any) -> dict[str, Any]:
    return snapshot(router="r", moment=MOMENT, inbound=Backlog(0, 0, 0, 10), counters=counters or Counters(),
                    pools=["default"], census=census_of(workers, **fields), workers=workers if listed else None,
                    reconnects=0, awaiting_ack=0)


def test_snapshot_carries_the_counters_per_route_and_worker() -> None:
    counters = Counters()
    counters.forwarded.update({("telemetry", "w1"): 30, ("logs", "w1"): 10, ("telemetry", "w2"): 60})
    counters.dead_letters.update({("telemetry", "bad_key"): 2, ("none", "no_route"): 1})
    counters.stranded[("default", "w2")] += 7
    workers = [WorkerView("w1", "default", Health.UP, 1.0, 3, 49.5),
               WorkerView("w2", "default", Health.DOWN, 2.0, 0, 40.0)]
    stats = snapshot(router="r", moment=MOMENT, inbound=Backlog(unacked=12, held=4, peak=20, max_inflight=1000),
                     counters=counters, pools=["default", "gpu"], census=census_of(workers), workers=workers,
                     reconnects=1, awaiting_ack=8)
    assert stats["inbound"] == {"unacked": 12, "held": 4, "peak": 20, "max_inflight": 1000}
    assert stats["awaiting_ack"] == 8
    assert stats["forwarded"] == {"logs": {"w1": 10}, "telemetry": {"w1": 30, "w2": 60}}
    assert stats["dead_letters"] == {"none": {"no_route": 1}, "telemetry": {"bad_key": 2}}
    assert stats["stranded"] == {"default": {"w2": 7}}
    assert stats["workers"]["w1"] == {"pool": "default", "state": "up", "weight": 1.0, "inflight": 3,
                                      "heartbeat_age": 0.5, "forwarded": 40, "share": 0.4, "stranded": 0}
    assert stats["workers"]["w2"]["stranded"] == 7 and stats["workers"]["w2"]["state"] == "down"
    assert stats["workers"]["w2"]["heartbeat_age"] == 10.0
    assert stats["pools"] == {"default": {"up": 1, "draining": 0, "down": 1, "timeout": 0},
                              "gpu": {"up": 0, "draining": 0, "down": 0, "timeout": 0}}
    assert stats["ts"] == 100.123 and stats["connected"] is True and stats["stopping"] is False
    orjson.dumps(stats)  # it is what goes on the wire


def test_snapshot_of_a_router_that_has_done_nothing() -> None:
    stats = snapshot(router="r", moment=Moment(0.0, 0.0, 0.0, connected=False, stopping=True),
                     inbound=Backlog(0, 0, 0, 10), counters=Counters(), pools=["default"], census=census_of([]),
                     workers=[], reconnects=0, awaiting_ack=0)
    assert stats["workers"] == {} and stats["forwarded"] == {} and stats["connected"] is False
    assert stats["per_worker"] is True and stats["heartbeats_refused"] == {}
    assert stats["stopping"] is True
    assert stats["forward_seconds"]["count"] == 0 and stats["forward_seconds"]["buckets"]["+Inf"] == 0


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    histogram = Histogram()
    for seconds in (0.0001, 0.001, 0.0011, 0.2, 100.0):
        histogram.observe(seconds)
    figures = histogram.figures()
    assert figures["count"] == 5 and abs(figures["sum"] - 100.2022) < 1e-9
    buckets = figures["buckets"]
    assert list(buckets) == [*map(repr, FORWARD_BUCKETS), "+Inf"]
    assert buckets["0.0005"] == 1
    assert buckets["0.001"] == 2          # 0.001 is in the bucket whose upper bound it is
    assert buckets["0.0025"] == 3
    assert buckets["0.25"] == 4 and buckets["30.0"] == 4
    assert buckets["+Inf"] == 5


def test_observations_of_one_value_count_as_many() -> None:
    """The service times a read's forwards together: they share an arrival and a settling time."""
    together, apart = Histogram(), Histogram()
    together.observe(0.002, 3)
    together.observe(0.2)
    for seconds in (0.002, 0.002, 0.002, 0.2):
        apart.observe(seconds)
    assert together.counts == apart.counts and abs(together.sum - apart.sum) < 1e-12


def test_a_fleet_too_big_to_list_keeps_its_pool_counts_and_forward_counts() -> None:
    workers = [WorkerView(f"w{i}", "default", Health.UP if i % 4 else Health.TIMEOUT, 1.0, 0, 49.0)
               for i in range(40)]
    counters = Counters()
    counters.forwarded[("telemetry", "w1")] = 5
    stats = stats_of(workers, counters, listed=False)
    assert stats["per_worker"] is False and stats["workers"] == {}
    assert stats["pools"]["default"] == {"up": 30, "draining": 0, "down": 0, "timeout": 10}
    assert stats["forwarded"] == {"telemetry": {"w1": 5}}
    assert stats_of(workers, counters)["workers"]["w1"]["forwarded"] == 5


def test_refused_heartbeats_are_counted_by_pool_and_reason() -> None:
    stats = stats_of([], refused={("gpu", "max_workers"): 7, ("+", "max_workers"): 2})
    assert stats["heartbeats_refused"] == {"+": {"max_workers": 2}, "gpu": {"max_workers": 7}}
