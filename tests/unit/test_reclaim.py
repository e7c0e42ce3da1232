"""Reclaims with plain floats for a clock: whose session, when, by which router, when done (core/reclaim.py)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.core.reclaim import AT_ONCE, CONNECT_GIVE_UP, QUIET, Ended, Owner, Reclaim, Reclaims, chooses, score
from mqttlb.core.routers import LIVE_WITHIN, RouterBeat, Routers

properties = settings(derandomize=True, max_examples=150, deadline=None)
AFTER, WAIT = 10.0, 30.0
ME = "r1"


def make(after: float | None = AFTER, wait: float = WAIT, own: tuple[str, ...] = (ME,)) -> Reclaims:
    return Reclaims(after, wait, own)


def alone(me: str = ME) -> Routers:
    return Routers(me)


def routers(me: str, *peers: str, now: float = AFTER) -> Routers:
    """``me`` hearing every one of ``peers`` up (at ``now``: routers not heard from lately are not chosen)."""
    known = Routers(me)
    for peer in peers:
        known.apply(RouterBeat(peer, up=True, session=peer), now)
    return known


def worker_gone(reclaims: Reclaims, worker: str = "w1", now: float = 0.0, session: str | None = "s-w1",
                weight: float = 1.0, holding: int = 0) -> Reclaim | None:
    return reclaims.departed(Owner.WORKER, worker, session, now, pool="default", weight=weight, holding=holding)


def started(reclaims: Reclaims, now: float = AFTER, generation: int = 1) -> Reclaim:
    """The one reclaim due, started by this router (alone) and connected."""
    [reclaim] = reclaims.due(now, alone())
    reclaims.connected(reclaim.id, generation, now)
    return reclaim


def pending(reclaims: Reclaims, now: float) -> dict[str, dict[str, Any]]:
    figures: dict[str, Any] = reclaims.figures(now)
    found: dict[str, dict[str, Any]] = figures["pending"]
    return found


NAMES = ["r1", "r2", "r3", "r4"]


def ranked(session: str) -> list[str]:
    """The routers, the one that reclaims ``session`` first, then the one that would if it were gone, ..."""
    return sorted(NAMES, key=lambda name: score(name, session), reverse=True)


# -- rule 1: what is reclaimed, and when ---------------------------------------------------------


def test_after_none_never_reclaims() -> None:
    reclaims = make(after=None)
    assert worker_gone(reclaims) is None
    assert not reclaims.pending(Owner.WORKER, "w1")
    assert reclaims.due(1e9, alone()) == []


def test_a_departure_without_session_schedules_nothing() -> None:
    reclaims = make()
    assert worker_gone(reclaims, session=None) is None
    assert reclaims.active() == []


def test_the_routers_own_sessions_are_never_reclaimed() -> None:
    reclaims = make(own=(ME, "r1-beats"))
    assert worker_gone(reclaims, session="r1-beats") is None
    assert reclaims.departed(Owner.ROUTER, "r1", ME, 0.0) is None
    assert reclaims.active() == []


def test_a_departure_schedules_a_reclaim_after_the_delay() -> None:
    reclaims = make()
    reclaim = worker_gone(reclaims, now=5.0, weight=2.0, holding=7)
    assert reclaim is not None
    assert (reclaim.owner, reclaim.kind, reclaim.session, reclaim.pool) == ("w1", Owner.WORKER, "s-w1", "default")
    assert (reclaim.weight, reclaim.holding, reclaim.departed, reclaim.due) == (2.0, 7, 5.0, 5.0 + AFTER)
    assert reclaim.started is None and reclaim.waits and reclaims.pending(Owner.WORKER, "w1")


def test_a_second_word_of_the_same_departure_keeps_the_first() -> None:
    reclaims = make()
    first = worker_gone(reclaims, now=1.0)
    assert worker_gone(reclaims, now=4.0, session="other") is first
    assert first is not None and (first.due, first.session) == (1.0 + AFTER, "s-w1")
    assert len(reclaims.active()) == 1


def test_a_worker_and_a_router_of_the_same_name_are_apart() -> None:
    reclaims = make()
    worker = worker_gone(reclaims, worker="x", session="s-x")
    router = reclaims.departed(Owner.ROUTER, "x", "r-x", 0.0)
    assert worker is not None and router is not None and worker is not router
    assert router.pool is None and router.kind is Owner.ROUTER
    assert {r.id for r in reclaims.active()} == {worker.id, router.id}


def test_due_only_once_after_has_passed() -> None:
    reclaims = make()
    reclaim = worker_gone(reclaims, now=2.0)
    assert reclaims.due(2.0 + AFTER - 0.001, alone()) == []
    assert reclaims.sessions() == frozenset()
    assert reclaims.due(2.0 + AFTER, alone()) == [reclaim]
    assert reclaim is not None and reclaim.started == 2.0 + AFTER
    assert reclaims.sessions() == {"s-w1"}
    assert reclaims.due(100.0, alone()) == []  # started once


def test_after_zero_is_due_at_once() -> None:
    reclaims = make(after=0.0)
    reclaim = worker_gone(reclaims, now=3.0)
    assert reclaims.due(3.0, alone()) == [reclaim]


# -- rule 4: the owner comes back -----------------------------------------------------------------


def test_coming_back_before_the_start_drops_the_reclaim() -> None:
    reclaims = make()
    reclaim = worker_gone(reclaims)
    assert reclaims.came_back(Owner.WORKER, "w1") is reclaim
    assert not reclaims.pending(Owner.WORKER, "w1")
    assert reclaims.due(1e9, alone()) == [] and reclaims.waiting() == {}
    assert reclaims.came_back(Owner.WORKER, "w1") is None
    assert reclaims.came_back(Owner.ROUTER, "w1") is None


def test_coming_back_during_the_reclaim_keeps_it_until_its_connection_goes() -> None:
    reclaims = make()
    worker_gone(reclaims)
    reclaim = started(reclaims)
    assert reclaims.came_back(Owner.WORKER, "w1") is reclaim
    assert reclaims.pending(Owner.WORKER, "w1") and not reclaim.waits
    assert reclaims.sessions() == {"s-w1"}


def test_a_lost_connection_taken_back_ends_the_reclaim_and_counts_duplicates() -> None:
    reclaims = make()
    worker_gone(reclaims)
    reclaim = started(reclaims)
    for _ in range(3):
        reclaims.took(reclaim.id, AFTER + 0.1)
    assert reclaims.settle(reclaim.id, 1)
    assert reclaims.unsettled == 2
    assert reclaims.lost(reclaim.id, taken_back=True, now=AFTER + 0.2) == Ended(reclaim, "returned")
    assert reclaims.returned == 2 and not reclaims.pending(Owner.WORKER, "w1")
    assert reclaims.lost(reclaim.id, taken_back=True, now=AFTER + 0.3) is None  # already over
    assert reclaims.returned == 2


def test_a_lost_connection_not_taken_back_is_tried_again_after_the_delay() -> None:
    reclaims = make()
    worker_gone(reclaims)
    reclaim = started(reclaims)
    reclaims.took(reclaim.id, 10.5)
    reclaims.took(reclaim.id, 10.5)
    assert reclaims.settle(reclaim.id, 1)
    assert reclaims.lost(reclaim.id, taken_back=False, now=11.0) is None
    assert (reclaim.started, reclaim.connected, reclaim.due) == (None, False, 11.0 + AFTER)
    assert (reclaim.unsettled, reclaims.returned) == (0, 1)
    assert reclaims.sessions() == frozenset()
    assert reclaims.settle(reclaim.id, 1) is False  # the old connection's: not acknowledged
    assert reclaims.due(11.0 + AFTER - 0.001, alone()) == []
    assert reclaims.due(11.0 + AFTER, alone()) == [reclaim]
    reclaims.connected(reclaim.id, 2, 21.0)
    assert reclaims.settle(reclaim.id, 1) is False
    reclaims.took(reclaim.id, 21.0)
    assert reclaims.settle(reclaim.id, 2) is True
    assert reclaims.reclaimed == {("worker", "w1"): 2}


def test_a_lost_connection_then_the_owner_heard_from_ends_it() -> None:
    reclaims = make()
    worker_gone(reclaims)
    reclaim = started(reclaims)
    assert reclaims.lost(reclaim.id, taken_back=False, now=11.0) is None
    assert reclaims.came_back(Owner.WORKER, "w1") is reclaim
    assert not reclaims.pending(Owner.WORKER, "w1") and reclaims.due(1e9, alone()) == []


def test_a_lost_connection_with_reclaims_turned_off_ends_it() -> None:
    reclaims = make()
    worker_gone(reclaims)
    reclaim = started(reclaims)
    reclaims.configure(None, WAIT)
    assert reclaims.lost(reclaim.id, taken_back=False, now=11.0) == Ended(reclaim, "returned")
    assert reclaims.active() == []


# -- rule 2: one router reclaims ------------------------------------------------------------------


@pytest.mark.parametrize("session", ["s-w1", "s-w2", "router-7", "x"])
def test_one_router_is_chosen_whatever_the_order_it_hears_of_the_others(session: str) -> None:
    chosen = ranked(session)[0]
    for order in itertools.permutations(NAMES):
        starters = []
        for me in NAMES:
            reclaims = make(own=(me,))
            reclaim = worker_gone(reclaims, session=session)
            assert reclaim is not None
            mine = reclaims.due(AFTER, routers(me, *[name for name in order if name != me]))
            if mine:
                starters.append(me)
            else:
                assert reclaim.by == chosen and reclaim.started is None
        assert starters == [chosen]


def test_a_down_router_is_not_chosen() -> None:
    best, second, me = ranked("s-w1")[:3]
    known = routers(me, *[name for name in NAMES if name != me])
    known.apply(RouterBeat(best, up=False), 1.0)
    reclaims = make(own=(me,))
    reclaim = worker_gone(reclaims)
    assert reclaims.due(AFTER, known) == [] and reclaim is not None and reclaim.by == second


def elsewhere_setup(rank: int = 1, session: str = "s-w1") -> tuple[Reclaims, Routers, Reclaim, str, str]:
    """This router is the ``rank``-th choice of four for the session (0 the first): it watches the first."""
    by, me = ranked(session)[0], ranked(session)[rank]
    known = routers(me, *[name for name in NAMES if name != me])
    reclaims = make(own=(me,))
    reclaim = worker_gone(reclaims, session=session)
    assert reclaim is not None
    assert reclaims.due(AFTER, known) == []
    assert reclaim.by == by
    return reclaims, known, reclaim, me, by


def test_watching_another_router_it_is_not_due_again() -> None:
    reclaims, known, reclaim, _, by = elsewhere_setup()
    assert reclaims.due(AFTER + 5, known) == [] and reclaim.by == by
    assert reclaims.sessions() == frozenset()  # not ours to announce
    assert pending(reclaims, AFTER)["worker/w1"]["state"] == "elsewhere"


def test_elsewhere_ends_when_the_chosen_routers_later_heartbeat_no_longer_lists_it() -> None:
    reclaims, known, reclaim, _, by = elsewhere_setup()
    known.apply(RouterBeat(by, up=True, session=by), AFTER + QUIET - 0.01)  # too early to say anything
    assert reclaims.elsewhere(AFTER + QUIET, known) == []
    known.apply(RouterBeat(by, up=True, session=by, reclaiming=frozenset({"s-w1"})), AFTER + 2)
    assert reclaims.elsewhere(AFTER + 2, known) == []
    assert reclaim.waits and reclaims.waiting() == {"default": {"w1": 1.0}}
    known.apply(RouterBeat(by, up=True, session=by, reclaiming=frozenset({"other"})), AFTER + 5)
    assert reclaims.elsewhere(AFTER + 5, known) == [Ended(reclaim, "elsewhere")]
    assert not reclaims.pending(Owner.WORKER, "w1") and reclaims.waiting() == {}


def test_a_chosen_router_that_falls_silent_is_chosen_no_more() -> None:
    reclaims, known, reclaim, _, _ = elsewhere_setup()
    assert reclaims.elsewhere(AFTER + LIVE_WITHIN - 0.01, known) == []
    assert reclaims.elsewhere(AFTER + LIVE_WITHIN, known) == []
    assert (reclaim.by, reclaim.due) == (None, AFTER + LIVE_WITHIN)  # due again: the choice is made anew


def test_when_the_chosen_router_dies_the_choice_moves_to_the_next() -> None:
    reclaims, known, reclaim, me, by = elsewhere_setup(rank=1)
    known.apply(RouterBeat(by, up=False), AFTER + 3)  # its will
    assert reclaims.elsewhere(AFTER + 3, known) == []
    assert (reclaim.by, reclaim.due, reclaim.started) == (None, AFTER + 3, None)  # due again
    assert reclaims.due(AFTER + 3, known) == [reclaim] and reclaim.started == AFTER + 3
    assert reclaims.sessions() == {"s-w1"}


def test_when_the_chosen_router_dies_another_may_be_watched_from_then_on() -> None:
    reclaims, known, reclaim, _, by = elsewhere_setup(rank=2)
    known.apply(RouterBeat(by, up=False), AFTER + 3)
    assert reclaims.elsewhere(AFTER + 3, known) == []
    second = ranked("s-w1")[1]
    assert reclaims.due(AFTER + 3, known) == [] and reclaim.by == second
    known.apply(RouterBeat(second, up=True, session=second), AFTER + 3.5)  # before the new due + QUIET
    assert reclaims.elsewhere(AFTER + 3.5, known) == []
    known.apply(RouterBeat(second, up=True, session=second), AFTER + 3 + QUIET)
    assert reclaims.elsewhere(AFTER + 3 + QUIET, known) == [Ended(reclaim, "elsewhere")]


def test_coming_back_while_another_router_is_chosen_drops_it() -> None:
    reclaims, _, reclaim, _, _ = elsewhere_setup()
    assert reclaims.came_back(Owner.WORKER, "w1") is reclaim
    assert reclaims.active() == []


@properties
@given(st.sets(st.text(min_size=1, max_size=8), min_size=1, max_size=8), st.text(max_size=12), st.randoms())
def test_chooses_picks_exactly_one_router_of_any_set(names: set[str], session: str, rng: random.Random) -> None:
    order = sorted(names)
    rng.shuffle(order)
    chosen = [me for me in names if chooses(order, me, session)]
    assert len(chosen) == 1
    assert chosen == [me for me in sorted(names) if chooses(sorted(names), me, session)]
    assert all(not chooses(order, me, session) for me in names - set(chosen))


# -- rule 3: settling and finishing --------------------------------------------------------------


def test_settle_counts_only_on_the_current_connection() -> None:
    reclaims = make()
    reclaim = worker_gone(reclaims)
    assert reclaim is not None
    assert reclaims.settle(reclaim.id, 0) is False  # not connected yet
    reclaims.due(AFTER, alone())
    reclaims.connected(reclaim.id, 3, AFTER)
    reclaims.took(reclaim.id, AFTER)
    reclaims.took(reclaim.id, AFTER)
    assert reclaims.settle(reclaim.id, 2) is False
    assert reclaims.settle(reclaim.id, 3) is True
    assert reclaims.settle(999, 3) is False
    assert (reclaim.taken, reclaim.settled, reclaims.unsettled) == (2, 1, 1)
    assert reclaims.reclaimed == {("worker", "w1"): 1}


def test_unsettled_counts_only_connected_reclaims() -> None:
    reclaims = make()
    worker_gone(reclaims, "w1", session="s1")
    worker_gone(reclaims, "w2", session="s2")
    first, second = reclaims.due(AFTER, alone())
    reclaims.connected(first.id, 1, AFTER)
    reclaims.took(first.id, AFTER)
    second.taken = 4  # taken on a connection that went: not counted
    assert reclaims.unsettled == 1


def test_finished_after_quiet_with_nothing_unsettled() -> None:
    reclaims = make()
    worker_gone(reclaims)
    reclaim = started(reclaims)  # connected at AFTER
    reclaims.took(reclaim.id, AFTER + 0.5)
    assert reclaims.finished(AFTER + 0.5 + QUIET) == []  # one unsettled
    assert reclaims.settle(reclaim.id, 1)
    assert reclaims.finished(AFTER + 0.5 + QUIET - 0.01) == []
    assert reclaims.finished(AFTER + 0.5 + QUIET) == [Ended(reclaim, "reclaimed")]
    assert reclaims.active() == [] and reclaims.reclaimed == {("worker", "w1"): 1}


def test_an_empty_session_is_finished_quiet_seconds_after_connecting() -> None:
    reclaims = make()
    worker_gone(reclaims)
    reclaim = started(reclaims, now=12.0)
    assert reclaims.finished(12.0 + QUIET - 0.01) == []
    assert reclaims.finished(12.0 + QUIET) == [Ended(reclaim, "reclaimed")]


def test_a_reclaim_that_never_connects_is_given_up() -> None:
    reclaims = make()
    reclaim = worker_gone(reclaims)
    assert reclaim is not None and reclaims.due(AFTER, alone()) == [reclaim]
    assert reclaims.finished(AFTER + CONNECT_GIVE_UP - 0.01) == []
    assert reclaims.finished(AFTER + CONNECT_GIVE_UP) == [Ended(reclaim, "failed")]
    assert not reclaims.pending(Owner.WORKER, "w1")


def test_reclaims_not_started_never_finish() -> None:
    reclaims = make()
    worker_gone(reclaims)
    assert reclaims.finished(1e9) == []
    assert reclaims.pending(Owner.WORKER, "w1")


# -- rule 5: order, hurry, waiting --------------------------------------------------------------


def test_hurry_makes_waiting_reclaims_due_now() -> None:
    reclaims = make()
    waiting = worker_gone(reclaims, "w1", session="s1", now=0.0)
    back = worker_gone(reclaims, "w2", session="s2", now=0.0)
    router = reclaims.departed(Owner.ROUTER, "r9", "r9", 0.0)
    early = worker_gone(reclaims, "w3", session="s3", now=-AFTER)
    assert waiting is not None and back is not None and router is not None and early is not None
    reclaims.due(0.0, alone())  # starts w3's
    back.waits = False
    router.waits = False
    assert reclaims.hurry(2.0) == [waiting]
    assert waiting.due == 2.0 and back.due == AFTER and early.started == 0.0
    assert reclaims.hurry(2.0) == []  # due already
    assert reclaims.due(2.0, alone()) == [waiting]


def test_waited_out_after_wait_seconds_from_the_departure() -> None:
    reclaims = make()
    reclaim = worker_gone(reclaims, now=1.0)
    assert reclaim is not None
    assert reclaims.waited_out(1.0 + WAIT - 0.01) == []
    assert reclaims.waited_out(1.0 + WAIT) == [reclaim]
    assert not reclaim.waits and reclaims.waiting() == {}
    assert reclaims.waited_out(1e9) == []
    assert reclaims.pending(Owner.WORKER, "w1")  # still reclaimed, only no longer waited for


def test_a_wait_of_zero_never_waits() -> None:
    reclaims = make(wait=0.0)
    reclaim = worker_gone(reclaims)
    assert reclaim is not None and not reclaim.waits
    assert reclaims.waiting() == {} and reclaims.waited_out(1e9) == [] and reclaims.hurry(0.0) == []


def test_waiting_lists_departed_workers_by_pool_with_their_weight() -> None:
    reclaims = make()
    reclaims.departed(Owner.WORKER, "w1", "s1", 0.0, pool="default", weight=2.0)
    reclaims.departed(Owner.WORKER, "w2", "s2", 0.0, pool="gpu", weight=0.5)
    reclaims.departed(Owner.WORKER, "w3", "s3", 0.0, pool="default")
    reclaims.departed(Owner.ROUTER, "r9", "r9", 0.0)
    reclaims.came_back(Owner.WORKER, "w3")
    assert reclaims.waiting() == {"default": {"w1": 2.0}, "gpu": {"w2": 0.5}}


def test_figures() -> None:
    reclaims = make()
    worker_gone(reclaims, "w1", session="s1", now=0.0, holding=5)
    reclaims.departed(Owner.ROUTER, "r9", "r9", 1.0)
    reclaim, router = reclaims.due(AFTER + 1, alone())
    assert (reclaim.owner, router.owner) == ("w1", "r9")
    reclaims.connected(reclaim.id, 1, 11.0)
    reclaims.took(reclaim.id, 11.0)
    reclaims.settle(reclaim.id, 1)
    reclaims.lost(router.id, taken_back=True, now=11.0)
    figures = reclaims.figures(12.5)
    assert figures == {
        "reclaimed": {"worker": {"w1": 1}},
        "returned": 0,
        "pending": {"worker/w1": {"session": "s1", "state": "reclaiming", "by": None, "holding": 5,
                                  "reclaimed": 1, "gone_for": 12.5, "devices_wait": True}},
    }
    reclaims.departed(Owner.WORKER, "w2", "s2", 12.0)
    assert list(pending(reclaims, 12.5)) == ["worker/w1", "worker/w2"]
    assert pending(reclaims, 12.5)["worker/w2"]["state"] == "waiting"


def test_ids_are_unique_and_get_finds_them() -> None:
    reclaims = make()
    first = worker_gone(reclaims, "w1", session="s1")
    second = worker_gone(reclaims, "w2", session="s2")
    assert first is not None and second is not None and first.id != second.id
    assert reclaims.get(first.id) is first and reclaims.get(second.id) is second
    reclaims.came_back(Owner.WORKER, "w1")
    assert reclaims.get(first.id) is None
    assert reclaims.due(AFTER, alone()) == [second]


def test_a_hurried_reclaim_another_router_takes_is_watched_from_that_routers_schedule() -> None:
    by, me = ranked("s-w1")[0], ranked("s-w1")[1]
    known = routers(me, by, now=2.0)
    reclaims = make(own=(me,))
    reclaim = worker_gone(reclaims)
    assert reclaim is not None and reclaims.hurry(2.0) == [reclaim]
    assert reclaims.due(2.0, known) == [] and reclaim.by == by
    known.apply(RouterBeat(by, up=True, session=by), 2.0 + QUIET + 1)  # it has not started: not yet due there
    assert reclaims.elsewhere(2.0 + QUIET + 1, known) == []


def test_a_router_runs_a_bounded_number_of_reclaims_at_once() -> None:
    """A router that starts may meet the wills of many workers gone long ago: each reclaim is a connection."""
    reclaims = make()
    for i in range(AT_ONCE + 5):
        worker_gone(reclaims, f"w{i}", session=f"s-w{i}")
    first = reclaims.due(AFTER, alone())
    assert len(first) == AT_ONCE
    assert reclaims.due(AFTER + 1, alone()) == []  # the rest wait their turn
    reclaims.drop(first[0])
    [next_one] = reclaims.due(AFTER + 2, alone())
    assert next_one.owner not in {reclaim.owner for reclaim in first}
