"""Hostile input through the pure core: never an exception, never a topic the broker would refuse.

A device controls its topic (below its own id), its payload and, through a
payload key, its routing key; a worker controls its heartbeat. Hypothesis
throws wildcards, ``$`` prefixes, NUL and control characters, invalid UTF-8,
64 KiB keys and huge or deeply nested JSON at ``Router`` with a ``Fleet``.
Topics are Unicode without lone surrogates: the transport drops a topic that is
not UTF-8 before the core sees it. The live half of this, through a real
router, is in tests/integration/test_security.py.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttlb.core.router import DeadLetter, Forward, Message, Reason, Router
from mqttlb.core.topics import MAX_TOPIC_BYTES, key_problem, topic_problem
from mqttlb.errors import BadHeartbeat

from .test_router import beat, make_router

NASTY = ["\x00", "\x01", "\x1f", "\x7f", "\x85", "\x9f", "/", "+", "#", "$", "$SYS", "$share", " ", "\u2028",
         "\ufeff", "\ufffe", "\uffff", "\U0010ffff", "é", "😀", "%u", "\\", '"', "{device}"]
REASONS = {Reason.BAD_KEY, Reason.TOO_LARGE, Reason.NO_ROUTE, Reason.BAD_TOPIC}
WORKERS = {"w1": "default", "w2": "default", "g1": "gpu"}
MAX_PAYLOAD = 512 * 1024

nasty_text = st.lists(st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(NASTY)),
                      max_size=16).map("".join)
huge_text = st.builds(lambda unit, count: unit * count, st.sampled_from(["k", "é", "😀", "\x00", "/", "+"]),
                      st.sampled_from([255, 256, 257, 4096, 65536]))
level = st.one_of(nasty_text, huge_text)
topic = st.one_of(
    st.builds("devices/{}/telemetry".format, level),
    st.builds("devices/{}/logs/{}".format, level, level),
    st.builds("events/{}".format, level),
    st.builds("jobs/{}".format, level),
    st.builds("$SYS/{}".format, level),
    level,
)
json_value: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False), level),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(level, inner, max_size=4)),
    max_leaves=12)
deep = st.builds(lambda opener, depth: b'{"meta": {"id": ' + opener * depth + b"}}",
                 st.sampled_from([b"[", b'{"a":', b'"']), st.sampled_from([10, 1000, 100_000, 300_000]))
payload = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b'{"meta": {"id": 1e999}}', b'{"meta": {"id": 123456789012345678901234567890}}',
                     b'{"meta": {"id": "\\ud800"}}', b'{"meta": {"id": -0.0}}', b'{"meta": {"id": NaN}}']),
    st.builds(lambda key: orjson.dumps({"meta": {"id": key}}), json_value),
    st.builds(orjson.dumps, json_value),
    deep,
    st.builds(lambda size: b"\xff" * size, st.sampled_from([MAX_PAYLOAD, MAX_PAYLOAD + 1])),
    st.builds(lambda n: orjson.dumps({f"k{i}": list(range(50)) for i in range(n)}), st.sampled_from([10, 1000])),
)


def fleet_router() -> Router[int]:
    router = make_router(dead_letter={"hold": "10s", "max_payload": MAX_PAYLOAD})
    for worker, pool in WORKERS.items():
        beat(router, worker, 0.0, pool=pool)
    return router


def check(action: object, sent: str, body: bytes, workers: frozenset[str] = frozenset(WORKERS)) -> None:
    """One action of the router for a message on ``sent``: well-formed, and publishable if ``sent`` was."""
    publishable = topic_problem(sent) is None
    if isinstance(action, Forward):
        assert action.topic == f"mqttlb/workers/{action.worker}/in/{sent}"
        assert action.worker in workers and action.message.payload is body and action.qos in (0, 1)
        assert action.key is None or key_problem(action.key) is None
    else:
        assert isinstance(action, DeadLetter), action
        assert action.reason in REASONS
        if action.keep_properties:  # whole: the original topic in its topic, the payload unless too large
            assert action.topic.startswith(f"mqttlb/deadletter/{action.reason}/")
            assert action.keep_payload == (action.reason != Reason.TOO_LARGE)
        else:  # shortened, as the original topic would break a limit: it travels in mqttlb-reason
            assert action.topic == f"mqttlb/deadletter/{action.reason}"
            assert "topic " in dict(action.user_properties)["mqttlb-reason"]
    assert len(action.topic.encode("utf-8")) <= MAX_TOPIC_BYTES
    assert not publishable or topic_problem(action.topic) is None, (sent[:80], action.topic[:200])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messages=st.lists(st.tuples(topic, payload), min_size=1, max_size=5))
def test_hostile_messages_are_forwarded_or_dead_lettered_never_raised(messages: list[tuple[str, bytes]]) -> None:
    router = fleet_router()
    for ref, (sent, body) in enumerate(messages):
        actions = router.route(Message(sent, body, ref, 1.0))
        assert len(actions) == 1, actions  # every pool has a worker: nothing is held
        check(actions[0], sent, body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(beats=st.lists(st.tuples(level, st.one_of(payload, st.builds(orjson.dumps, st.fixed_dictionaries(
    {"worker": level, "pool": level, "state": st.sampled_from(["up", "down", "draining", "UP", ""]),
     "weight": json_value, "inflight": json_value})))), min_size=1, max_size=6))
def test_hostile_heartbeats_are_refused_or_taken_and_routing_goes_on(beats: list[tuple[str, bytes]]) -> None:
    router, taken = fleet_router(), set(WORKERS)
    for worker, body in beats:
        try:
            router.heartbeat(worker, body, 1.0)
        except BadHeartbeat:
            continue
        assert key_problem(worker) is None  # only a worker id fit for a topic level joins the fleet
        taken.add(worker)
    for sent in ("devices/d1/telemetry", "devices/d1/logs/x"):
        for action in router.route(Message(sent, b"{}", 0, 1.5)):  # none when every worker was taken down
            check(action, sent, b"{}", taken)
