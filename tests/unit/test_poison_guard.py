"""The poison guard's rules (mqttlb/poison.py), one test each; and the limits the router measures."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mqttlb.core.limits import BrokerLimits, plain
from mqttlb.core.poison import PoisonGuard


def test_one_drop_names_nobody() -> None:
    assert PoisonGuard[str]().dropped(["a", "b"], suspect=True) is None


def test_the_first_suspect_in_flight_at_the_next_drop_is_the_culprit() -> None:
    guard = PoisonGuard[str]()
    guard.dropped(["a", "p", "b"], suspect=True)       # a, p, b were waiting; the broker dropped at p
    assert guard.dropped(["p", "b", "c"], suspect=True) == "p"  # a was acknowledged; p is first again


def test_new_messages_are_not_culprits() -> None:
    guard = PoisonGuard[str]()
    guard.dropped(["a"], suspect=True)
    assert guard.dropped(["b", "c"], suspect=True) is None
    assert guard.dropped(["b", "d"], suspect=True) == "b"


def test_a_drop_that_cannot_be_a_refusal_neither_names_nor_forgets() -> None:
    guard = PoisonGuard[str]()
    guard.dropped(["p"], suspect=True)
    assert guard.dropped(["p"], suspect=False) is None  # a session taken over, a broker restart
    assert guard.dropped(["p"], suspect=True) == "p"


def test_the_culprit_is_not_a_suspect_again() -> None:
    guard = PoisonGuard[str]()
    guard.dropped(["p", "q"], suspect=True)
    assert guard.dropped(["p", "q"], suspect=True) == "p"
    assert guard.dropped(["q"], suspect=True) == "q"
    assert guard.dropped(["p"], suspect=True) is None


def test_publishes_for_no_message_are_never_culprits() -> None:
    guard = PoisonGuard[str]()
    guard.dropped([None, "a"], suspect=True)
    assert guard.dropped([None, "a"], suspect=True) == "a"


@given(st.text(max_size=300), st.integers(0, 70_000), st.integers(0, 1), st.integers(0, 300),
       st.lists(st.tuples(st.text(max_size=40), st.text(max_size=200)), max_size=4))
def test_packet_size_is_what_mqtt_encodes(topic: str, payload: int, qos: int, inbound: int,
                                          user: list[tuple[str, str]]) -> None:
    """Against an independent encoding of a PUBLISH (MQTT 5, 3.3)."""
    def text(value: str) -> bytes:
        data = value.encode("utf-8", "surrogatepass")
        return len(data).to_bytes(2, "big") + data

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                return bytes(out)

    topic = topic.encode("utf-8", "ignore").decode("utf-8")
    properties = b"\x00" * inbound + b"".join(b"\x26" + text(k) + text(v) for k, v in user)
    body = text(topic) + (b"\x00\x01" if qos else b"") + varint(len(properties)) + properties + b"\x00" * payload
    assert BrokerLimits(mqtt5=True).packet_size(topic, payload, qos, inbound, tuple(user)) == \
        1 + len(varint(len(body))) + len(body)
    body = text(topic) + (b"\x00\x01" if qos else b"") + b"\x00" * payload
    assert BrokerLimits(mqtt5=False).packet_size(topic, payload, qos, inbound, tuple(user)) == \
        1 + len(varint(len(body))) + len(body)


@given(st.text(st.characters(codec="utf-8"), max_size=300), st.integers(0, 70_000), st.integers(0, 1),
       st.integers(0, 300), st.lists(st.tuples(st.text(max_size=40), st.text(st.characters(codec="utf-8"),
                                                                               max_size=200)), max_size=4),
       st.integers(1, 80_000), st.booleans())
def test_a_packet_that_surely_fits_does(topic: str, payload: int, qos: int, inbound: int, user: list[tuple[str, str]],
                                        most: int, mqtt5: bool) -> None:
    limits = BrokerLimits(mqtt5=mqtt5, max_packet_size=most)
    size = limits.packet_size(topic, payload, qos, inbound, tuple(user))
    if limits.surely_fits(topic, payload, inbound, tuple(user)):
        assert size <= most
    if 4 * size + inbound + 13 + 5 * len(user) <= most:  # far below: the bound is not so loose as to measure them all
        assert limits.surely_fits(topic, payload, inbound, tuple(user))
    assert BrokerLimits(mqtt5=mqtt5).surely_fits(topic, payload, inbound, tuple(user))  # no limit known


def test_topic_limits_are_mosquittos() -> None:
    limits = BrokerLimits()
    assert limits.topic_problem("/".join(["a"] * 201)) is None
    assert "202 levels" in (limits.topic_problem("/".join(["a"] * 202)) or "")
    assert "bytes" in (limits.topic_problem("é" * 40_000) or "")


@given(st.text())
def test_plain_text_is_printable_ascii(text: str) -> None:
    shown = plain(text)
    assert shown.isascii() and all(0x20 <= ord(c) < 0x7F for c in shown)
