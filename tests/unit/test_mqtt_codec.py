"""The MQTT codec against bytes written out from the MQTT 3.1.1 and 5 specifications, round trips, fuzz."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.mqtt import LocalProtocolError, RemoteProtocolError, codec
from mqttlb.mqtt.events import (
    BadPublish,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)


def decoded(protocol: int, data: bytes) -> Packet:
    """The one packet in ``data``."""
    framed = codec.frame(data, 0, len(data))
    assert framed is not None and framed[1] == len(data), data
    return codec.decode(protocol, data[0], data, *framed)


# -- from the specifications -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"), (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"), (2_097_152, b"\x80\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f"),
])
def test_variable_byte_integers_as_in_the_specs_table(value: int, encoded: bytes) -> None:  # MQTT 5 1.5.5
    assert codec.encode_varint(value) == encoded
    assert codec.decode_varint(encoded, 0, len(encoded)) == (value, len(encoded))


def test_a_variable_byte_integer_of_five_bytes_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError):
        codec.decode_varint(b"\xff\xff\xff\xff\x01", 0, 5)
    with pytest.raises(LocalProtocolError):
        codec.encode_varint(268_435_456)


def test_the_specs_string_example() -> None:  # MQTT 5 1.5.4: "A𪛔" (U+0041, U+2A6D4)
    assert codec.encode_string("A\U0002A6D4") == b"\x00\x05\x41\xf0\xaa\x9b\x94"
    assert codec.decode_string(b"\x00\x05\x41\xf0\xaa\x9b\x94", 0, 7) == ("A\U0002A6D4", 7)


def test_mqtt_311_connect_as_in_the_specs_variable_header_example() -> None:
    # MQTT 3.1.1 3.1.2.10: flags 0xCE (user name, password, will QoS 1, will, clean session), keep alive 10.
    packet = codec.encode_connect(4, "c", clean_start=True, keepalive=10, username="u", password="p",
                                  will=Will("w", b"x", qos=1))
    body = b"\x00\x04MQTT\x04\xce\x00\x0a" + b"\x00\x01c" + b"\x00\x01w" + b"\x00\x01x" + b"\x00\x01u" + b"\x00\x01p"
    assert packet == b"\x10" + bytes((len(body),)) + body


def test_mqtt_5_connect_as_in_the_specs_variable_header_example() -> None:
    # MQTT 5 3.1.2.12: version 5, flags 0xCE, keep alive 10, properties of length 5: Session Expiry 10.
    packet = codec.encode_connect(5, "c", clean_start=True, keepalive=10, session_expiry=10, username="u",
                                  password="p", will=Will("w", b"x", qos=1))
    header = b"\x00\x04MQTT\x05\xce\x00\x0a\x05\x11\x00\x00\x00\x0a"
    payload = b"\x00\x01c" + b"\x00" + b"\x00\x01w" + b"\x00\x01x" + b"\x00\x01u" + b"\x00\x01p"
    assert packet == b"\x10" + bytes((len(header + payload),)) + header + payload


def test_fixed_packets() -> None:
    assert codec.PINGREQ_PACKET == b"\xc0\x00"
    assert codec.encode_disconnect(4) == codec.encode_disconnect(5) == b"\xe0\x00"
    assert codec.encode_puback(5, 0x1234) == b"\x40\x02\x12\x34"  # MQTT 5 3.4.2.1: reason 0, no properties
    assert codec.encode_puback(5, 0x1234, 0x10) == b"\x40\x03\x12\x34\x10"
    assert codec.encode_puback(4, 7) == b"\x40\x02\x00\x07"


def test_publish_bytes() -> None:
    assert codec.encode_publish(4, b"a/b", b"hi", 1, 10, retain=True) == b"\x33\x09\x00\x03a/b\x00\x0ahi"
    assert codec.encode_publish(5, b"a/b", b"hi", 0, 0, dup=True) == b"\x38\x08\x00\x03a/b\x00hi"


def test_mqtt_311_connack_return_codes_become_mqtt_5_reasons() -> None:
    reasons = [decoded(4, bytes((0x20, 2, 0, code))) for code in range(6)]
    assert [reason.reason for reason in reasons if isinstance(reason, ConnAck)] == [0, 0x84, 0x85, 0x88, 0x86, 0x87]
    with pytest.raises(RemoteProtocolError):
        decoded(4, b"\x20\x02\x00\x06")


def test_connack_properties() -> None:
    packet = codec.encode_connack(5, True, 0, receive_maximum=20, maximum_packet_size=4096, server_keepalive=15,
                                  reason_string="ok")
    assert decoded(5, packet) == ConnAck(True, 0, 20, 4096, 15, "ok")
    assert decoded(5, b"\x20\x03\x00\x00\x00") == ConnAck(False, 0, 65535)


# -- strings, as MQTT 5 1.5.4 has them --------------------------------------------------------------------


def test_a_zero_width_no_break_space_is_an_ordinary_character() -> None:
    """paho refused U+FEFF, which MQTT 5 says must not be stripped; a device's property stalled a router."""
    pairs = (("\ufeffname", "value\ufeff"),)
    assert codec.user_properties(codec.encode_user_properties(pairs)) == pairs
    assert codec.encode_topic_name("a/\ufeff") == "a/\ufeff".encode()


