"""Topic filters, matching, overlap, templates and the key/topic checks, without a broker."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.core.topics import (
    MAX_KEY_BYTES,
    TopicError,
    TopicFilter,
    TopicTemplate,
    filter_matches,
    filters_overlap,
    inbox_filter,
    key_problem,
    original_topic,
    topic_problem,
)

properties = settings(derandomize=True, max_examples=120, deadline=None)
FORWARD = frozenset({"worker", "topic", "route", "pool", "key"})


# -- independent references -----------------------------------------------------


def mosquitto_accepts(cp: int) -> bool:
    """Mosquitto's per-code-point topic check (lib/utf8_mosq.c, mosquitto_validate_utf8)."""
    if cp == 0:
        return False
    if 0x0001 <= cp <= 0x001F or 0x007F <= cp <= 0x009F:
        return False
    if 0xD800 <= cp <= 0xDFFF:
        return False
    if 0xFDD0 <= cp <= 0xFDEF:
        return False
    if cp & 0xFFFF in (0xFFFE, 0xFFFF):
        return False
    return cp <= 0x10FFFF


def usable_key(key: str) -> bool:
    """What a key must be to stand in one topic level the broker accepts."""
    try:
        encoded = key.encode("utf-8")  # strict: a lone surrogate cannot be sent at all
    except UnicodeEncodeError:
        return False
    return (
        0 < len(encoded) <= 256
        and all(mosquitto_accepts(ord(c)) for c in key)
        and not any(c in key for c in "/+#")
    )


def reference_match(filter_levels: list[str], topic_levels: list[str], first: bool = True) -> bool:
    """MQTT 3.1.1 section 4.7 matching, written recursively and independently of filter_matches."""
    if first and topic_levels and topic_levels[0].startswith("$") and filter_levels and filter_levels[0] in ("+", "#"):
        return False
    if not filter_levels:
        return not topic_levels
    head, rest = filter_levels[0], filter_levels[1:]
    if head == "#":
        return True  # matches the parent level too: topic_levels may be empty here
    if not topic_levels:
        return False
    if head != "+" and head != topic_levels[0]:
        return False
    return reference_match(rest, topic_levels[1:], first=False)


def ref(mqtt_filter: str, topic: str) -> bool:
    return reference_match(mqtt_filter.split("/"), topic.split("/"))


# -- strategies -------------------------------------------------------------------

TOPIC_ALPHABET = ["a", "b", ""]
topic_levels = st.lists(st.sampled_from(TOPIC_ALPHABET + ["$a"]), min_size=1, max_size=5)


@st.composite
def mqtt_filters(draw: st.DrawFn, alphabet: tuple[str, ...] = ("a", "b", "", "+"), max_levels: int = 4) -> str:
    levels = draw(st.lists(st.sampled_from(alphabet), min_size=1, max_size=max_levels))
    if draw(st.booleans()):
        levels.append("#")
    mqtt = "/".join(levels)
    return mqtt if mqtt else "+"


# -- TopicFilter.parse --------------------------------------------------------------


def test_parse_captures_and_mqtt_form() -> None:
    f = TopicFilter.parse("devices/{device}/{kind}/x")
    assert f.mqtt == "devices/+/+/x"
    assert f.captures == ((1, "device"), (2, "kind"))
    assert f.names == ("device", "kind")
    assert f.template == "devices/{device}/{kind}/x"


def test_parse_plain_wildcards_are_kept() -> None:
    f = TopicFilter.parse("devices/+/logs/#")
    assert f.mqtt == "devices/+/logs/#"
    assert f.captures == ()


@pytest.mark.parametrize("bad", [
    "",
    "a/#/b",
    "#/a",
    "a/{b}c",
    "a/x{b}",
    "a{b}",
    "a/{b",
    "a/b}",
    "a/{1b}",
    "{d}/x/{d}",
    "a/+x",
    "a/x+",
    "a/x#",
    "a/##",
    "a/\x00",
    "a/\x1fb",
    "a/\u0085",
    "a/\ufffe",
])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(TopicError):
        TopicFilter.parse(bad)


