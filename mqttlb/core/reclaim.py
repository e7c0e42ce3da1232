"""Reclaiming what a departed worker or router left in its broker session: whose, when, and when it is done.

A forward is settled once the broker has queued it in the worker's session.
A worker that dies and never comes back under the same id would leave what
was queued there until the broker expires the session, and then lose it; a
router of a share group that dies for good strands its share the same way.
So the router takes such a session over and routes what it holds again.

Rule 1. A session is reclaimed once its owner has been gone (will, ``down``,
        timeout) for ``reclaim.after`` without coming back; ``None`` never.
        Only sessions a heartbeat named (``session``) are reclaimed, and
        never one of the router's own connections.
Rule 2. One router reclaims a session: of the live routers (their
        heartbeats), the one that scores highest for the session's client id
        (rendezvous hashing, so every router makes the same choice). The
        others watch its heartbeats, which list what it is reclaiming: their
        own messages of the departed worker's devices wait until it is done,
        and if it dies first, they choose again. A router runs at most
        ``AT_ONCE`` reclaims at a time (each is a connection, and a router
        that starts may meet the wills of many workers gone long ago); the
        rest wait their turn.
Rule 3. A reclaimed message is acknowledged on the reclaiming connection
        only once its new forward (or dead letter) is settled, as any
        message is (``inflight``). A session is done when every message
        taken from it is settled and none came for ``QUIET`` seconds; it is
        then ended (session expiry 0).
Rule 4. An owner that comes back takes its session back (the broker drops
        the reclaiming connection; Mosquitto 2.0 does not say why, so a
        reclaim whose connection goes is tried again after ``reclaim.after``
        unless the owner is heard from first, which ends it). What was taken
        and not yet acknowledged goes back to the owner as well:
        duplicates, counted.
Rule 5. Order: from a worker's departure until its session is reclaimed,
        new messages of the devices that were its own wait, so they reach
        their new worker after the older ones queued in the session; at most
        ``reclaim.wait`` seconds, then they flow anyway. They wait
        unacknowledged, in the router's window: once more than
        ``router.max_held`` wait, the reclaim starts at once, without
        waiting out ``reclaim.after``.

Pure: the clock comes in as arguments; the service opens the connections.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from .routers import Routers

QUIET = 1.0
"""Seconds without a message, and nothing unsettled, after which a session being reclaimed is taken as empty."""
CONNECT_GIVE_UP = 30.0
"""Seconds a reclaim may take to get its connection before it is given up (the owner's session stays)."""
AT_ONCE = 16
"""Reclaims one router runs at a time."""


class Owner(StrEnum):
    WORKER = "worker"
    ROUTER = "router"


@dataclass(slots=True)
class Reclaim:
    """One departed owner's session, from departure until it is reclaimed, given back or given up."""

    id: int
    owner: str
    kind: Owner
    session: str
    pool: str | None
    """The worker's pool (None for a router)."""
    weight: float
    departed: float
    due: float
    started: float | None = None
    connected: bool = False
    generation: int = 0
    """The reclaiming connection's, as the transport counts them: acknowledgements go only on that one."""
    taken: int = 0
    settled: int = 0
    last_arrival: float = 0.0
    holding: int = 0
    """What the departed owner was thought to hold (its last reported load plus what was routed to it since)."""
    waits: bool = True
    """Whether its devices' new messages still wait for it (rule 5)."""
    by: str | None = None
    """The router reclaiming it, when that is another one (rule 2)."""

    @property
    def unsettled(self) -> int:
        return self.taken - self.settled


@dataclass(frozen=True, slots=True)
class Ended:
    """A reclaim that is over: ``how`` is ``reclaimed`` (the session was emptied and ended), ``returned`` (the
    owner came back and took it), ``failed`` (no connection within CONNECT_GIVE_UP) or ``elsewhere`` (another
    router reclaimed it)."""

    reclaim: Reclaim
    how: str


def score(router: str, session: str) -> bytes:
    return hashlib.blake2b(f"{router}\x00{session}".encode(), digest_size=8).digest()


def chooser(routers: Iterable[str], session: str) -> str:
    """The router of ``routers`` (the live ones) that reclaims ``session``."""
    return max(routers, key=lambda router: score(router, session))


def chooses(routers: Iterable[str], me: str, session: str) -> bool:
    """Whether ``me`` is the router that reclaims ``session``, of ``routers`` (the live ones, ``me`` among them)."""
    return chooser({*routers, me}, session) == me


class Reclaims:
    """Every session waiting to be reclaimed or being reclaimed; see the module docstring."""

    def __init__(self, after: float | None, wait: float, own: Iterable[str]) -> None:
        self.after = after
        self.wait = wait
        self._own = frozenset(own)
        """The client ids of this router's own connections: never reclaimed."""
        self._by_owner: dict[tuple[Owner, str], Reclaim] = {}
        self._by_id: dict[int, Reclaim] = {}
        self._next_id = 1
        self.reclaimed: dict[tuple[str, str], int] = {}
        """(kind, owner) -> messages reclaimed (their new forward or dead letter settled)."""
        self.returned = 0
        """Messages taken from a session whose owner took it back before they were acknowledged: duplicates."""

    def configure(self, after: float | None, wait: float) -> None:
        self.after, self.wait = after, wait

    # -- departures and returns (rule 1, rule 4) ----------------------------------------------------

    def departed(self, kind: Owner, owner: str, session: str | None, now: float, *, pool: str | None = None,
                 weight: float = 1.0, holding: int = 0, moved: bool = False) -> Reclaim | None:
        """Note a departure; the reclaim it schedules, or None (nothing to reclaim, or never). ``moved``: its
        devices have moved on already (it was draining), so none waits for the reclaim."""
        if self.after is None or session is None or session in self._own:
            return None
        current = self._by_owner.get((kind, owner))
        if current is not None:  # a second word of the same departure (a will after a timeout): the first counts
            return current
        reclaim = Reclaim(self._next_id, owner, kind, session, pool, weight, now, now + self.after, holding=holding)
        reclaim.waits = self.wait > 0 and not moved and kind is Owner.WORKER
        self._next_id += 1
        self._by_owner[(kind, owner)] = self._by_id[reclaim.id] = reclaim
        return reclaim

    def came_back(self, kind: Owner, owner: str) -> Reclaim | None:
        """The owner is live again: a reclaim not started is dropped; one under way ends when the owner takes
        its session (the transport sees the reclaiming connection go). Returns the reclaim, if there was one."""
        reclaim = self._by_owner.get((kind, owner))
        if reclaim is None:
            return None
        reclaim.waits = False
        if reclaim.started is None:
            self._forget(reclaim)
        return reclaim

    def pending(self, kind: Owner, owner: str) -> bool:
        return (kind, owner) in self._by_owner

    # -- starting (rule 2) ------------------------------------------------------------------------------

    def due(self, now: float, routers: Routers) -> list[Reclaim]:
        """The reclaims due by ``now`` that this router starts now; the others' are watched (``elsewhere``)."""
        mine: list[Reclaim] = []
        live = routers.live(now)
        running = sum(reclaim.started is not None for reclaim in self._by_id.values())
        for reclaim in self._by_id.values():
            if reclaim.started is not None or reclaim.by is not None or reclaim.due > now:
                continue
            chosen = chooser(live, reclaim.session)  # live() counts this router in
            if chosen == routers.me:
                if running >= AT_ONCE:
                    continue  # its turn comes when one ends
                running += 1
                reclaim.started = now
                mine.append(reclaim)
            else:  # it starts on its own schedule, not on one this router hurried: watch it from then on
                reclaim.by = chosen
                reclaim.due = max(reclaim.due, reclaim.departed + (self.after or 0.0))
        return mine

    def elsewhere(self, now: float, routers: Routers) -> list[Ended]:
        """The reclaims another router took on that are over: it says it is done. One whose router is gone or
        silent is due again, to be chosen anew."""
        ended: list[Ended] = []
        for reclaim in list(self._by_id.values()):
            if reclaim.by is None:
                continue
            if not routers.is_live(reclaim.by, now):
                reclaim.by, reclaim.due = None, now
                continue
            if routers.says_reclaiming(reclaim.by, reclaim.session, since=reclaim.due + QUIET) is False:
                self._forget(reclaim)
                ended.append(Ended(reclaim, "elsewhere"))
        return ended

    def sessions(self) -> frozenset[str]:
        """The sessions this router is reclaiming now (its heartbeat says so, rule 2)."""
        return frozenset(reclaim.session for reclaim in self._by_id.values() if reclaim.started is not None)

    def drop(self, reclaim: Reclaim) -> None:
        """Give ``reclaim`` up before it starts (its session is in use by someone live)."""
        self._forget(reclaim)

    def get(self, reclaim_id: int) -> Reclaim | None:
        return self._by_id.get(reclaim_id)

    def connected(self, reclaim_id: int, generation: int, now: float) -> None:
        reclaim = self._by_id.get(reclaim_id)
        if reclaim is not None:
            reclaim.connected, reclaim.generation, reclaim.last_arrival = True, generation, now

    # -- messages (rule 3) ------------------------------------------------------------------------------

    def took(self, reclaim_id: int, now: float) -> None:
        reclaim = self._by_id[reclaim_id]
        reclaim.taken += 1
        reclaim.last_arrival = now

    def settle(self, reclaim_id: int, generation: int) -> bool:
        """A reclaimed message's fate is settled: whether to acknowledge it (on that connection)."""
        reclaim = self._by_id.get(reclaim_id)
        if reclaim is None or not reclaim.connected or generation != reclaim.generation:
            return False
        reclaim.settled += 1
        key = (reclaim.kind.value, reclaim.owner)
        self.reclaimed[key] = self.reclaimed.get(key, 0) + 1
        return True

    @property
    def unsettled(self) -> int:
        """Messages taken from sessions being reclaimed and not yet settled."""
        if not self._by_id:  # read every turn, and there is seldom a reclaim
            return 0
        return sum(reclaim.unsettled for reclaim in self._by_id.values() if reclaim.connected)

    # -- ending -----------------------------------------------------------------------------------------

    def finished(self, now: float) -> list[Ended]:
        """The reclaims that are over by ``now``: emptied (rule 3), or never connected (given up)."""
        ended: list[Ended] = []
        for reclaim in list(self._by_id.values()):
            if reclaim.started is None:
                continue
            if reclaim.connected and not reclaim.unsettled and now - reclaim.last_arrival >= QUIET:
                ended.append(Ended(reclaim, "reclaimed"))
            elif not reclaim.connected and now - reclaim.started >= CONNECT_GIVE_UP:
                ended.append(Ended(reclaim, "failed"))
        for end in ended:
            self._forget(end.reclaim)
        return ended

    def lost(self, reclaim_id: int, taken_back: bool, now: float) -> Ended | None:
        """The reclaiming connection went before the session was emptied. Its owner took it back (rule 4):
        the reclaim is over. Else (MQTT 3.1.1 does not say, or the connection broke) it is tried again after
        ``reclaim.after``, unless the owner is heard from first."""
        reclaim = self._by_id.get(reclaim_id)
        if reclaim is None:
            return None
        self.returned += reclaim.unsettled
        if taken_back or self.after is None:
            self._forget(reclaim)
            return Ended(reclaim, "returned")
        self.interrupted(reclaim, now + self.after)
        return None

    def interrupted(self, reclaim: Reclaim, due: float) -> None:
        """Start ``reclaim`` again at ``due`` (its connection is gone; what it had not settled is the session's
        again)."""
        reclaim.started, reclaim.connected, reclaim.due = None, False, due
        reclaim.taken = reclaim.settled

    def hurry(self, now: float) -> list[Reclaim]:
        """Make every reclaim whose devices wait due now (their messages fill the router's window); those
        that were not due yet."""
        hurried = [reclaim for reclaim in self._by_id.values()
                   if reclaim.waits and reclaim.started is None and reclaim.due > now]
        for reclaim in hurried:
            reclaim.due = now
        return hurried

    def _forget(self, reclaim: Reclaim) -> None:
        self._by_owner.pop((reclaim.kind, reclaim.owner), None)
        self._by_id.pop(reclaim.id, None)

    # -- order (rule 5) ---------------------------------------------------------------------------------

    def waiting(self) -> Mapping[str, Mapping[str, float]]:
        """pool -> departed worker -> weight: the workers whose devices' new messages still wait for them."""
        awaited: dict[str, dict[str, float]] = {}
        for reclaim in self._by_id.values():
            if reclaim.kind is Owner.WORKER and reclaim.waits and reclaim.pool is not None:
                awaited.setdefault(reclaim.pool, {})[reclaim.owner] = reclaim.weight
        return awaited

    def waited_out(self, now: float) -> list[Reclaim]:
        """The reclaims whose devices have waited ``reclaim.wait`` and now flow anyway."""
        over = [reclaim for reclaim in self._by_id.values()
                if reclaim.waits and now - reclaim.departed >= self.wait]
        for reclaim in over:
            reclaim.waits = False
        return over

    def figures(self, now: float) -> dict[str, object]:
        """The stats' ``reclaim`` section: what was reclaimed, what still waits in departed owners' sessions."""
        reclaimed: dict[str, dict[str, int]] = {}
        for (kind, owner), count in sorted(self.reclaimed.items()):
            reclaimed.setdefault(kind, {})[owner] = count
        pending = {}
        for reclaim in sorted(self._by_id.values(), key=lambda reclaim: reclaim.departed):
            state = "elsewhere" if reclaim.by is not None else "waiting" if reclaim.started is None else "reclaiming"
            pending[f"{reclaim.kind}/{reclaim.owner}"] = {
                "session": reclaim.session, "state": state, "by": reclaim.by, "holding": reclaim.holding,
                "reclaimed": reclaim.settled, "gone_for": round(now - reclaim.departed, 3),
                "devices_wait": reclaim.waits}
        return {"reclaimed": reclaimed, "returned": self.returned, "pending": pending}

    def active(self) -> list[Reclaim]:
        """Every reclaim waiting or under way (for the stats)."""
        return list(self._by_id.values())