@pytest.mark.parametrize("text", ["a\x00b", "a\ud800b"])
def test_nul_and_surrogates_are_refused_to_the_caller(text: str) -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode_string(text)
    with pytest.raises(LocalProtocolError):
        codec.encode_user_properties([("name", text)])


@pytest.mark.parametrize("value", ["a\x00b", "a\ud800b", "x" * 65536])
def test_a_bad_value_is_refused_after_its_name_is_known(value: str) -> None:
    """The quick path (names seen before) checks values as the first time does."""
    assert codec.user_properties(codec.encode_user_properties([("mqttlb-seen", "ok")])) == (("mqttlb-seen", "ok"),)
    with pytest.raises(LocalProtocolError):
        codec.encode_user_properties([("mqttlb-seen", "ok"), ("mqttlb-seen", value)])
    longest = "x" * 65535
    assert codec.user_properties(codec.encode_user_properties([("mqttlb-seen", longest)])) == (
        ("mqttlb-seen", longest),)


@pytest.mark.parametrize("raw", [b"a\x00b", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff"])
def test_nul_surrogates_and_invalid_utf8_from_the_broker_are_its_fault(raw: bytes) -> None:
    block = b"\x26" + len(raw).to_bytes(2, "big") + raw + b"\x00\x01v"
    with pytest.raises(RemoteProtocolError):
        codec.user_properties(block)


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "a\x00"])
def test_a_topic_name_has_no_wildcard_and_is_not_empty(topic: str) -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode_topic_name(topic)


@pytest.mark.parametrize("topic_filter", ["a/#/b", "a/b#", "a+/b", ""])
def test_malformed_filters_are_refused(topic_filter: str) -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode_subscribe(5, 1, [Subscription(topic_filter, 1)])


@pytest.mark.parametrize(("topic", "detail"), [
    (b"a/\xff", "not valid UTF-8"), (b"a\x00", "U+0000"), (b"a/+", "wildcard"), (b"", "empty"),
])
def test_a_publish_with_a_bad_topic_is_reported_not_refused(topic: bytes, detail: str) -> None:
    packet = codec.encode_publish(5, topic, b"payload", 1, 9)
    event = decoded(5, packet)
    assert isinstance(event, BadPublish) and (event.topic, event.qos, event.packet_id) == (topic, 1, 9)
    assert detail in event.detail


def test_the_fast_publish_event_is_an_ordinary_frozen_publish() -> None:
    event = decoded(5, codec.encode_publish(5, b"t", b"p", 1, 3, retain=True, properties=b"\x01\x01"))
    assert type(event) is Publish
    assert event == Publish("t", b"p", 1, 3, True, False, b"\x01\x01")
    assert hash(event) == hash(Publish("t", b"p", 1, 3, True, False, b"\x01\x01"))
    with pytest.raises(AttributeError):
        event.qos = 0  # type: ignore[misc]


