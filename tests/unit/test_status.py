"""What ``mqttlb status`` makes of the stats topic and the heartbeats, without a broker."""

from __future__ import annotations

from typing import Any

from mqttlb.commands.status import SHOWN, Sighting, board, render
from mqttlb.core.pool import Health, Heartbeat, WorkerState, WorkerView
from mqttlb.core.routers import RouterBeat
from mqttlb.core.stats import Backlog, Counters, Moment, snapshot

from .test_stats import census_of


def stats(ts: float, uptime: float, forwarded: dict[str, int], router: str = "r", listed: bool = True,
          refused: dict[tuple[str, str], int] | None = None, reclaim: dict[str, Any] | None = None,
          routers: dict[str, Any] | None = None, stranded: dict[tuple[str, str], int] | None = None
          ) -> dict[str, Any]:
    counters = Counters()
    counters.forwarded.update({("telemetry", worker): count for worker, count in forwarded.items()})
    counters.stranded.update(stranded or {})
    workers = [WorkerView(worker, "default", Health.UP, 1.0, 2, 99.0) for worker in forwarded]
    return snapshot(router=router, moment=Moment(ts, 100.0, uptime, connected=True), inbound=Backlog(3, 0, 9, 1000),
                    counters=counters, pools=["default", "gpu"], census=census_of(workers, refused),
                    workers=workers if listed else None, reconnects=0, awaiting_ack=1, reclaim=reclaim,
                    routers=routers)


def view(latest: dict[str, Any] | None, previous: dict[str, Any] | None = None,
         sightings: dict[str, Sighting] | None = None, wall: float = 1000.5, now: float = 50.0,
         routers: dict[str, RouterBeat] | None = None) -> dict[str, Any]:
    return board(latest, previous, sightings or {}, ["default"], interval=5.0, wall=wall, now=now, routers=routers)


def pending(holding: int, state: str = "waiting", gone_for: float = 1.5, **fields: Any) -> dict[str, Any]:
    """A departed owner's entry in the stats' ``reclaim.pending``."""
    return {"session": "s", "state": state, "by": None, "holding": holding, "reclaimed": 0, "gone_for": gone_for,
            "devices_wait": True, **fields}


def test_rates_come_from_two_snapshots_of_one_router() -> None:
    shown = view(stats(1000.0, 20.0, {"w1": 300, "w2": 100}), stats(995.0, 15.0, {"w1": 100, "w2": 100}))
    assert shown["router"]["forwarded"] == 400 and shown["router"]["rate"] == 40.0
    workers = shown["pools"]["default"]["workers"]
    assert (workers["w1"]["rate"], workers["w2"]["rate"]) == (40.0, 0.0)
    assert (workers["w1"]["share"], workers["w1"]["messages"]) == (0.75, 300)


def test_no_rate_from_one_snapshot_or_across_a_restart_or_another_router() -> None:
    latest = stats(1000.0, 20.0, {"w1": 300})
    assert view(latest)["router"]["rate"] is None
    assert view(latest, stats(995.0, 30.0, {"w1": 900}))["router"]["rate"] is None  # restarted: uptime went back
    assert view(latest, stats(995.0, 15.0, {"w1": 100}, router="other"))["router"]["rate"] is None


def test_heartbeat_age_grows_with_the_snapshot_unless_a_fresher_heartbeat_was_seen() -> None:
    latest = stats(1000.0, 20.0, {"w1": 1, "w2": 1})  # the router saw both 1.0 s before its snapshot
    beat = Sighting(Heartbeat("w2"), received=49.8)
    workers = view(latest, sightings={"w2": beat}, wall=1002.0, now=50.0)["pools"]["default"]["workers"]
    assert workers["w1"]["heartbeat_age"] == 3.0
    assert workers["w2"]["heartbeat_age"] == 0.2


