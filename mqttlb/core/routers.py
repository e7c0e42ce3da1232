"""The routers of a deployment, as their heartbeats describe them: who is live, who reclaims what.

Routers of a share group each keep a persistent session, and Mosquitto 2.0
keeps queueing a member's share of the messages in its session while it is
offline (``tests/integration/test_share_group_offline.py``): a router that
dies for good strands half (a third ...) of the stream. So routers announce
themselves like workers do, with a retained heartbeat on
``router.heartbeat_topic`` and a will that says ``down``, and a live router
reclaims a dead one's session (``reclaim``).

Only the broker's word (a will) or the router's own (``down``) makes a
router departed, never silence: taking over the session of a router that is
only slow would make the two fight over it. Silence does count when it comes
to choosing who reclaims: only routers heard from within ``LIVE_WITHIN`` are
candidates (a router whose will never came, because the broker restarted
meanwhile, would otherwise be chosen for ever and do nothing). A router's heartbeat also lists
the sessions it is reclaiming, so the others know when a worker's session
is done and its devices' messages may flow.

Pure: payloads and the clock come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from ..errors import BadHeartbeat
from .pool import client_id_problem, json_object

BEAT = 2.0
"""Seconds between a router's heartbeats (and at once when what it is reclaiming changes)."""
LIVE_WITHIN = 5 * BEAT
"""A router not heard from for this long is not chosen to reclaim anything."""
MAX_ROUTERS = 1000
"""The most routers kept: the routers' topic is as open to a flood of made-up ids as the workers' is. When full,
those that matter no more make room: down with nothing to reclaim, or up and silent past ``LIVE_WITHIN`` (were
its will to come, it would be a router never heard of, down with a session, which departs all the same). One
down with a session stays until it is forgotten (``forget``)."""


@dataclass(frozen=True, slots=True)
class RouterBeat:
    router: str
    up: bool
    session: str | None = None
    reclaiming: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, router: str, payload: bytes) -> RouterBeat:
        """A router's heartbeat from ``router``'s topic; an empty payload (a cleared one) means down."""
        if not payload:
            return cls(router, up=False)
        body = json_object(payload, "router ")
        if body.get("router", router) != router:
            raise BadHeartbeat(f"router {body.get('router')!r} in payload does not match {router!r} in topic")
        state = body.get("state", "up")
        if state not in ("up", "down"):
            raise BadHeartbeat(f"router state must be up or down, got {state!r}")
        session = body.get("session")
        problem = None if session is None else client_id_problem(session)
        if problem is not None:
            raise BadHeartbeat(f"router session must be an MQTT client id, {problem}")
        reclaiming = body.get("reclaiming", [])
        if not isinstance(reclaiming, list) or not all(isinstance(item, str) for item in reclaiming):
            raise BadHeartbeat("router reclaiming must be a list of client ids")
        return cls(router, state == "up", session, frozenset(reclaiming))

    def payload(self, ts: float | None = None) -> bytes:
        body: dict[str, object] = {"router": self.router, "state": "up" if self.up else "down"}
        if self.session is not None:
            body["session"] = self.session
        if self.reclaiming:
            body["reclaiming"] = sorted(self.reclaiming)
        if ts is not None:
            body["ts"] = round(ts, 3)
        return orjson.dumps(body)


@dataclass(slots=True)
class Peer:
    beat: RouterBeat
    seen: float


class Routers:
    """Every router heard of, this one included; see the module docstring."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._peers: dict[str, Peer] = {}

    def apply(self, beat: RouterBeat, now: float) -> RouterBeat | None:
        """Take a router's heartbeat in; returns the last word of a router that departed with it (up before, or
        never heard of, and down now, with a session to reclaim), else None."""
        old = self._peers.get(beat.router)
        if old is None and len(self._peers) >= MAX_ROUTERS:
            self._make_room(now)
        if beat.session is None and old is not None:
            beat = RouterBeat(beat.router, beat.up, old.beat.session, beat.reclaiming)  # a will names none
        self._peers[beat.router] = Peer(beat, now)
        if beat.router == self.me or beat.up or beat.session is None:
            return None
        return beat if old is None or old.beat.up else None

    def _make_room(self, now: float) -> None:
        """Forget the routers that matter no more (see ``MAX_ROUTERS``); raise BadHeartbeat if none does."""
        idle = [router for router, peer in self._peers.items() if router != self.me and (
            now - peer.seen >= LIVE_WITHIN if peer.beat.up else peer.beat.session is None)]
        if not idle:
            raise BadHeartbeat(f"{MAX_ROUTERS} routers are live already; a new one is ignored")
        for router in idle:
            del self._peers[router]

    def forget(self, router: str) -> None:
        """``router`` is gone for good (its session reclaimed, its heartbeat cleared)."""
        self._peers.pop(router, None)

    def live(self, now: float) -> list[str]:
        """The routers whose last word was ``up``, within ``LIVE_WITHIN``; this one always among them."""
        return sorted({self.me, *(router for router in self._peers if self.is_live(router, now))})

    def is_live(self, router: str, now: float) -> bool:
        peer = self._peers.get(router)
        return router == self.me or (peer is not None and peer.beat.up and now - peer.seen < LIVE_WITHIN)

    def using(self, session: str) -> str | None:
        """The live router (``router <id>``) whose session ``session`` is, if any."""
        return next((f"router {router}" for router, peer in self._peers.items()
                     if peer.beat.up and peer.beat.session == session), None)

    def says_reclaiming(self, router: str, session: str, since: float) -> bool | None:
        """Whether ``router``'s latest heartbeat, if it came after ``since``, lists ``session`` as being
        reclaimed; None when no heartbeat of it came after ``since`` yet."""
        peer = self._peers.get(router)
        if peer is None or peer.seen < since:
            return None
        return session in peer.beat.reclaiming

    def views(self) -> dict[str, dict[str, object]]:
        """Every router heard of, for the stats topic and ``mqttlb status``."""
        return {router: {"state": "up" if peer.beat.up else "down", "session": peer.beat.session,
                         "reclaiming": sorted(peer.beat.reclaiming)}
                for router, peer in sorted(self._peers.items())}