# -- round trips -------------------------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
names = texts.filter(lambda text: text != "" and "+" not in text and "#" not in text)
filters = st.lists(st.one_of(st.just("+"), names.map(lambda text: text.replace("/", ""))), min_size=1,
                   max_size=4).map("/".join) | names.map(lambda text: text + "/#")
ids = st.integers(1, 65535)
reasons = st.integers(0, 255)


def packets(protocol: int) -> st.SearchStrategy[Packet]:
    mqtt5 = protocol == 5
    optional_int = (lambda most: st.none() | st.integers(1, most)) if mqtt5 else (lambda most: st.none())
    user = st.lists(st.tuples(texts, texts), max_size=3).map(codec.encode_user_properties)
    subscription = st.builds(Subscription, filters, st.integers(0, 2),
                             st.booleans() if mqtt5 else st.just(False),
                             st.integers(0, 2) if mqtt5 else st.just(0))
    return st.one_of(
        st.builds(Connect, texts, st.booleans(), st.integers(0, 65535), optional_int(2**32 - 1),
                  optional_int(65535), texts if mqtt5 else st.just("u"), st.none() | texts,
                  st.none() | st.builds(Will, names, st.binary(max_size=10), st.integers(0, 2), st.booleans())),
        st.builds(ConnAck, st.booleans(), st.sampled_from([0, 0x84, 0x85, 0x86, 0x87, 0x88]) if not mqtt5 else reasons,
                  st.integers(1, 65535) if mqtt5 else st.just(65535), optional_int(2**32 - 1),
                  optional_int(65535), st.none() | texts if mqtt5 else st.none(),
                  st.none() | texts if mqtt5 else st.none()),
        st.builds(Publish, names, st.binary(max_size=50), st.just(0), st.just(0), st.booleans(), st.booleans(),
                  user if mqtt5 else st.just(b"")),
        st.builds(Publish, names, st.binary(max_size=50), st.just(1), ids, st.booleans(), st.booleans(),
                  user if mqtt5 else st.just(b"")),
        st.builds(PubAck, ids, reasons if mqtt5 else st.just(0)),
        st.builds(Subscribe, ids, st.lists(subscription, min_size=1, max_size=3).map(tuple)),
        st.builds(SubAck, ids, st.lists(reasons, min_size=1, max_size=3).map(tuple)),
        st.builds(Unsubscribe, ids, st.lists(filters, min_size=1, max_size=3).map(tuple)),
        st.builds(UnsubAck, ids, st.lists(reasons, min_size=1, max_size=3).map(tuple) if mqtt5 else st.just(())),
        st.just(PingReq()), st.just(PingResp()),
        st.builds(Disconnect, reasons, st.none() | texts, optional_int(2**32 - 1)) if mqtt5 else st.just(Disconnect()),
    )


@given(packets(4))
def test_every_mqtt_311_packet_round_trips(packet: Packet) -> None:
    assert decoded(4, codec.encode_packet(4, packet)) == packet


@given(packets(5))
def test_every_mqtt_5_packet_round_trips(packet: Packet) -> None:
    assert decoded(5, codec.encode_packet(5, packet)) == packet


@given(st.sampled_from([4, 5]), st.integers(0, 255), st.binary(max_size=64))
def test_any_body_decodes_or_is_the_brokers_fault(protocol: int, first: int, body: bytes) -> None:
    try:
        codec.decode(protocol, first, body, 0, len(body))
    except RemoteProtocolError:
        pass


@given(st.binary(max_size=64))
def test_any_property_block_decodes_or_is_the_brokers_fault(block: bytes) -> None:
    try:
        codec.user_properties(block)
    except RemoteProtocolError:
        pass


# -- without_user_properties: a reclaimed forward back to the device's own properties ------------------


def block(*items: tuple[int, object]) -> bytes:
    """A property block's content, the properties in the order given."""
    return b"".join(codec.encode_property(identifier, value) for identifier, value in items)


