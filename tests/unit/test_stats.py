"""The stats topic's payload, from counters and the fleet's view."""

from __future__ import annotations

import orjson

from mqttlb.pool import Health, WorkerView
from mqttlb.stats import Counters, Inbound, snapshot


def test_snapshot_carries_the_counters_per_route_and_worker() -> None:
    counters = Counters()
    counters.forwarded.update({("telemetry", "w1"): 30, ("logs", "w1"): 10, ("telemetry", "w2"): 60})
    counters.dead_letters.update({("telemetry", "bad_key"): 2, ("none", "no_route"): 1})
    counters.stranded[("default", "w2")] += 7
    workers = [WorkerView("w1", "default", Health.UP, 1.0, 3, 0.0),
               WorkerView("w2", "default", Health.DOWN, 2.0, 0, 0.0)]
    stats = snapshot(router="r", ts=100.12345, uptime=5.0, connected=True,
                     inbound=Inbound(unacked=12, held=4, peak=20, max_inflight=1000), counters=counters,
                     pools=["default", "gpu"], workers=workers, reconnects=1)
    assert stats["inbound"] == {"unacked": 12, "held": 4, "peak": 20, "max_inflight": 1000}
    assert stats["forwarded"] == {"logs": {"w1": 10}, "telemetry": {"w1": 30, "w2": 60}}
    assert stats["dead_letters"] == {"none": {"no_route": 1}, "telemetry": {"bad_key": 2}}
    assert stats["workers"]["w1"] == {"pool": "default", "state": "up", "weight": 1.0, "inflight": 3,
                                      "forwarded": 40, "share": 0.4, "stranded": 0}
    assert stats["workers"]["w2"]["stranded"] == 7 and stats["workers"]["w2"]["state"] == "down"
    assert stats["pools"] == {"default": {"up": 1, "draining": 0, "down": 1, "timeout": 0},
                              "gpu": {"up": 0, "draining": 0, "down": 0, "timeout": 0}}
    assert stats["ts"] == 100.123 and stats["connected"] is True
    orjson.dumps(stats)  # it is what goes on the wire


def test_snapshot_of_a_router_that_has_done_nothing() -> None:
    stats = snapshot(router="r", ts=0.0, uptime=0.0, connected=False, inbound=Inbound(0, 0, 0, 10),
                     counters=Counters(), pools=["default"], workers=[], reconnects=0)
    assert stats["workers"] == {} and stats["forwarded"] == {} and stats["connected"] is False
