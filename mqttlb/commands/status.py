"""``mqttlb status``: the pools and their workers as the router sees them, as a table or as JSON.

Why: to see at a glance, without Prometheus, which workers are up, how the
traffic is shared and whether messages pile up. It reads the router's retained
stats topic (state, weight, in-flight, messages and share of every worker the
router knows) and the workers' heartbeats, which add the workers the router
does not list (when it is down, say, or its fleet is too big to list worker
by worker: then the pools' counts are the router's) and fresher heartbeat ages. Rates come
from two snapshots in a row, so ``--once`` waits for the next one, at most
``stats.interval``. The routers' own heartbeats list every router (those of a
share group, or of ``run --processes``, whose stats go to topics of their
own), and the stats' ``reclaim`` section says what departed workers and
routers left in their sessions: reclaimed, pending, returned as duplicates.
``board`` and ``render`` are pure; ``Watch`` is the broker side.
"""

from __future__ import annotations

import argparse
import os
import queue
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from ..core.config import Config
from ..core.pool import Health, Heartbeat, WorkerState
from ..core.routers import RouterBeat
from ..core.topics import filter_matches
from ..errors import BadHeartbeat, TransportError
from ..mqtt.client import Client, Inbound

REFRESH = 1.0
"""Seconds between two redraws of the live table."""
GRACE = 1.0
"""Seconds past ``stats.interval`` to wait for a snapshot."""
STALE = 3
"""Stats older than this many intervals mean the router has stopped publishing them."""
SHOWN = 8
"""The most routers, and departed owners pending reclaim, the table lists one by one: a fleet that lost a
rack shows the biggest and a count of the rest."""
NAMED = 3
"""The most owners (and sessions) a one-line summary names before it says how many more."""
CLEAR = "\x1b[H\x1b[2J"

Figures = Mapping[str, Any]


FIELDS = frozenset({"router", "ts", "uptime", "connected", "stopping", "inbound", "awaiting_ack", "workers", "pools",
                    "forwarded", "dead_letters", "refused", "dropped", "bad_heartbeats", "reconnects"})
"""What a stats snapshot has, at least, for ``status`` to read it."""


@dataclass(frozen=True, slots=True)
class Sighting:
    beat: Heartbeat
    received: float | None
    """Our monotonic clock when it arrived live; None for a retained one, whose age is unknown."""


def board(latest: Figures | None, previous: Figures | None, sightings: Mapping[str, Sighting],
          pools: Iterable[str], *, interval: float, wall: float, now: float,
          routers: Mapping[str, RouterBeat] | None = None) -> dict[str, Any]:
    """What ``status`` shows, as JSON-ready data: the router's figures, the routers, what is reclaimed, and every
    pool with its workers.

    ``latest`` and ``previous`` are the last two stats snapshots; ``wall`` is the unix time (to age the
    snapshot), ``now`` the monotonic clock (to age the heartbeats seen arriving); ``routers`` the routers'
    heartbeats seen, None when they are not watched (the stats' router's view of them is shown then).
    """
    figures = latest or {}
    age = max(0.0, wall - figures["ts"]) if latest is not None else 0.0
    elapsed = _elapsed(latest, previous)
    rows: dict[str, dict[str, Any]] = {}
    for worker, seen in figures.get("workers", {}).items():
        before = previous["workers"].get(worker, {}) if previous is not None else {}
        rows[worker] = {
            "pool": seen["pool"], "state": seen["state"], "weight": seen["weight"], "inflight": seen["inflight"],
            "heartbeat_age": _fresher(seen["heartbeat_age"] + age, sightings.get(worker), now),
            "messages": seen["forwarded"], "share": seen["share"],
            "rate": _rate(seen["forwarded"], before.get("forwarded", 0), elapsed), "stranded": seen["stranded"],
            "source": "router",
        }
    for worker, sighting in sightings.items():
        beat = sighting.beat
        if worker not in rows and beat.state is not WorkerState.DOWN:  # a forgotten will is no news
            rows[worker] = {
                "pool": beat.pool, "state": beat.state.value, "weight": beat.weight, "inflight": beat.inflight,
                "heartbeat_age": _fresher(None, sighting, now), "messages": None, "share": None, "rate": None,
                "stranded": None, "source": "heartbeat",
            }
    grouped: dict[str, dict[str, Any]] = {pool: {} for pool in sorted({*pools, *figures.get("pools", {})})}
    for worker, row in sorted(rows.items()):
        grouped.setdefault(row.pop("pool"), {})[worker] = row
    counted_by_router = latest is not None and not figures.get("per_worker", True)
    return {
        "router": _router(figures, previous, elapsed, age, interval) if latest is not None else None,
        "routers": _routers(figures.get("routers") or {}, routers),
        "reclaim": _reclaim(figures, age) if latest is not None else None,
        "pools": {pool: {**(_counts(figures["pools"].get(pool, {})) if counted_by_router else
                            _counts({h.value: sum(r["state"] == h.value for r in workers.values()) for h in Health})),
                         "workers": workers}
                  for pool, workers in grouped.items()},
    }