def test_parse_duplicate_capture_message() -> None:
    with pytest.raises(TopicError, match="twice"):
        TopicFilter.parse("{d}/{d}")


def test_parse_partial_level_capture_message() -> None:
    with pytest.raises(TopicError, match="whole level"):
        TopicFilter.parse("a{b}")


def test_parse_hash_not_last_message() -> None:
    with pytest.raises(TopicError, match="last level"):
        TopicFilter.parse("a/#/b")


def test_parse_hash_alone_and_last_is_fine() -> None:
    assert TopicFilter.parse("#").mqtt == "#"
    assert TopicFilter.parse("a/{x}/#").captures == ((1, "x"),)


# -- match -------------------------------------------------------------------------


def test_match_returns_captures() -> None:
    f = TopicFilter.parse("devices/{device}/{kind}")
    assert f.match("devices/d42/telemetry") == {"device": "d42", "kind": "telemetry"}
    assert f.match("devices/d42") is None
    assert f.match("devices/d42/telemetry/extra") is None
    assert f.match("other/d42/telemetry") is None


def test_match_without_captures_is_empty_dict_not_none() -> None:
    assert TopicFilter.parse("a/+").match("a/b") == {}


def test_match_capture_before_hash() -> None:
    f = TopicFilter.parse("devices/{device}/logs/#")
    assert f.match("devices/d1/logs") == {"device": "d1"}
    assert f.match("devices/d1/logs/x/y") == {"device": "d1"}


def test_plus_is_exactly_one_level() -> None:
    assert filter_matches("a/+", "a/b")
    assert filter_matches("a/+", "a/")  # an empty level is still a level
    assert not filter_matches("a/+", "a")
    assert not filter_matches("a/+", "a/b/c")
    assert not filter_matches("+", "a/b")
    assert TopicFilter.parse("a/{x}").match("a/") == {"x": ""}


def test_hash_matches_parent_level() -> None:
    assert filter_matches("a/#", "a")
    assert filter_matches("a/#", "a/b/c")
    assert not filter_matches("a/b/#", "a")
    assert filter_matches("#", "a/b")


@pytest.mark.parametrize("mqtt_filter", ["#", "+", "+/x", "+/#"])
def test_dollar_topics_not_matched_by_leading_wildcards(mqtt_filter: str) -> None:
    assert not filter_matches(mqtt_filter, "$SYS/x" if "x" in mqtt_filter else "$SYS")
    assert not filter_matches(mqtt_filter, "$x")


def test_dollar_topics_matched_by_literal_filters() -> None:
    assert filter_matches("$SYS/#", "$SYS/broker/uptime")
    assert filter_matches("$SYS/+", "$SYS/x")
    assert TopicFilter.parse("$SYS/{what}").match("$SYS/load") == {"what": "load"}
    assert filter_matches("a/+", "a/$b")  # only the first level is special


@properties
@given(mqtt_filters(), topic_levels)
def test_filter_matches_agrees_with_reference(mqtt_filter: str, levels: list[str]) -> None:
    topic = "/".join(levels)
    assert filter_matches(mqtt_filter, topic) == ref(mqtt_filter, topic)


@properties
@given(mqtt_filters(alphabet=("a", "b", "", "+", "$a")), topic_levels)
def test_filter_matches_agrees_with_reference_dollar_filters(mqtt_filter: str, levels: list[str]) -> None:
    topic = "/".join(levels)
    assert filter_matches(mqtt_filter, topic) == ref(mqtt_filter, topic)


# -- filters_overlap ---------------------------------------------------------------


def brute_overlap(a: str, b: str) -> bool:
    """Some topic over the alphabet (plus a fresh level) matches both filters.

    The empty topic (one empty level) counts: '+' and '/#' share only it, and
    filters_overlap answers True there, erring on the side that refuses a route.
    """
    longest = max(len(a.split("/")), len(b.split("/"))) + 1
    alphabet = TOPIC_ALPHABET + ["z", "$a"]
    for n in range(1, longest + 1):
        for levels in itertools.product(alphabet, repeat=n):
            topic = "/".join(levels)
            if ref(a, topic) and ref(b, topic):
                return True
    return False