def test_without_user_properties_drops_ours_and_keeps_the_rest_in_order() -> None:
    properties = block((codec.USER_PROPERTY, ("app", "1")), (codec.CONTENT_TYPE, "application/json"),
                       (codec.USER_PROPERTY, ("mqttlb-route", "telemetry")), (codec.MESSAGE_EXPIRY, 60),
                       (codec.USER_PROPERTY, ("app", "2")), (codec.USER_PROPERTY, ("mqttlb-topic", "d/1")),
                       (codec.SUBSCRIPTION_ID, 7), (codec.USER_PROPERTY, ("Mqttlb-x", "not ours: case")))
    kept = codec.without_user_properties(properties, "mqttlb-")
    assert codec.user_properties(kept) == (("app", "1"), ("app", "2"), ("Mqttlb-x", "not ours: case"))
    decoded = codec.decode_properties(kept, 0, len(kept))
    assert (decoded[codec.CONTENT_TYPE], decoded[codec.MESSAGE_EXPIRY]) == ("application/json", 60)
    assert decoded[codec.SUBSCRIPTION_ID] == [7]


def test_without_user_properties_when_all_are_ours() -> None:
    properties = block((codec.PAYLOAD_FORMAT, 1), (codec.USER_PROPERTY, ("mqttlb-key", "d1")))
    assert codec.without_user_properties(properties, "mqttlb-") == block((codec.PAYLOAD_FORMAT, 1))
    assert codec.without_user_properties(block((codec.USER_PROPERTY, ("mqttlb-key", "d1"))), "mqttlb-") == b""


@pytest.mark.parametrize("properties", [
    b"",
    block((codec.CONTENT_TYPE, "text/plain")),
    block((codec.USER_PROPERTY, ("app", "mqttlb-route")), (codec.MESSAGE_EXPIRY, 5)),
    block((codec.USER_PROPERTY, ("mqttlb", "no dash")), (codec.USER_PROPERTY, ("xmqttlb-a", "b"))),
])
def test_without_user_properties_returns_the_input_itself_when_nothing_is_ours(properties: bytes) -> None:
    assert codec.without_user_properties(properties, "mqttlb-") is properties


def test_without_user_properties_refuses_a_malformed_block_as_the_brokers_fault() -> None:
    with pytest.raises(RemoteProtocolError):
        codec.without_user_properties(b"\x26\x00\x05ab", "mqttlb-")


ours = st.tuples(texts.map(lambda text: "mqttlb-" + text), texts)
theirs = st.tuples(texts.filter(lambda text: not text.startswith("mqttlb-")), texts)
others = st.lists(st.sampled_from([
    (codec.PAYLOAD_FORMAT, 1), (codec.MESSAGE_EXPIRY, 3600), (codec.CONTENT_TYPE, "application/cbor"),
    (0x08, "reply/to"), (0x09, b"\x00correlation"),
]), unique_by=lambda item: item[0], max_size=5)
subscription_ids = st.lists(st.integers(1, 2**28 - 1), max_size=2).map(
    lambda found: [(codec.SUBSCRIPTION_ID, identifier) for identifier in found])


@settings(derandomize=True, max_examples=200, deadline=None)
@given(others, subscription_ids, st.lists(st.tuples(st.booleans(), ours, theirs), max_size=6), st.randoms())
def test_without_user_properties_round_trips(other: list[tuple[int, object]], subscriptions: list[tuple[int, int]],
                                             users: list[tuple[bool, tuple[str, str], tuple[str, str]]],
                                             rng: Any) -> None:
    pairs = [mine if is_ours else their for is_ours, mine, their in users]
    items = [*other, *subscriptions]
    rng.shuffle(items)
    at = 0
    for pair in pairs:  # user properties in their order, anywhere among the others
        at = rng.randint(at, len(items))
        items.insert(at, (codec.USER_PROPERTY, pair))
        at += 1
    properties = block(*items)
    kept = codec.without_user_properties(properties, "mqttlb-")
    expected = {identifier: value for identifier, value in other}
    if subscriptions:
        expected[codec.SUBSCRIPTION_ID] = [value for identifier, value in items if identifier == codec.SUBSCRIPTION_ID]
    their_pairs = [pair for pair in pairs if not pair[0].startswith("mqttlb-")]
    if their_pairs:
        expected[codec.USER_PROPERTY] = their_pairs
    assert codec.decode_properties(kept, 0, len(kept)) == expected
    if len(their_pairs) == len(pairs):
        assert kept is properties
    assert codec.without_user_properties(kept, "mqttlb-") is kept