def _counts(states: Mapping[str, int]) -> dict[str, int]:
    return {health.value: states.get(health.value, 0) for health in Health}


def _router(figures: Figures, previous: Figures | None, elapsed: float | None, age: float,
            interval: float) -> dict[str, Any]:
    forwarded = _total(figures["forwarded"])
    before = _total(previous["forwarded"]) if previous is not None else 0
    return {
        "id": figures["router"], "connected": figures["connected"], "stopping": figures["stopping"],
        "uptime": figures["uptime"], "stats_age": round(age, 3), "stale": age > STALE * interval,
        "inbound": figures["inbound"], "forwards_in_flight": figures["awaiting_ack"],
        "forwarded": forwarded, "rate": _rate(forwarded, before, elapsed),
        "dead_letters": figures["dead_letters"], "refused": figures["refused"], "lost": figures["dropped"],
        "bad_heartbeats": figures["bad_heartbeats"], "heartbeats_refused": figures.get("heartbeats_refused", {}),
        "reconnects": figures["reconnects"], "problem": figures.get("problem"),
    }


def _routers(listed: Mapping[str, Mapping[str, Any]], beats: Mapping[str, RouterBeat] | None) -> dict[str, Any]:
    """Every router, by its own retained heartbeat when those are watched (``beats``), else as the stats'
    router saw it. A router whose heartbeat was cleared (its session reclaimed) is gone, though the stats'
    router may still list it as down."""
    if beats is None:
        rows = {router: {"state": seen.get("state"), "session": seen.get("session"),
                         "reclaiming": list(seen.get("reclaiming") or [])} for router, seen in listed.items()}
    else:
        rows = {router: {"state": "up" if beat.up else "down",
                         "session": beat.session or listed.get(router, {}).get("session"),  # a will names none
                         "reclaiming": sorted(beat.reclaiming)} for router, beat in beats.items()}
    return dict(sorted(rows.items()))


def _reclaim(figures: Figures, age: float) -> dict[str, Any]:
    """The stats' ``reclaim`` section with totals, each pending owner's time gone aged to now; and ``stranded``:
    what departed workers hold in sessions that are not reclaimed (no session named, or ``reclaim.after`` null)."""
    section = figures.get("reclaim") or {}
    reclaimed = {kind: dict(owners) for kind, owners in (section.get("reclaimed") or {}).items()}
    pending = {owner: {**seen, "gone_for": round(seen["gone_for"] + age, 1)}
               for owner, seen in (section.get("pending") or {}).items()}
    return {
        "reclaimed": reclaimed, "reclaimed_total": sum(sum(owners.values()) for owners in reclaimed.values()),
        "returned": section.get("returned", 0), "pending": pending,
        "pending_holding": sum(seen["holding"] for seen in pending.values()),
        "stranded": _total(figures.get("stranded") or {}),
    }


def _total(forwarded: Mapping[str, Mapping[str, int]]) -> int:
    return sum(sum(per_worker.values()) for per_worker in forwarded.values())


