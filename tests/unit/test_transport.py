"""The paho adapter's own encoding and decoding, without a broker: what it writes, paho and Mosquitto read."""

from __future__ import annotations

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MalformedPacket, Properties

from mqttlb.transport import _BatchingClient, _encoded, _read_utf, _read_variable_int, _variable_int

properties = settings(derandomize=True, max_examples=100, deadline=None)
mqtt_text = st.text(st.characters(blacklist_characters="\x00"), max_size=20)  # MQTT strings hold no NUL


@properties
@given(st.integers(0, 268_435_455))
def test_variable_int_round_trip(value: int) -> None:
    data = b"x" + _variable_int(value) + b"rest"
    assert _read_variable_int(data, 1) == (value, len(data) - 4)


def test_a_variable_int_of_five_bytes_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        _read_variable_int(b"\xff\xff\xff\xff\x01", 0)


@properties
@given(st.lists(st.tuples(mqtt_text, mqtt_text), max_size=4), st.lists(st.tuples(mqtt_text, mqtt_text), min_size=1,
                                                                        max_size=3))
def test_forward_properties_keep_the_devices_and_add_ours(device: list[tuple[str, str]],
                                                          ours: list[tuple[str, str]]) -> None:
    inbound = Properties(PacketTypes.PUBLISH)
    inbound.ContentType = "application/json"
    inbound.MessageExpiryInterval = 60
    if device:
        inbound.UserProperty = device
    raw = inbound.pack()
    length, start = _read_variable_int(raw, 0)
    decoded = Properties(PacketTypes.PUBLISH)
    decoded.unpack(_encoded(raw[start:start + length], ours).pack())
    assert decoded.ContentType == "application/json" and decoded.MessageExpiryInterval == 60
    assert decoded.UserProperty == device + ours


def client() -> _BatchingClient:
    return _BatchingClient(paho.CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5, manual_ack=True)


def test_an_inbound_publish_is_handed_on_undecoded() -> None:
    c = client()
    got: list[tuple[bytes, bytes, int, int, bytes]] = []
    c.on_publish_packet = lambda *packet: got.append(packet)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v\ufeff")]
    packed = props.pack()
    c._in_packet["command"] = 0x32  # PUBLISH, QoS 1
    c._in_packet["packet"] = bytearray(b"\x00\x03a/b" + b"\x00\x07" + packed + b"payload")
    assert c._handle_publish() == paho.MQTT_ERR_SUCCESS
    assert got == [(b"a/b", b"payload", 1, 7, packed[1:])]


def test_a_short_publish_is_malformed() -> None:
    c = client()
    c.on_publish_packet = lambda *packet: None
    c._in_packet["command"] = 0x30
    c._in_packet["packet"] = bytearray(b"\x00\x09a/b\x00")
    with pytest.raises(MalformedPacket):
        c._handle_publish()


def test_the_string_reader_accepts_u_feff_and_refuses_nul() -> None:
    assert _read_utf(b"\x00\x03\xef\xbb\xbf", 5) == ("\ufeff", 5)
    with pytest.raises(MalformedPacket):
        _read_utf(b"\x00\x01\x00", 3)
    with pytest.raises(MalformedPacket):
        _read_utf(b"\x00\x02\xc3\x28", 4)  # not UTF-8
