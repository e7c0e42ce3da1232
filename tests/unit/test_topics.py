"""Topic filters, matching, templates and key validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.errors import BadKey
from mqttlb.keys import KeySpec
from mqttlb.topics import TopicError, TopicFilter, TopicTemplate, filter_matches, filters_overlap, key_problem


def mosquitto_accepts_level(text: str) -> bool:
    """Mosquitto's topic validation (utf8_mosq.c) plus MQTT's meaning of / + #, written independently."""
    for char in text:
        cp = ord(char)
        if cp == 0 or cp <= 0x1F or 0x7F <= cp <= 0x9F or 0xD800 <= cp <= 0xDFFF:
            return False
        if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFF) in (0xFFFE, 0xFFFF):
            return False
        if char in "/+#":
            return False
    return True


nasty = st.text(alphabet=st.characters(codec=None), max_size=80) | st.sampled_from(
    ["", "a/b", "+", "#", "\x00", "\x01", "\x7f", "\x9f", "\ud800", "\ufdd0", "\uffff", "\U0001fffe", "x" * 257,
     "é" * 129, "ok-device"])


@settings(max_examples=500, derandomize=True)
@given(key=nasty)
def test_a_key_that_passes_validation_always_makes_a_valid_topic_level(key: str) -> None:
    if key_problem(key) is None:
        assert key
        assert len(key.encode("utf-8")) <= 256
        assert mosquitto_accepts_level(key)
        topic = TopicTemplate.parse("mqttlb/workers/{worker}/in/{topic}", frozenset({"worker", "topic"})).render(
            {"worker": key, "topic": "devices/d/telemetry"})
        assert topic.split("/")[2] == key


@pytest.mark.parametrize("key", ["", "a/b", "a+", "#", "d\x00", "d\x01", "d\x7f", "d\x85", "\ufdd0", "\uffff",
                                 "\U0010ffff", "x" * 257, "é" * 129])
def test_bad_keys_are_refused(key: str) -> None:
    assert key_problem(key) is not None


@pytest.mark.parametrize("key", ["d42", "device-é", "日本", "x" * 256, "a.b:c@d"])
def test_good_keys_pass(key: str) -> None:
    assert key_problem(key) is None


def test_filter_with_captures() -> None:
    f = TopicFilter.parse("devices/{device}/telemetry")
    assert f.mqtt == "devices/+/telemetry"
    assert f.match("devices/d1/telemetry") == {"device": "d1"}
    assert f.match("devices/d1/other") is None
    assert f.match("devices/d1/telemetry/x") is None


@pytest.mark.parametrize("text", ["a/#/b", "a/{b}x", "a/{d}/{d}", "a/+x", "", "a/b#"])
def test_invalid_filters_are_refused(text: str) -> None:
    with pytest.raises(TopicError):
        TopicFilter.parse(text)


def reference_match(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    if topic.startswith("$") and p[0] in ("+", "#"):
        return False
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


levels = st.lists(st.sampled_from(["a", "b", "", "$x"]), min_size=1, max_size=4)
filters = st.builds(lambda ls, tail: "/".join(ls + ([tail] if tail else [])),
                    st.lists(st.sampled_from(["a", "b", "+", ""]), min_size=1, max_size=4),
                    st.sampled_from(["", "#"]))


@settings(max_examples=300, derandomize=True)
@given(pattern=filters, topic=levels.map("/".join))
def test_filter_matching_agrees_with_the_mqtt_rules(pattern: str, topic: str) -> None:
    assert filter_matches(pattern, topic) == reference_match(pattern, topic)


@settings(max_examples=300, derandomize=True)
@given(a=filters, b=filters)
def test_filters_overlap_iff_some_topic_matches_both(a: str, b: str) -> None:
    alphabet = ["a", "b", "", "c"]
    topics = ["/".join(ls) for n in range(1, 6) for ls in _product(alphabet, n)]
    brute = any(reference_match(a, t) and reference_match(b, t) for t in topics)
    assert filters_overlap(a, b) == brute
    assert filters_overlap(b, a) == brute


def _product(alphabet: list[str], n: int) -> list[list[str]]:
    if n == 0:
        return [[]]
    return [[x, *rest] for x in alphabet for rest in _product(alphabet, n - 1)]


def test_templates_render_and_give_their_filter() -> None:
    t = TopicTemplate.parse("mqttlb/workers/{worker}/in/{topic}", frozenset({"worker", "topic"}))
    topic = t.render({"worker": "w1", "topic": "devices/d1/telemetry"})
    assert topic == "mqttlb/workers/w1/in/devices/d1/telemetry"
    assert filter_matches(t.as_filter(), topic)
    with pytest.raises(TopicError):
        TopicTemplate.parse("x/{topic}/y", frozenset({"topic"}))
    with pytest.raises(TopicError):
        TopicTemplate.parse("x/{nope}", frozenset({"topic"}))


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"[" * 100_000, b'{"a":' * 100_000, b"[1]",
                                     b'{"meta": {"id": true}}', b'{"meta": {"id": null}}', b'{"meta": {}}',
                                     b'{"meta": {"id": "a/b"}}', b'{"meta": {"id": "d\\u0001"}}', b'{"meta": 3}'])
def test_payload_keys_that_cannot_be_used_raise_bad_key(payload: bytes) -> None:
    with pytest.raises(BadKey):
        KeySpec.parse("payload.meta.id", ()).extract({}, payload)


def test_payload_keys_take_strings_and_numbers() -> None:
    spec = KeySpec.parse("payload.meta.id", ())
    assert spec.extract({}, b'{"meta": {"id": "d1"}}') == "d1"
    assert spec.extract({}, b'{"meta": {"id": 42}}') == "42"
    assert KeySpec.parse("device", ("device",)).extract({"device": "d7"}, b"") == "d7"
    with pytest.raises(ValueError):
        KeySpec.parse("nope", ("device",))