def _elapsed(latest: Figures | None, previous: Figures | None) -> float | None:
    """Seconds between two snapshots of one router run, or None when they cannot be compared."""
    if latest is None or previous is None:
        return None
    if latest["router"] != previous["router"] or latest["uptime"] <= previous["uptime"]:
        return None  # another router, or a restart: its counts began again
    return float(latest["uptime"] - previous["uptime"])


def _rate(count: int, before: int, elapsed: float | None) -> float | None:
    return None if elapsed is None or count < before else round((count - before) / elapsed, 1)


def _fresher(age: float | None, sighting: Sighting | None, now: float) -> float | None:
    """The heartbeat age from the router's stats, or from a heartbeat we saw arrive, whichever is younger."""
    if sighting is not None and sighting.received is not None:
        seen = now - sighting.received
        age = seen if age is None else min(age, seen)
    return None if age is None else round(age, 1)


# -- the table ----------------------------------------------------------------------------------

COLUMNS = ("WORKER", "STATE", "WEIGHT", "INFLIGHT", "HEARTBEAT", "MESSAGES", "SHARE", "RATE/S", "STRANDED")


def render(view: Mapping[str, Any], stats_topic: str) -> list[str]:
    """The board as lines of text: a headline, the router's figures, then a table per pool."""
    router = view["router"]
    lines = _headline(router, stats_topic)
    lines += _routers_lines(view.get("routers") or {})
    if view.get("reclaim") is not None:
        lines += _reclaim_lines(view["reclaim"])
    for pool, figures in view["pools"].items():
        counts = ", ".join(f"{figures[h.value]} {h.value}" for h in Health if figures[h.value])
        lines += ["", f"pool {pool}: {counts or 'no workers'}"]
        if figures["workers"]:
            lines += _aligned([COLUMNS, *(_cells(worker, row) for worker, row in figures["workers"].items())])
    return lines


def _headline(router: Mapping[str, Any] | None, stats_topic: str) -> list[str]:
    if router is None:
        return [f"no stats from a router on {stats_topic}: the workers below are known by their heartbeats only"]
    if router["stopping"]:
        state = f"stopped {_duration(router['stats_age'])} ago"
    elif router["stale"]:
        state = f"silent for {_duration(router['stats_age'])}: is it running?"
    else:
        state = f"{'connected' if router['connected'] else 'NOT CONNECTED'}, up {_duration(router['uptime'])}"
    inbound = router["inbound"]
    rate = "" if router["rate"] is None else f", {router['rate']:.1f} msg/s"
    dead = [f"{route}/{reason} {count}" for route, reasons in router["dead_letters"].items()
            for reason, count in reasons.items()]
    problem = [f"  problem: {router['problem']}"] if router.get("problem") and not router["stale"] else []
    full = sum(sum(reasons.values()) for reasons in router["heartbeats_refused"].values())
    refused = f", new workers refused {full} (max_workers)" if full else ""
    return [
        f"router {router['id']}: {state}",
        *problem,
        f"  forwarded {router['forwarded']}{rate}; inbound {inbound['unacked']} unacked of "
        f"{inbound['max_inflight']} (peak {inbound['peak']}), {inbound['held']} held; "
        f"{router['forwards_in_flight']} forwards in flight",
        f"  dead letters: {', '.join(dead) or 'none'}; refused {router['refused']}, lost {router['lost']}, "
        f"bad heartbeats {router['bad_heartbeats']}{refused}, reconnects {router['reconnects']}",
    ]


ROUTER_COLUMNS = ("ROUTER", "STATE", "RECLAIMING")
PENDING_COLUMNS = ("PENDING", "STATE", "GONE", "HOLDING", "RECLAIMED", "DEVICES", "BY")


