"""Router heartbeats and the routers they describe: who is live, who departed, who reclaims what (core/routers.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.core.pool import MAX_HEARTBEAT_BYTES
from mqttlb.core.routers import LIVE_WITHIN, MAX_ROUTERS, RouterBeat, Routers
from mqttlb.errors import BadHeartbeat

properties = settings(derandomize=True, max_examples=150, deadline=None)


def parse(body: Any, router: str = "r2") -> RouterBeat:
    return RouterBeat.parse(router, orjson.dumps(body))


def up(router: str, session: str | None = None, *reclaiming: str) -> RouterBeat:
    return RouterBeat(router, True, session, frozenset(reclaiming))


def will(router: str) -> RouterBeat:
    return RouterBeat.parse(router, orjson.dumps({"router": router, "state": "down"}))


# -- RouterBeat.parse ----------------------------------------------------------------------------


def test_parse_every_field() -> None:
    beat = parse({"router": "r2", "state": "up", "session": "r2-session", "reclaiming": ["s1", "s2"], "ts": 1.5,
                  "unknown": {"ignored": True}})
    assert beat == RouterBeat("r2", True, "r2-session", frozenset({"s1", "s2"}))


def test_parse_defaults() -> None:
    assert parse({}) == RouterBeat("r2", True, None, frozenset())


def test_parse_down() -> None:
    assert parse({"router": "r2", "state": "down"}) == RouterBeat("r2", False)


def test_an_empty_payload_means_down() -> None:
    assert RouterBeat.parse("r2", b"") == RouterBeat("r2", up=False)


@pytest.mark.parametrize(("body", "why"), [
    ({"router": "r3"}, "does not match"),
    ({"router": 2}, "does not match"),
    ({"state": "draining"}, "up or down"),
    ({"state": None}, "up or down"),
    ({"state": ["up"]}, "up or down"),
    ({"session": 7}, "client id"),
    ({"session": ""}, "client id"),
    ({"session": "a/b"}, "client id"),
    ({"session": "a+"}, "client id"),
    ({"session": "a\x00"}, "client id"),
    ({"reclaiming": "s1"}, "list of client ids"),
    ({"reclaiming": ["s1", 2]}, "list of client ids"),
    ({"reclaiming": None}, "list of client ids"),
])
def test_bad_fields_refused(body: dict[str, Any], why: str) -> None:
    with pytest.raises(BadHeartbeat, match=why):
        parse(body)


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"up"', b"null", b"{", b"\xff\xfe", b"{}x"])
def test_not_an_object_or_not_json_refused(payload: bytes) -> None:
    with pytest.raises(BadHeartbeat):
        RouterBeat.parse("r2", payload)


def test_size_limit() -> None:
    padding = "x" * MAX_HEARTBEAT_BYTES
    with pytest.raises(BadHeartbeat, match="over"):
        parse({"pad": padding})
    body = orjson.dumps({"pad": ""})
    fits = body[:-2] + b"x" * (MAX_HEARTBEAT_BYTES - len(body)) + b'"}'
    assert len(fits) == MAX_HEARTBEAT_BYTES
    assert RouterBeat.parse("r2", fits).up


json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=6)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=4), inner, max_size=3), max_leaves=6)


@properties
@given(st.binary(max_size=80) | json_value.map(orjson.dumps))
def test_any_bytes_parse_or_raise_bad_heartbeat(payload: bytes) -> None:
    with contextlib.suppress(BadHeartbeat):  # and nothing else
        assert RouterBeat.parse("r2", payload).router == "r2"


@properties
@given(st.dictionaries(st.sampled_from(["router", "state", "session", "reclaiming", "ts", "x"]),
                       json_value | st.sampled_from(["r2", "up", "down", "s1"]) | st.lists(st.text(max_size=4))))
def test_any_object_parses_or_raises_bad_heartbeat(body: dict[str, Any]) -> None:
    try:
        beat = parse(body)
    except BadHeartbeat:
        return
    assert beat.router == "r2" and beat.up == (body.get("state", "up") == "up")
    assert beat.session == body.get("session")


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10)
sessions = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="/+#"),
                   min_size=1, max_size=10)


@properties
@given(names, st.booleans(), st.none() | sessions, st.frozensets(names, max_size=4),
       st.none() | st.floats(0, 2e9))
def test_payload_round_trip(router: str, is_up: bool, session: str | None, reclaiming: frozenset[str],
                            ts: float | None) -> None:
    beat = RouterBeat(router, is_up, session, reclaiming)
    assert RouterBeat.parse(router, beat.payload(ts)) == beat


def test_payload_lists_what_it_reclaims_sorted_and_leaves_out_what_it_lacks() -> None:
    assert orjson.loads(RouterBeat("r1", True, "s", frozenset({"b", "a"})).payload(12.34567)) == \
        {"router": "r1", "state": "up", "session": "s", "reclaiming": ["a", "b"], "ts": 12.346}
    assert orjson.loads(RouterBeat("r1", False).payload()) == {"router": "r1", "state": "down"}


# -- Routers.apply: departures ----------------------------------------------------------------------


def test_up_then_down_departs_once_with_the_known_session() -> None:
    routers = Routers("r1")
    assert routers.apply(up("r2", "r2-session"), 0.0) is None
    departed = routers.apply(will("r2"), 1.0)
    assert departed == RouterBeat("r2", False, "r2-session")  # a will names no session: the known one
    assert routers.views()["r2"] == {"state": "down", "session": "r2-session", "reclaiming": []}
    assert routers.apply(will("r2"), 2.0) is None  # already down
    assert routers.apply(RouterBeat.parse("r2", b""), 3.0) is None  # its retained down, cleared


def test_down_up_down_departs_each_time() -> None:
    routers = Routers("r1")
    routers.apply(up("r2", "s"), 0.0)
    assert routers.apply(will("r2"), 1.0) is not None
    assert routers.apply(up("r2"), 2.0) is None  # back (a beat naming no session keeps the known one)
    assert routers.apply(will("r2"), 3.0) == RouterBeat("r2", False, "s")


def test_first_heard_down_with_a_session_departs() -> None:
    routers = Routers("r1")
    down = RouterBeat("r2", False, "r2-session")  # a retained "down" met at start
    assert routers.apply(down, 0.0) == down
    assert routers.apply(down, 1.0) is None


def test_first_heard_down_without_a_session_departs_not() -> None:
    routers = Routers("r1")
    assert routers.apply(will("r2"), 0.0) is None
    assert routers.apply(RouterBeat.parse("r2", b""), 0.0) is None


def test_a_down_of_a_router_without_a_session_departs_not() -> None:
    routers = Routers("r1")
    routers.apply(up("r2"), 0.0)
    assert routers.apply(will("r2"), 1.0) is None
    assert routers.live(1.0) == ["r1"]


def test_the_own_router_never_departs_and_is_always_live() -> None:
    routers = Routers("r1")
    routers.apply(up("r1", "r1"), 0.0)
    assert routers.apply(RouterBeat("r1", False, "r1"), 1.0) is None  # its own retained will, met on restart
    assert routers.live(1.0) == ["r1"] and routers.is_live("r1", 1.0)


def test_silence_never_departs() -> None:
    routers = Routers("r1")
    routers.apply(up("r2", "s"), 0.0)
    # no clock departs a router: only its will or its own "down" does; silence only stops it being chosen
    assert routers.live(1.0) == ["r1", "r2"] and routers.is_live("r2", 1.0)
    assert routers.live(LIVE_WITHIN) == ["r1"] and not routers.is_live("r2", LIVE_WITHIN)
    assert routers.apply(up("r2", "s"), LIVE_WITHIN + 1) is None and routers.is_live("r2", LIVE_WITHIN + 1)
    assert routers.says_reclaiming("r2", "x", since=1e9) is None


def test_a_flood_of_made_up_router_ids_is_bounded() -> None:
    """Every id heard of was kept for good: a flood of retained heartbeats grew the router without end."""
    routers = Routers("r1")
    routers.apply(up("r2", "s2"), 0.0)
    routers.apply(will("r2"), 0.5)  # departed, with a session to reclaim: it must stay known
    for n in range(MAX_ROUTERS - 1):
        routers.apply(up(f"fake-{n}"), 1.0)
    with pytest.raises(BadHeartbeat, match=f"{MAX_ROUTERS} routers are live already"):
        routers.apply(up("one-more"), 2.0)
    assert len(routers.views()) == MAX_ROUTERS
    # Once the flood falls silent, a new router makes room; the departed one and its session are kept.
    assert routers.apply(up("r3", "s3"), 1.0 + LIVE_WITHIN) is None
    assert set(routers.views()) == {"r2", "r3"}
    assert routers.views()["r2"]["session"] == "s2"


def test_routers_down_with_nothing_to_reclaim_make_room_at_once() -> None:
    routers = Routers("r1")
    for n in range(MAX_ROUTERS):
        routers.apply(will(f"gone-{n}"), 0.0)
    assert routers.apply(up("r2", "s2"), 0.1) is None and routers.is_live("r2", 0.1)


# -- live, says_reclaiming --------------------------------------------------------------------------


def test_live_is_sorted_holds_me_and_only_the_up() -> None:
    routers = Routers("r5")
    assert routers.live(1.0) == ["r5"]
    for name in ["r3", "r1", "r9"]:
        routers.apply(up(name, name), 0.0)
    routers.apply(will("r9"), 1.0)
    assert routers.live(1.0) == ["r1", "r3", "r5"]
    assert routers.is_live("r5", 1.0) and routers.is_live("r1", 1.0)
    assert not routers.is_live("r9", 1.0) and not routers.is_live("r7", 1.0)


def test_says_reclaiming() -> None:
    routers = Routers("r1")
    assert routers.says_reclaiming("r2", "s1", since=0.0) is None  # never heard of
    routers.apply(up("r2", "r2", "s1"), 5.0)
    assert routers.says_reclaiming("r2", "s1", since=5.0) is True
    assert routers.says_reclaiming("r2", "s2", since=5.0) is False
    assert routers.says_reclaiming("r2", "s1", since=5.01) is None  # no heartbeat since
    routers.apply(up("r2", "r2"), 6.0)
    assert routers.says_reclaiming("r2", "s1", since=5.5) is False


def test_a_live_routers_session_is_in_use() -> None:
    routers = Routers("r1")
    routers.apply(RouterBeat("r2", up=True, session="r2"), 0.0)
    assert routers.using("r2") == "router r2" and routers.using("r3") is None
    routers.apply(RouterBeat("r2", up=False), 1.0)
    assert routers.using("r2") is None


def test_a_router_heartbeat_that_breaks_the_router_is_ignored_not_a_crash_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from mqttlb.core.config import parse
    from mqttlb.service import Service

    config = parse({"routes": [{"match": "devices/{device}/telemetry", "key": "device"}],
                    "metrics": {"listen": None}}, base_dir=Path("."), environ={})
    service = Service(config)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service.routers, "apply", broken)
    try:
        service._router_heartbeat("mqttlb/routers/r2/heartbeat", b'{"router": "r2", "state": "up"}')
        assert service.counters.bad_heartbeats == 1
    finally:
        service.transport.close(0)