@properties
@given(mqtt_filters(max_levels=3), mqtt_filters(max_levels=3))
def test_filters_overlap_is_symmetric_and_exact(a: str, b: str) -> None:
    assert filters_overlap(a, b) == filters_overlap(b, a)
    assert filters_overlap(a, b) == brute_overlap(a, b), (a, b)


@properties
@given(mqtt_filters(alphabet=("a", "", "+", "$a"), max_levels=3),
       mqtt_filters(alphabet=("a", "", "+", "$a"), max_levels=3))
def test_filters_overlap_is_exact_with_dollar_filters(a: str, b: str) -> None:
    assert filters_overlap(a, b) == brute_overlap(a, b), (a, b)


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("a/#", "a", True),
    ("a/b/#", "a", False),
    ("a/+", "a", False),
    ("+/b", "a/+", True),
    ("a/b", "a/c", False),
    ("#", "x/y/z", True),
    ("mqttlb/workers/+/in/#", "devices/+/telemetry", False),
    ("mqttlb/workers/+/in/#", "+/workers/#", True),
    ("a/+/c", "a/b", False),
])
def test_filters_overlap_examples(a: str, b: str, expected: bool) -> None:
    assert filters_overlap(a, b) is expected
    assert filters_overlap(b, a) is expected


def test_filters_overlap_respects_dollar_rule() -> None:
    assert not filters_overlap("#", "$SYS/#")
    assert not filters_overlap("+/a", "$x/a")
    assert filters_overlap("$SYS/#", "$SYS/+")
    assert filters_overlap("#", "+/a")


# -- TopicTemplate -----------------------------------------------------------------


def test_template_parse_and_render() -> None:
    t = TopicTemplate.parse("mqttlb/workers/{worker}/in/{topic}", FORWARD)
    assert t.placeholders == ("worker", "topic")
    assert t.parts == ("mqttlb/workers/", "worker", "/in/", "topic", "")
    assert t.render({"worker": "w3", "topic": "devices/d42/telemetry"}) == \
        "mqttlb/workers/w3/in/devices/d42/telemetry"
    assert t.as_filter() == "mqttlb/workers/+/in/#"


def test_template_text_that_looks_like_a_format_is_kept_as_it_is() -> None:
    t = TopicTemplate.parse("100%/%s%d%%/{worker}", FORWARD)
    assert t.render({"worker": "w%s1", "topic": "unused"}) == "100%/%s%d%%/w%s1"
    one = TopicTemplate.parse("{topic}", FORWARD)
    assert one.render({"topic": "a/%(x)s/b"}) == "a/%(x)s/b"
    with pytest.raises(KeyError):
        t.render({"topic": "no worker"})


def test_template_without_placeholders() -> None:
    t = TopicTemplate.parse("fixed/topic", FORWARD)
    assert t.placeholders == ()
    assert t.render({}) == "fixed/topic"
    assert t.as_filter() == "fixed/topic"


@pytest.mark.parametrize(("bad", "message"), [
    ("", "empty"),
    ("a/{topic}/b", "last level"),
    ("{topic}/{worker}", "last level"),
    ("a/{nope}", "unknown placeholder"),
    ("a/x{worker}", "whole level"),
    ("a/{worker}x", "whole level"),
    ("a/{worker", "stray"),
    ("a/worker}", "stray"),
    ("a/+/{worker}", "'\\+'"),
    ("a/#", "'#'"),
    ("a/\x01/{worker}", "control"),
])
def test_template_refuses(bad: str, message: str) -> None:
    with pytest.raises(TopicError, match=message):
        TopicTemplate.parse(bad, FORWARD)


level_values = st.text(st.sampled_from("ab$é-_ "), min_size=1, max_size=5).filter(lambda s: not s.startswith("$"))
original_topics = st.lists(st.text(st.sampled_from("ab$é"), max_size=3), min_size=1, max_size=4).map("/".join) \
    .filter(bool)