def test_heartbeats_add_the_workers_the_router_does_not_list_but_not_forgotten_wills() -> None:
    sightings = {"w7": Sighting(Heartbeat("w7", pool="edge", weight=3.0), received=None),
                 "old": Sighting(Heartbeat("old", state=WorkerState.DOWN), received=None)}
    shown = view(None, sightings=sightings)
    assert shown["router"] is None
    assert shown["pools"]["default"] == {"up": 0, "draining": 0, "down": 0, "timeout": 0, "workers": {}}
    row = shown["pools"]["edge"]["workers"]["w7"]
    assert row == {"state": "up", "weight": 3.0, "inflight": 0, "heartbeat_age": None, "messages": None,
                   "share": None, "rate": None, "stranded": None, "source": "heartbeat"}


def test_stale_stats_are_flagged() -> None:
    assert view(stats(1000.0, 20.0, {}), wall=1014.0)["router"]["stale"] is False
    assert view(stats(1000.0, 20.0, {}), wall=1016.0)["router"]["stale"] is True


def test_the_table_has_a_headline_and_a_row_per_worker() -> None:
    shown = view(stats(1000.0, 125.0, {"w1": 300, "w2": 100}), stats(995.0, 120.0, {"w1": 100, "w2": 100}))
    lines = render(shown, "mqttlb/stats")
    assert lines[0] == "router r: connected, up 2m05s"
    assert lines[1] == "  forwarded 400, 40.0 msg/s; inbound 3 unacked of 1000 (peak 9), 0 held; 1 forwards in flight"
    assert lines[2].startswith("  dead letters: none;")
    assert "pool default: 2 up" in lines and "pool gpu: no workers" in lines
    assert lines[lines.index("pool default: 2 up") + 2].split() == ["w1", "up", "1", "2", "1.5s", "300", "75.0%",
                                                                    "40.0", "0"]


def test_the_table_says_when_there_is_no_router() -> None:
    assert render(view(None), "mqttlb/stats")[0].startswith("no stats from a router on mqttlb/stats")


def test_a_fleet_too_big_to_list_shows_the_routers_counts_and_the_heartbeats() -> None:
    latest = stats(1000.0, 20.0, {f"w{i}": 1 for i in range(5)}, listed=False, refused={("default", "max_workers"): 3})
    sightings = {"w1": Sighting(Heartbeat("w1", inflight=4), received=49.0)}
    shown = view(latest, sightings=sightings)
    pool = shown["pools"]["default"]
    assert (pool["up"], pool["timeout"]) == (5, 0)  # the router's counts, not the one heartbeat seen here
    assert list(pool["workers"]) == ["w1"] and pool["workers"]["w1"]["source"] == "heartbeat"
    assert pool["workers"]["w1"]["inflight"] == 4 and pool["workers"]["w1"]["heartbeat_age"] == 1.0
    lines = render(shown, "mqttlb/stats")
    assert "new workers refused 3 (max_workers)" in lines[2]
    assert "pool default: 5 up" in lines


def test_the_routers_problem_is_the_second_line() -> None:
    figures = stats(1000.0, 125.0, {"w1": 3})
    figures["problem"] = "session taken over: another client connected with client id 'r'"
    lines = render(view(figures), "mqttlb/stats")
    assert lines[1] == "  problem: session taken over: another client connected with client id 'r'"
    assert render(view(stats(1000.0, 125.0, {"w1": 3})), "mqttlb/stats")[1].startswith("  forwarded")


# -- routers and reclaim ------------------------------------------------------------------------


def test_the_routers_are_listed_by_their_own_heartbeats_when_watched_else_as_the_stats_router_saw_them() -> None:
    seen = {"r": {"state": "up", "session": "r", "reclaiming": []},
            "r-2": {"state": "down", "session": "r-2", "reclaiming": []},  # reclaimed: its heartbeat was cleared
            "r-3": {"state": "up", "session": "r-3", "reclaiming": []}}
    latest = stats(1000.0, 20.0, {}, routers=seen)
    assert view(latest)["routers"] == seen
    beats = {"r": RouterBeat("r", True, "r", frozenset({"mqttlb-worker-w1"})),
             "r-3": RouterBeat("r-3", up=False)}  # its will: no session named, the stats' router knows it
    assert view(latest, routers=beats)["routers"] == {
        "r": {"state": "up", "session": "r", "reclaiming": ["mqttlb-worker-w1"]},
        "r-3": {"state": "down", "session": "r-3", "reclaiming": []}}
    assert view(None, routers=beats)["routers"]["r-3"]["session"] is None  # no router: no one knows its session