def _routers_lines(routers: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The routers heard of: one line while all are up and none reclaims; else a table, down ones first (their
    sessions wait to be reclaimed), at most SHOWN rows."""
    if not routers:
        return []
    if all(row["state"] == "up" and not row["reclaiming"] for row in routers.values()):
        return ["", f"routers: {_states(routers.values())}: {_named(list(routers))}"]
    shown = sorted(routers.items(), key=lambda item: (item[1]["state"] == "up", item[0]))
    rows = [(router, row["state"], _named(row["reclaiming"]) or "-") for router, row in shown[:SHOWN]]
    lines = ["", f"routers: {_states(row for _, row in shown)}", *_aligned([ROUTER_COLUMNS, *rows], left=range(3))]
    if len(shown) > SHOWN:
        lines.append(f"  ... and {len(shown) - SHOWN} more ({_states(row for _, row in shown[SHOWN:])})")
    return lines


def _states(rows: Iterable[Mapping[str, Any]]) -> str:
    counts = Counter(row["state"] for row in rows)
    return ", ".join(f"{counts[state]} {state}" for state in ("up", "down") if counts[state])


def _reclaim_lines(reclaim: Mapping[str, Any]) -> list[str]:
    """What was reclaimed, from whom; what departed owners still hold, biggest first, at most SHOWN of them."""
    pending = sorted(reclaim["pending"].items(), key=lambda item: (-item[1]["holding"], item[0]))
    if not (pending or reclaim["reclaimed_total"] or reclaim["returned"] or reclaim["stranded"]):
        return ["", "reclaim: nothing pending, nothing reclaimed"]
    owners = sorted(((f"{kind} {owner}", count) for kind, counts in reclaim["reclaimed"].items()
                     for owner, count in counts.items()), key=lambda item: (-item[1], item[0]))
    by_owner = _named([f"{owner} {count}" for owner, count in owners])
    lines = ["", f"reclaim: {reclaim['reclaimed_total']} messages reclaimed" + (f" ({by_owner})" if by_owner else "")
             + f", {reclaim['returned']} duplicates returned"]
    if reclaim["stranded"]:
        lines.append(f"  stranded: {reclaim['stranded']} messages in sessions that are not reclaimed (no session "
                     f"in the heartbeats, or reclaim.after null)")
    if not pending:
        return [*lines, "  pending: none"]
    lines.append(f"  pending: {len(pending)} departed, holding about {reclaim['pending_holding']} messages "
                 f"(stranded until reclaimed)")
    rows = [(owner.replace("/", " ", 1), row["state"], _duration(row["gone_for"]), str(row["holding"]),
             str(row["reclaimed"]), ("held" if row["devices_wait"] else "flow") if owner.startswith("worker/")
             else "-", row["by"] or "-") for owner, row in pending[:SHOWN]]
    lines += _aligned([PENDING_COLUMNS, *rows], left=(0, 1, 5, 6))
    if len(pending) > SHOWN:
        rest = pending[SHOWN:]
        lines.append(f"  ... and {len(rest)} more, holding about {sum(row['holding'] for _, row in rest)} messages")
    return lines


def _named(items: list[str]) -> str:
    """The first NAMED items, and how many more."""
    more = f", +{len(items) - NAMED} more" if len(items) > NAMED else ""
    return ", ".join(items[:NAMED]) + more


def _cells(worker: str, row: Mapping[str, Any]) -> tuple[str, ...]:
    def shown(value: float | None, fmt: str, unit: str = "") -> str:
        return "-" if value is None else format(value, fmt) + unit

    return (worker, row["state"], f"{row['weight']:g}", str(row["inflight"]),
            shown(row["heartbeat_age"], ".1f", "s"), shown(row["messages"], "d"), shown(row["share"], ".1%"),
            shown(row["rate"], ".1f"), shown(row["stranded"], "d"))


def _aligned(rows: list[tuple[str, ...]], left: Container[int] = (0, 1)) -> list[str]:
    """Text columns flush left (``left``, by default the first two), numbers flush right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in
                             enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# -- the broker side ------------------------------------------------------------------------------


class Watch:
    """The stats topic and the heartbeats, handed from the network thread to ours through a queue."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.latest: Figures | None = None
        self.previous: Figures | None = None
        self.sightings: dict[str, Sighting] = {}
        self.routers: dict[str, RouterBeat] = {}
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._client = Client(config.broker, f"mqttlb-status-{os.getpid()}-{secrets.token_hex(3)}",
                              on_message=self._inbox.put)

    def start(self) -> Watch:
        """Connect (raises TransportError); heartbeats first, so their retained ones arrive before the stats."""
        self._client.start()
        self._client.subscribe(self.config.heartbeat.topic, 0)
        self._client.subscribe(self.config.router.heartbeat_topic, 0)
        self._client.subscribe(self.config.stats.topic, 0)
        return self

    def stop(self) -> None:
        self._client.stop()

    def take(self, timeout: float) -> bool:
        """Take in what arrives within ``timeout``, returning at the first new snapshot: whether one came."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if message.topic == self.config.stats.topic:
                if self._stats(message):
                    return True
            elif filter_matches(self.config.router.heartbeat_topic, message.topic):
                self._router_heartbeat(message)
            else:
                self._heartbeat(message)

    def board(self) -> dict[str, Any]:
        return board(self.latest, self.previous, self.sightings, self.config.pools,
                     interval=self.config.stats.interval, wall=time.time(), now=time.monotonic(),
                     routers=self.routers)

    def _stats(self, message: Inbound) -> bool:
        try:
            figures = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(figures, dict) or not FIELDS <= figures.keys():
            return False  # not a snapshot of this version's router
        self.previous, self.latest = self.latest, figures
        return True

    def _heartbeat(self, message: Inbound) -> None:
        worker = self.config.heartbeat.worker_of(message.topic)
        try:
            beat = Heartbeat.parse(worker, message.payload)
        except BadHeartbeat:
            return  # the router logs and counts those
        self.sightings[worker] = Sighting(beat, None if message.retain else time.monotonic())

    def _router_heartbeat(self, message: Inbound) -> None:
        router = self.config.router.router_of(message.topic)
        if not message.payload:  # cleared: its session was reclaimed, or it left for good
            self.routers.pop(router, None)
            return
        try:
            self.routers[router] = RouterBeat.parse(router, message.payload)
        except BadHeartbeat:
            return  # the routers log and count those


def main(args: argparse.Namespace, config: Config) -> int:
    """``mqttlb status``: exit 0; with ``--once``, 1 when no router has reported lately."""
    try:
        watch = Watch(config).start()
    except TransportError as error:
        print(f"status: {error}", file=sys.stderr)
        return 1
    try:
        return _once(watch, args.json) if args.once else _live(watch, args.json, sys.stdout)
    finally:
        watch.stop()


def _once(watch: Watch, as_json: bool) -> int:
    wait = watch.config.stats.interval + GRACE
    watch.take(wait)  # the retained snapshot comes at once; without one, wait for the next
    view = watch.board()
    router = view["router"]
    if router is not None and not router["stale"] and not router["stopping"]:
        watch.take(wait)  # a second snapshot, for the rates
        view = watch.board()
        router = view["router"]
    print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() if as_json
          else "\n".join(render(view, watch.config.stats.topic)))
    if router is None:
        print(f"status: no stats on {watch.config.stats.topic} within {wait:g}s: is the router running?",
              file=sys.stderr)
    return 0 if router is not None and not router["stale"] and not router["stopping"] else 1


def _live(watch: Watch, as_json: bool, out: TextIO) -> int:
    """Redraw in place on a terminal; elsewhere print a new table (or JSON line) per snapshot."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    in_place = out.isatty() and not as_json
    while not stop.is_set():
        fresh = watch.take(REFRESH)
        if as_json and fresh:
            out.write(orjson.dumps(watch.board()).decode() + "\n")
        elif in_place:
            out.write(CLEAR + "\n".join(render(watch.board(), watch.config.stats.topic)) + "\n")
        elif fresh:
            out.write("\n".join(render(watch.board(), watch.config.stats.topic)) + "\n\n")
        out.flush()
    return 0