@properties
@given(st.sampled_from([
    "mqttlb/workers/{worker}/in/{topic}",
    "w/{pool}/{worker}/{route}/{topic}",
    "{worker}/{key}",
    "x/{worker}",
    "{topic}",
]), level_values, level_values, level_values, level_values, original_topics)
def test_rendered_topic_matches_as_filter(template: str, worker: str, pool: str, route: str, key: str,
                                          topic: str) -> None:
    t = TopicTemplate.parse(template, FORWARD)
    rendered = t.render({"worker": worker, "pool": pool, "route": route, "key": key, "topic": topic})
    if rendered.startswith("$"):  # only reachable with "{topic}" first and a $-topic, which routes never take
        return
    assert filter_matches(t.as_filter(), rendered), (t.as_filter(), rendered)
    assert ref(t.as_filter(), rendered)


# -- key_problem / topic_problem ---------------------------------------------------


NASTY = "\x00\x01\x1f\x7f\x80\x9f\xa0/+#$ é\ud800\udfff\ufdd0\ufdef\ufdcf\ufdf0\ufffe\uffff\ufffd\U0001fffe\U0001ffff" \
        "\U0010fffe\U0010ffff\U0001f600a"
any_char = st.one_of(
    st.characters(codec=None),                                       # the whole Unicode range
    st.characters(categories=["Cs"]),                                # lone surrogates
    st.characters(categories=["Cc", "Cn", "Co"]),                    # controls, unassigned, private use
    st.integers(0xFDC0, 0xFDFF).map(chr),                            # around the U+FDD0..U+FDEF block
    st.builds(lambda plane, low: chr(plane * 0x10000 + low),
              st.integers(0, 16), st.sampled_from([0xFFFD, 0xFFFE, 0xFFFF])),  # noncharacters of every plane
    st.sampled_from(NASTY),
)
fine_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cn"], exclude_characters="/+#"),
                    max_size=8)
keys = st.one_of(
    st.text(),
    st.text(any_char),
    st.builds(lambda a, c, b: a + c + b, fine_text, any_char, fine_text),  # one suspect among fine characters
    st.builds(lambda n, c, tail: "k" * n + c * 3 + tail,                    # around the 256-byte limit
              st.integers(0, 300), st.sampled_from(["a", "é", "€", "\U0001f600"]), st.text(any_char, max_size=2)),
)


@settings(derandomize=True, max_examples=800, deadline=None)
@given(keys)
def test_accepted_keys_are_valid_for_mosquitto(key: str) -> None:
    if key_problem(key) is None:
        assert key
        encoded = key.encode("utf-8")  # raises on a lone surrogate
        assert len(encoded) <= MAX_KEY_BYTES
        for c in key:
            assert mosquitto_accepts(ord(c)), f"U+{ord(c):04X}"
            assert c not in "/+#"
        topic = TopicTemplate.parse("mqttlb/workers/{worker}/in/{topic}", FORWARD).render(
            {"worker": key, "topic": "devices/d/telemetry"})
        assert topic.split("/")[2] == key and topic_problem(topic) is None
    assert (key_problem(key) is None) == usable_key(key)


@pytest.mark.parametrize("key", [
    "", "a/b", "a+b", "#", "/", "+",
    "\x00", "d\x01", "\x1f", "\x7f", "\x80", "\x9f", "\ud800", "a\udfff",
    "\ufdd0", "\ufdef", "\ufffe", "\uffff", "\U0001fffe", "\U0001ffff", "\U0010ffff",
    "a" * 257, "é" * 129, "\U0001f600" * 65,
])
def test_bad_keys_refused(key: str) -> None:
    assert key_problem(key) is not None
    assert not usable_key(key)


@pytest.mark.parametrize("key", [
    "d42", "a" * 256, "é" * 128, "\U0001f600" * 64, "$SYS", "\xa0", "\ufdcf", "\ufdf0", "\ufffd", "with space",
])
def test_good_keys_accepted(key: str) -> None:
    assert key_problem(key) is None