def test_the_reclaim_block_totals_what_was_reclaimed_and_what_departed_owners_still_hold() -> None:
    reclaim = {"reclaimed": {"worker": {"w1": 2698, "w2": 2}, "router": {"r-2": 40}}, "returned": 3,
               "pending": {"worker/w4": pending(51, gone_for=2.0), "router/r-9": pending(0, "elsewhere", by="r-1")}}
    shown = view(stats(1000.0, 20.0, {}, reclaim=reclaim, stranded={("default", "w7"): 117}), wall=1001.5)["reclaim"]
    assert (shown["reclaimed_total"], shown["returned"], shown["stranded"]) == (2740, 3, 117)
    assert shown["pending_holding"] == 51
    assert shown["pending"]["worker/w4"]["gone_for"] == 3.5  # aged with the snapshot
    assert view(None)["reclaim"] is None


def test_the_text_says_in_one_line_each_that_all_routers_are_up_and_nothing_is_reclaimed() -> None:
    latest = stats(1000.0, 20.0, {"w1": 1})
    lines = render(view(latest, routers={"r": RouterBeat("r", True, "r"), "r-1": RouterBeat("r-1", True, "r-1")}),
                   "mqttlb/stats")
    assert lines[3:7] == ["", "routers: 2 up: r, r-1", "", "reclaim: nothing pending, nothing reclaimed"]
    assert lines[7:9] == ["", "pool default: 1 up"]


def test_the_text_lists_down_routers_first_and_what_each_router_reclaims() -> None:
    beats = {"r": RouterBeat("r", True, "r", frozenset({"mqttlb-worker-w1", "r-2"})), "r-2": RouterBeat("r-2", False)}
    lines = render(view(stats(1000.0, 20.0, {}), routers=beats), "mqttlb/stats")
    start = lines.index("routers: 1 up, 1 down")
    assert [line.split() for line in lines[start + 1:start + 4]] == [
        ["ROUTER", "STATE", "RECLAIMING"], ["r-2", "down", "-"], ["r", "up", "mqttlb-worker-w1,", "r-2"]]


def test_the_text_shows_reclaimed_duplicates_stranded_and_the_biggest_pending_owners_of_a_big_fleet() -> None:
    owners = {f"worker/w{i}": pending(i) for i in range(1, SHOWN + 4)}
    owners["router/r-2"] = pending(0, "reclaiming")
    reclaim = {"reclaimed": {"worker": {"w0": 2698, "x1": 1, "x2": 1, "x3": 1}}, "returned": 2, "pending": owners}
    lines = render(view(stats(1000.0, 20.0, {}, reclaim=reclaim, stranded={("default", "w9"): 117})),
                   "mqttlb/stats")
    start = next(i for i, line in enumerate(lines) if line.startswith("reclaim:"))
    assert lines[start] == ("reclaim: 2701 messages reclaimed (worker w0 2698, worker x1 1, worker x2 1, +1 more), "
                            "2 duplicates returned")
    assert lines[start + 1].startswith("  stranded: 117 messages in sessions that are not reclaimed")
    holding = sum(range(1, SHOWN + 4))
    assert lines[start + 2] == f"  pending: {SHOWN + 4} departed, holding about {holding} messages " \
                               "(stranded until reclaimed)"
    assert lines[start + 3].split() == ["PENDING", "STATE", "GONE", "HOLDING", "RECLAIMED", "DEVICES", "BY"]
    biggest = SHOWN + 3
    assert lines[start + 4].split() == ["worker", f"w{biggest}", "waiting", "2s", str(biggest), "0", "held", "-"]
    rows = lines[start + 4:start + 4 + SHOWN]
    assert all(row.startswith("  worker ") for row in rows)  # the router, holding nothing known, is among the rest
    left = holding - sum(range(4, SHOWN + 4))
    assert lines[start + 4 + SHOWN] == f"  ... and 4 more, holding about {left} messages"