def test_topic_problem() -> None:
    assert topic_problem("devices/d42/telemetry") is None
    assert topic_problem("a//b") is None
    assert topic_problem("") is not None
    assert topic_problem("a/+") is not None
    assert topic_problem("a/#") is not None
    assert topic_problem("a/\x00") is not None
    assert topic_problem("a/\x9f") is not None
    assert topic_problem("a/\ud800") is not None
    assert topic_problem("a/\U0001fffe") is not None
    assert topic_problem("a" * 65535) is None
    assert topic_problem("a" * 65536) is not None
    assert topic_problem("é" * 32768) is not None  # 65536 bytes


@given(filter_text=st.lists(st.sampled_from(["a", "b", "+", "$x", ""]), min_size=1, max_size=4).map("/".join),
       tail=st.booleans(), topic=st.lists(st.sampled_from(["a", "b", "$x", ""]), min_size=1, max_size=5).map("/".join))
def test_a_filter_matches_as_filter_matches_says(filter_text: str, tail: bool, topic: str) -> None:
    """``TopicFilter.match`` (levels split once, on every message) agrees with ``filter_matches``."""
    mqtt = filter_text + "/#" if tail else filter_text or "#"
    parsed = TopicFilter.parse(mqtt)
    assert (parsed.match(topic) is not None) == filter_matches(mqtt, topic)


# -- inbox filters and original topics (a reclaimed forward back to the device's topic) --------------


@pytest.mark.parametrize(("template", "inbox"), [
    ("mqttlb/workers/{worker}/in/{topic}", "mqttlb/workers/w3/in/#"),
    ("w/{pool}/{worker}/{route}/{topic}", "w/+/w3/+/#"),
    ("{worker}/{key}", "w3/+"),
    ("x/{worker}", "x/w3"),
    ("{topic}", "#"),
])
def test_inbox_filter(template: str, inbox: str) -> None:
    assert inbox_filter(TopicTemplate.parse(template, FORWARD), "w3") == inbox


def test_original_topic() -> None:
    inboxes = ["mqttlb/workers/w3/in/#", "w/+/w3/+/#"]
    assert original_topic("mqttlb/workers/w3/in/devices/d42/telemetry", inboxes) == "devices/d42/telemetry"
    assert original_topic("w/default/w3/telemetry/devices/d1/t", inboxes) == "devices/d1/t"
    assert original_topic("mqttlb/workers/w3/in//lead/trail/", inboxes) == "/lead/trail/"  # empty levels kept
    assert original_topic("mqttlb/workers/w3/in/mqttlb/workers/w3/in/x", inboxes) == "mqttlb/workers/w3/in/x"


@pytest.mark.parametrize("topic", [
    "mqttlb/workers/w4/in/devices/d1/t",  # another worker's inbox
    "other/devices/d1/t",
    "w3/d1",  # an inbox without the original topic: nothing to take it from
])
def test_original_topic_is_the_topic_itself_when_no_inbox_holds_one(topic: str) -> None:
    assert original_topic(topic, ["mqttlb/workers/w3/in/#", "w3/+", "#"]) == topic
    assert original_topic(topic, []) == topic


forward_values = st.fixed_dictionaries({"worker": level_values, "pool": level_values, "route": level_values,
                                        "key": level_values, "topic": original_topics})


@properties
@given(st.sampled_from(["mqttlb/workers/{worker}/in/{topic}", "w/{pool}/{worker}/{route}/{topic}",
                        "a/{route}/{worker}/{key}/{topic}"]), forward_values)
def test_original_topic_undoes_any_forward(template: str, values: dict[str, str]) -> None:
    forward = TopicTemplate.parse(template, FORWARD)
    keyed = inbox_filter(TopicTemplate.parse("{worker}/{key}", FORWARD), values["worker"])  # holds no topic
    inboxes = [keyed, inbox_filter(forward, values["worker"])]
    assert original_topic(forward.render(values), inboxes) == values["topic"]
