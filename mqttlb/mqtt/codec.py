"""MQTT 3.1.1 and 5 on the wire: integers, strings, properties and every packet, both ways.

Pure functions from values to bytes and back; ``Session`` keeps the state. What may be wrong is
said by the error's type: encoding refuses what MQTT forbids us to send with ``LocalProtocolError``,
decoding refuses what a peer must not send with ``RemoteProtocolError``, and nothing else escapes
(no IndexError past a packet's end, no UnicodeError: ``tests/unit/test_mqtt_codec.py`` fuzzes it).

Strings follow MQTT 5 (1.5.4) exactly: well-formed UTF-8 without U+0000 and without surrogates.
U+FEFF is an ordinary character there ("MUST NOT be skipped over or stripped off"); paho refused
it, and a device that put one in a user property stalled the router that paho drove.

The PUBLISH and PUBACK codecs are the hot path (tens of thousands a second on one core): they slice
each packet once, read integers by hand and leave PUBLISH properties undecoded, as raw bytes the
router passes on. The rest is written for clarity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    BadPublish,
    ConnAck,
    Connect,
    Disconnect,
    Oversized,
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
    puback_event,
    publish_event,
)

MQTT_311 = 4
MQTT_5 = 5
PROTOCOLS = (MQTT_311, MQTT_5)
MAX_REMAINING_LENGTH = 268_435_455
MAX_PACKET_ID = 65535

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"

# MQTT 5 properties (2.2.2.2) this package names.
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEPALIVE = 0x13
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS = 0x23
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27

_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT, 0x11: _FOUR,
    0x12: _STRING, 0x13: _TWO, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE, 0x18: _FOUR, 0x19: _BYTE,
    0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _TWO, 0x22: _TWO, 0x23: _TWO, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
"""Every MQTT 5 property by identifier: how its value is encoded."""
_REPEATABLE = frozenset({USER_PROPERTY, SUBSCRIPTION_ID})

V311_CONNACK = {0: 0x00, 1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}
"""MQTT 3.1.1 CONNACK return codes as their MQTT 5 reason codes."""
_V5_CONNACK = {reason: code for code, reason in V311_CONNACK.items()}

_ONE_BYTE = tuple(bytes((value,)) for value in range(256))
_TWO_BYTES = tuple(value.to_bytes(2, "big") for value in range(MAX_PACKET_ID + 1))
"""Packet ids and string lengths, encoded once (a lookup costs a third of ``to_bytes``)."""


# -- integers, strings, binary data ------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """A Variable Byte Integer (1.5.5)."""
    if 0 <= value < 128:
        return _ONE_BYTE[value]
    if 128 <= value < 16384:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise LocalProtocolError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(data: bytes, at: int, end: int) -> tuple[int, int]:
    """The Variable Byte Integer at ``at``: (its value, where what follows starts)."""
    value = 0
    for shift in (0, 7, 14, 21):
        if at >= end:
            raise RemoteProtocolError("a variable byte integer runs past the end of its packet")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
    raise RemoteProtocolError("a variable byte integer longer than four bytes")


def encode_text(text: str, what: str = "string") -> bytes:
    """``text`` as MQTT UTF-8, without its length prefix; refuses what MQTT 5 (1.5.4) forbids."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{what} {text[:100]!r} holds a surrogate, which MQTT forbids") from None
    if b"\x00" in data:
        raise LocalProtocolError(f"{what} {text[:100]!r} holds U+0000, which MQTT forbids")
    if len(data) > MAX_PACKET_ID:
        raise LocalProtocolError(f"{what} is {len(data)} bytes long; MQTT allows 65535")
    return data


def encode_string(text: str, what: str = "string") -> bytes:
    """A UTF-8 Encoded String (1.5.4): two bytes of length, then the text."""
    data = encode_text(text, what)
    return _TWO_BYTES[len(data)] + data


def encode_binary(data: bytes, what: str = "binary data") -> bytes:
    if len(data) > MAX_PACKET_ID:
        raise LocalProtocolError(f"{what} is {len(data)} bytes long; MQTT allows 65535")
    return _TWO_BYTES[len(data)] + data


def decode_text(data: bytes) -> str:
    """MQTT UTF-8 (no length prefix) as text; a strict decode refuses surrogates and overlong forms."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RemoteProtocolError(f"a string is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    if "\x00" in text:
        raise RemoteProtocolError("a string holds U+0000")
    return text


def decode_binary(data: bytes, at: int, end: int) -> tuple[bytes, int]:
    """Binary Data (1.5.6) at ``at``: (the bytes, where what follows starts)."""
    if at + 2 > end:
        raise RemoteProtocolError("a length runs past the end of its packet")
    stop = at + 2 + (data[at] << 8 | data[at + 1])
    if stop > end:
        raise RemoteProtocolError("a string or binary field runs past the end of its packet")
    return data[at + 2:stop], stop


def decode_string(data: bytes, at: int, end: int) -> tuple[str, int]:
    """A UTF-8 Encoded String at ``at``: (the text, where what follows starts)."""
    raw, at = decode_binary(data, at, end)
    return decode_text(raw), at


def _two(data: bytes, at: int, end: int) -> int:
    if at + 2 > end:
        raise RemoteProtocolError("a two-byte integer runs past the end of its packet")
    return data[at] << 8 | data[at + 1]


# -- topics -------------------------------------------------------------------------------------------


def encode_topic_name(topic: str) -> bytes:
    """A topic name for PUBLISH (4.7), without its length prefix: not empty, no wildcard."""
    data = encode_text(topic, "topic")
    if not data:
        raise LocalProtocolError("a topic name cannot be empty")
    if b"+" in data or b"#" in data:
        raise LocalProtocolError(f"topic {topic[:100]!r} holds a wildcard: a topic name cannot")
    return data


def topic_name_problem(topic: bytes) -> str | None:
    """Why ``topic``, from a PUBLISH, is not a valid topic name; None when it is."""
    if not topic:
        return "an empty topic (a topic alias, which this client never allows)"
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"the topic is not valid UTF-8 ({error.reason} at byte {error.start})"
    if "\x00" in text:
        return "the topic holds U+0000"
    if "+" in text or "#" in text:
        return "the topic holds a wildcard"
    return None


def encode_topic_filter(topic_filter: str) -> bytes:
    """A topic filter for SUBSCRIBE or UNSUBSCRIBE (4.7.1), without its length prefix."""
    data = encode_text(topic_filter, "topic filter")
    if not data:
        raise LocalProtocolError("a topic filter cannot be empty")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise LocalProtocolError(f"filter {topic_filter[:100]!r}: '#' must be a whole level, the last")
        if "+" in level and level != "+":
            raise LocalProtocolError(f"filter {topic_filter[:100]!r}: '+' must be a whole level")
    return data


# -- MQTT 5 properties ---------------------------------------------------------------------------------


def encode_property(identifier: int, value: Any) -> bytes:
    """One property, identifier and value (a ``(name, value)`` pair for a user property)."""
    kind = PROPERTY_TYPES.get(identifier)
    head = _ONE_BYTE[identifier] if kind is not None else b""
    if kind == _BYTE:
        return head + _ONE_BYTE[_bounded(value, 0xFF, identifier)]
    if kind == _TWO:
        return head + _TWO_BYTES[_bounded(value, 0xFFFF, identifier)]
    if kind == _FOUR:
        return head + _bounded(value, 0xFFFF_FFFF, identifier).to_bytes(4, "big")
    if kind == _VARINT:
        return head + encode_varint(value)
    if kind == _STRING:
        return head + encode_string(value, f"property 0x{identifier:02X}")
    if kind == _BINARY:
        return head + encode_binary(value, f"property 0x{identifier:02X}")
    if kind == _PAIR:
        name, text = value
        return head + encode_string(name, "user property name") + encode_string(text, "user property value")
    raise LocalProtocolError(f"0x{identifier:02X} is not an MQTT 5 property")


_NOT_ZERO = frozenset({RECEIVE_MAXIMUM, MAXIMUM_PACKET_SIZE})
"""Properties that MQTT 5 makes a protocol error at 0 (3.1.2.11.3, 3.1.2.11.4); ``decode_properties``, on
every message whose properties are read, tests the two without a loop."""


def _bounded(value: int, most: int, identifier: int) -> int:
    if not 0 <= value <= most or value == 0 and identifier in _NOT_ZERO:
        raise LocalProtocolError(f"property 0x{identifier:02X}: {value} is out of range")
    return value


def encode_properties(properties: Mapping[int, Any]) -> bytes:
    """A property block's content, without its length; a repeatable property takes a list of values."""
    return b"".join(encode_property(identifier, item)
                    for identifier, value in properties.items() if value is not None
                    for item in (value if identifier in _REPEATABLE else (value,)))


def decode_properties(data: bytes, at: int, end: int) -> dict[int, Any]:
    """A property block's content, ``data[at:end]``: identifier -> value, a list for repeatable ones."""
    properties: dict[int, Any] = {}
    while at < end:
        identifier = data[at]
        kind = PROPERTY_TYPES.get(identifier)
        at += 1
        value: Any
        if kind == _BYTE:
            if at >= end:
                raise RemoteProtocolError("a property runs past the end of its block")
            value, at = data[at], at + 1
        elif kind == _TWO:
            value, at = _two(data, at, end), at + 2
        elif kind == _FOUR:
            if at + 4 > end:
                raise RemoteProtocolError("a property runs past the end of its block")
            value, at = int.from_bytes(data[at:at + 4], "big"), at + 4
        elif kind == _VARINT:
            value, at = decode_varint(data, at, end)
        elif kind == _STRING:
            value, at = decode_string(data, at, end)
        elif kind == _BINARY:
            value, at = decode_binary(data, at, end)
        elif kind == _PAIR:
            name, at = decode_string(data, at, end)
            text, at = decode_string(data, at, end)
            value = (name, text)
        else:
            raise RemoteProtocolError(f"0x{identifier:02X} is not an MQTT 5 property")
        if identifier in _REPEATABLE:
            properties.setdefault(identifier, []).append(value)
        elif identifier in properties:
            raise RemoteProtocolError(f"property 0x{identifier:02X} appears twice")
        else:
            properties[identifier] = value
    if properties.get(RECEIVE_MAXIMUM) == 0 or properties.get(MAXIMUM_PACKET_SIZE) == 0:  # _NOT_ZERO, unrolled
        raise RemoteProtocolError("a Receive Maximum or Maximum Packet Size of 0")
    return properties


def _read_properties(data: bytes, at: int, end: int) -> tuple[dict[int, Any], int]:
    length, start = decode_varint(data, at, end)
    stop = start + length
    if stop > end:
        raise RemoteProtocolError("a property block runs past the end of its packet")
    return decode_properties(data, start, stop), stop


def _block(properties: bytes) -> bytes:
    """A property block: its length, then ``properties``."""
    return encode_varint(len(properties)) + properties


def user_properties(properties: bytes) -> tuple[tuple[str, str], ...]:
    """The user properties in an encoded property block's content (a ``Publish.properties``), in order."""
    return tuple(decode_properties(properties, 0, len(properties)).get(USER_PROPERTY, ()))


def without_user_properties(properties: bytes, prefix: str) -> bytes:
    """An encoded property block's content (a ``Publish.properties``) without the user properties whose name
    starts with ``prefix``; the rest as it was, in order."""
    if not properties:
        return properties
    decoded = decode_properties(properties, 0, len(properties))
    pairs = decoded.pop(USER_PROPERTY, [])
    kept = [(name, value) for name, value in pairs if not name.startswith(prefix)]
    if len(kept) == len(pairs):
        return properties
    return encode_properties(decoded) + encode_user_properties(kept)


def encode_user_properties(pairs: Sequence[tuple[str, str]]) -> bytes:
    """User properties as property block content, to append to a ``Publish.properties`` or pass to publish.

    On every forward's path, so the usual case is one pass and one join: the encoded head of each name is
    kept (a router uses a handful of names), and a value is checked only for what plain ``encode`` lets by
    (U+0000, length). Anything else takes the checked path, which raises saying why. U+0000 is looked for in
    the text: ``bytes in bytes`` first tries its operand as an integer and formats the TypeError it drops, at
    twice the cost of the rest of the loop.
    """
    parts: list[bytes] = []
    heads = _USER_HEADS
    try:
        for name, value in pairs:
            if "\x00" in value:
                break
            data = value.encode()
            parts += (heads[name], _TWO_BYTES[len(data)], data)
        else:
            return b"".join(parts)
    except (KeyError, IndexError, UnicodeEncodeError):  # a new name, a value over 65535 bytes, a surrogate
        pass
    return _encode_user_properties_checked(pairs)


def _encode_user_properties_checked(pairs: Sequence[tuple[str, str]]) -> bytes:
    parts: list[bytes] = []
    for name, value in pairs:
        head = _USER_HEADS.get(name)
        if head is None:
            head = _ONE_BYTE[USER_PROPERTY] + encode_string(name, "user property name")
            if len(_USER_HEADS) < 64:
                _USER_HEADS[name] = head
        data = encode_text(value, "user property value")
        parts += (head, _TWO_BYTES[len(data)], data)
    return b"".join(parts)


_USER_HEADS: dict[str, bytes] = {}


# -- packets a client sends ------------------------------------------------------------------------------


def _packet(first: int, body: bytes) -> bytes:
    if len(body) > MAX_REMAINING_LENGTH:
        raise LocalProtocolError(f"a packet of {len(body)} bytes: MQTT allows {MAX_REMAINING_LENGTH}")
    return _ONE_BYTE[first] + encode_varint(len(body)) + body


def encode_connect(protocol: int, client_id: str, *, clean_start: bool, keepalive: int,
                   session_expiry: int | None = None, receive_maximum: int | None = None,
                   username: str | None = None, password: str | None = None, will: Will | None = None) -> bytes:
    """CONNECT (3.1). With MQTT 3.1.1 ``clean_start`` is Clean Session and the MQTT 5 properties are ignored."""
    if protocol == MQTT_311 and password is not None and username is None:
        raise LocalProtocolError("MQTT 3.1.1 allows a password only with a user name")
    if not 0 <= keepalive <= 0xFFFF:
        raise LocalProtocolError(f"keepalive {keepalive} is out of range (0..65535 seconds)")
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0) | (
        0x02 if clean_start else 0)
    payload = encode_string(client_id, "client id")
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise LocalProtocolError(f"will QoS {will.qos} is not 0, 1 or 2")
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        payload += (b"\x00" if protocol == MQTT_5 else b"") + encode_binary(encode_topic_name(will.topic))
        payload += encode_binary(will.payload, "will payload")
    if username is not None:
        payload += encode_string(username, "user name")
    if password is not None:
        try:  # Binary Data: a NUL is allowed here
            payload += encode_binary(password.encode("utf-8"), "password")
        except UnicodeEncodeError:
            raise LocalProtocolError("the password holds a surrogate") from None
    header = b"\x00\x04MQTT" + _ONE_BYTE[_protocol(protocol)] + _ONE_BYTE[flags] + _TWO_BYTES[keepalive]
    if protocol == MQTT_5:
        header += _block(encode_properties({SESSION_EXPIRY: session_expiry, RECEIVE_MAXIMUM: receive_maximum}))
    return _packet(CONNECT << 4, header + payload)


def _protocol(protocol: int) -> int:
    if protocol not in PROTOCOLS:
        raise LocalProtocolError(f"protocol {protocol!r}: 4 (MQTT 3.1.1) or 5 (MQTT 5)")
    return protocol


def encode_publish(protocol: int, topic: bytes, payload: bytes, qos: int, packet_id: int, retain: bool = False,
                   dup: bool = False, properties: bytes = b"") -> bytes:
    """PUBLISH (3.3) with ``topic`` already encoded and checked, ``properties`` already encoded (MQTT 5)."""
    first = 0x30 | qos << 1 | retain | dup << 3
    length = 2 + len(topic) + len(payload)
    if qos:
        pid = _TWO_BYTES[packet_id]
        length += 2
    else:
        pid = b""
    if protocol == MQTT_5:  # lengths under 128, one byte, without a call: on every forward
        size = len(properties)
        block = _ONE_BYTE[size] if size < 128 else encode_varint(size)
        length += len(block) + size
        return b"".join((_ONE_BYTE[first], _ONE_BYTE[length] if length < 128 else encode_varint(length),
                         _TWO_BYTES[len(topic)], topic, pid, block, properties, payload))
    return b"".join((_ONE_BYTE[first], _ONE_BYTE[length] if length < 128 else encode_varint(length),
                     _TWO_BYTES[len(topic)], topic, pid, payload))


_PUBACKS = tuple(b"\x40\x02" + pid for pid in _TWO_BYTES)


def encode_puback(protocol: int, packet_id: int, reason: int = 0, reason_string: str | None = None) -> bytes:
    """PUBACK (3.4); with MQTT 5 a success without properties takes the short form (3.4.2.1)."""
    if (reason == 0 and reason_string is None) or protocol == MQTT_311:
        return _PUBACKS[packet_id]
    if reason_string is None:
        return b"\x40\x03" + _TWO_BYTES[packet_id] + _ONE_BYTE[reason]
    return _packet(PUBACK << 4, _TWO_BYTES[packet_id] + _ONE_BYTE[reason]
                   + _block(encode_property(REASON_STRING, reason_string)))


def encode_subscribe(protocol: int, packet_id: int, subscriptions: Sequence[Subscription]) -> bytes:
    """SUBSCRIBE (3.8). No Local and Retain Handling exist only in MQTT 5."""
    if not subscriptions:
        raise LocalProtocolError("SUBSCRIBE needs at least one filter")
    body = _TWO_BYTES[packet_id] + (b"\x00" if protocol == MQTT_5 else b"")
    for subscription in subscriptions:
        if subscription.qos not in (0, 1, 2) or subscription.retain_handling not in (0, 1, 2):
            raise LocalProtocolError(f"{subscription}: QoS and retain handling are 0, 1 or 2")
        if protocol == MQTT_311 and (subscription.no_local or subscription.retain_handling):
            raise LocalProtocolError(f"{subscription}: No Local and Retain Handling need MQTT 5")
        options = subscription.qos | subscription.no_local << 2 | subscription.retain_handling << 4
        body += encode_binary(encode_topic_filter(subscription.filter)) + _ONE_BYTE[options]
    return _packet(SUBSCRIBE << 4 | 2, body)


def encode_unsubscribe(protocol: int, packet_id: int, filters: Sequence[str]) -> bytes:
    """UNSUBSCRIBE (3.10)."""
    if not filters:
        raise LocalProtocolError("UNSUBSCRIBE needs at least one filter")
    body = _TWO_BYTES[packet_id] + (b"\x00" if protocol == MQTT_5 else b"")
    body += b"".join(encode_binary(encode_topic_filter(topic_filter)) for topic_filter in filters)
    return _packet(UNSUBSCRIBE << 4 | 2, body)


def encode_disconnect(protocol: int, reason: int = 0, *, session_expiry: int | None = None,
                      reason_string: str | None = None) -> bytes:
    """DISCONNECT (3.14); MQTT 3.1.1's has no reason or properties."""
    if not 0 <= reason <= 0xFF:
        raise LocalProtocolError(f"DISCONNECT with reason {reason}: a reason code is one byte")
    if protocol == MQTT_311 or (reason == 0 and session_expiry is None and reason_string is None):
        return b"\xe0\x00"
    body = _ONE_BYTE[reason] + _block(encode_properties({SESSION_EXPIRY: session_expiry,
                                                         REASON_STRING: reason_string}))
    return _packet(DISCONNECT << 4, body)


# -- packets a server sends (the session decodes them; tests encode them) ---------------------------


def encode_connack(protocol: int, session_present: bool, reason: int = 0, *, receive_maximum: int | None = None,
                   maximum_packet_size: int | None = None, server_keepalive: int | None = None,
                   reason_string: str | None = None, assigned_client_id: str | None = None) -> bytes:
    """CONNACK (3.2); with MQTT 3.1.1 ``reason`` must be one a 3.1.1 return code stands for."""
    if protocol == MQTT_311:
        if reason not in _V5_CONNACK:
            raise LocalProtocolError(f"MQTT 3.1.1 has no CONNACK return code for reason 0x{reason:02X}")
        return b"\x20\x02" + _ONE_BYTE[session_present] + _ONE_BYTE[_V5_CONNACK[reason]]
    properties = encode_properties({RECEIVE_MAXIMUM: receive_maximum, MAXIMUM_PACKET_SIZE: maximum_packet_size,
                                    SERVER_KEEPALIVE: server_keepalive, REASON_STRING: reason_string,
                                    ASSIGNED_CLIENT_ID: assigned_client_id})
    return _packet(CONNACK << 4, _ONE_BYTE[session_present] + _ONE_BYTE[reason] + _block(properties))


def encode_suback(protocol: int, packet_id: int, reasons: Sequence[int]) -> bytes:
    return _packet(SUBACK << 4, _TWO_BYTES[packet_id] + (b"\x00" if protocol == MQTT_5 else b"") + bytes(reasons))


def encode_unsuback(protocol: int, packet_id: int, reasons: Sequence[int] = ()) -> bytes:
    if protocol == MQTT_311:
        return b"\xb0\x02" + _TWO_BYTES[packet_id]
    return _packet(UNSUBACK << 4, _TWO_BYTES[packet_id] + b"\x00" + bytes(reasons))


def encode_packet(protocol: int, packet: Packet) -> bytes:
    """Any packet from its value: the general (slower) way, for servers and tests."""
    if isinstance(packet, Publish):
        return encode_publish(protocol, encode_topic_name(packet.topic), packet.payload, packet.qos,
                              packet.packet_id, packet.retain, packet.dup, packet.properties)
    if isinstance(packet, PubAck):
        return encode_puback(protocol, packet.packet_id, packet.reason)
    if isinstance(packet, Connect):
        return encode_connect(protocol, packet.client_id, clean_start=packet.clean_start, keepalive=packet.keepalive,
                              session_expiry=packet.session_expiry, receive_maximum=packet.receive_maximum,
                              username=packet.username, password=packet.password, will=packet.will)
    if isinstance(packet, ConnAck):
        return encode_connack(protocol, packet.session_present, packet.reason,
                              receive_maximum=None if packet.receive_maximum == 65535 else packet.receive_maximum,
                              maximum_packet_size=packet.maximum_packet_size,
                              server_keepalive=packet.server_keepalive, reason_string=packet.reason_string,
                              assigned_client_id=packet.assigned_client_id)
    if isinstance(packet, Subscribe):
        return encode_subscribe(protocol, packet.packet_id, packet.subscriptions)
    if isinstance(packet, SubAck):
        return encode_suback(protocol, packet.packet_id, packet.reasons)
    if isinstance(packet, Unsubscribe):
        return encode_unsubscribe(protocol, packet.packet_id, packet.filters)
    if isinstance(packet, UnsubAck):
        return encode_unsuback(protocol, packet.packet_id, packet.reasons)
    if isinstance(packet, PingReq):
        return PINGREQ_PACKET
    if isinstance(packet, PingResp):
        return PINGRESP_PACKET
    if isinstance(packet, Disconnect):
        return encode_disconnect(protocol, packet.reason, session_expiry=packet.session_expiry,
                                 reason_string=packet.reason_string)
    raise LocalProtocolError(f"cannot encode {packet!r}")


# -- decoding ---------------------------------------------------------------------------------------------

_FLAGS = {PUBREL: 2, SUBSCRIBE: 2, UNSUBSCRIBE: 2}
"""The fixed header's low four bits, where MQTT fixes them (2.1.3): 0 for the packets not named here."""


def frame(data: bytes, at: int, end: int) -> tuple[int, int] | None:
    """The packet starting at ``data[at]``: (where its body starts, where it ends), None when incomplete."""
    value = 0
    for index in range(1, 5):
        if at + index >= end:
            return None
        byte = data[at + index]
        value |= (byte & 0x7F) << (7 * (index - 1))
        if byte < 0x80:
            return at + index + 1, at + index + 1 + value
    raise RemoteProtocolError("a remaining length longer than four bytes")


def decode_publish(mqtt5: bool, first: int, data: bytes, start: int, end: int) -> Publish | BadPublish:
    """The PUBLISH whose fixed header byte is ``first`` and whose body is ``data[start:end]``."""
    head = _publish_head(mqtt5, first, data, start, end, end)
    if isinstance(head, BadPublish):
        return head
    topic, qos, packet_id, properties, at = head
    return publish_event(topic, data[at:end], qos, packet_id, first & 1 == 1, first & 8 == 8, properties)


KEPT_HEAD = 2 + 65_535 + 2 + 4 + 65_536
"""Bytes of a PUBLISH that ``decode_oversized`` needs at most: the longest topic, a packet id, the properties'
length, and up to 64 KiB of properties (longer ones are not kept)."""


def decode_oversized(mqtt5: bool, first: int, data: bytes, start: int, end: int, stop: int) -> Oversized | BadPublish:
    """The PUBLISH whose body is ``data[start:stop]``, of which only ``data[start:end]`` is here (at least
    ``KEPT_HEAD`` bytes of it, or all): what it is, without its payload."""
    head = _publish_head(mqtt5, first, data, start, end, stop)
    if isinstance(head, BadPublish):
        return head
    topic, qos, packet_id, properties, at = head
    kept = properties if at <= end else b""
    return Oversized(topic, qos, packet_id, first & 1 == 1, kept, stop - at, stop - start)


def _publish_head(mqtt5: bool, first: int, data: bytes, start: int, end: int,
                  stop: int) -> tuple[str, int, int, bytes, int] | BadPublish:
    """A PUBLISH's topic, QoS, packet id and properties (cut short when they run past ``end``, all that is here
    of a body that ends at ``stop``), and where its payload starts; or a BadPublish for a topic that is no
    valid topic name."""
    qos = first >> 1 & 3
    if qos == 3:
        raise RemoteProtocolError("a PUBLISH with QoS 3")
    if start + 2 > end:
        raise RemoteProtocolError("a PUBLISH too short for its topic length")
    at = start + 2 + (data[start] << 8 | data[start + 1])
    topic = data[start + 2:at]
    packet_id = 0
    if qos:
        if at + 2 > end:
            raise RemoteProtocolError("a PUBLISH too short for its packet id")
        packet_id = data[at] << 8 | data[at + 1]
        at += 2
        if not packet_id:
            raise RemoteProtocolError("a PUBLISH with packet id 0")
    properties = b""
    if mqtt5:
        if at >= end:
            raise RemoteProtocolError("a PUBLISH too short for its properties")
        length = data[at]
        if length < 0x80:
            at += 1
        else:
            length, at = decode_varint(data, at, end)
        properties = data[at:at + length]
        at += length
    if at > stop:
        raise RemoteProtocolError("a PUBLISH shorter than its own lengths")
    try:
        text = topic.decode()
    except UnicodeDecodeError:
        text = "\x00"  # refused below, with the reason
    if "\x00" in text or "+" in text or "#" in text or not text:
        return BadPublish(topic, qos, packet_id, topic_name_problem(topic) or "")
    return text, qos, packet_id, properties, at


def decode(protocol: int, first: int, data: bytes, start: int, end: int) -> Packet:
    """Any packet, either way; the session checks it is one a broker may send."""
    kind = first >> 4
    if kind != PUBLISH and first & 0x0F != _FLAGS.get(kind, 0):
        raise RemoteProtocolError(f"packet type {kind} with reserved flags 0x{first & 0x0F:X}")
    mqtt5 = protocol == MQTT_5
    if kind == PUBLISH:
        return decode_publish(mqtt5, first, data, start, end)
    if kind == PUBACK:
        return _decode_puback(mqtt5, data, start, end)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise RemoteProtocolError(f"packet type {kind} is not supported (QoS 2 and AUTH are not used)")
    return decoder(mqtt5, data, start, end)


def _decode_puback(mqtt5: bool, data: bytes, start: int, end: int) -> PubAck:
    length = end - start
    if length == 2:
        return puback_event(data[start] << 8 | data[start + 1], 0)
    if not mqtt5 or length < 2:
        raise RemoteProtocolError(f"a PUBACK of {length} bytes")
    if length > 3:
        _read_properties(data, start + 3, end)  # checked, not kept: a reason string says nothing to a program
    return puback_event(data[start] << 8 | data[start + 1], data[start + 2])


def _nothing_after(at: int, end: int, what: str) -> None:
    if at != end:
        raise RemoteProtocolError(f"{end - at} bytes too many in a {what}")


def _decode_connack(mqtt5: bool, data: bytes, start: int, end: int) -> ConnAck:
    if end - start < 2 or data[start] > 1:
        raise RemoteProtocolError("a malformed CONNACK")
    session_present, code = data[start] == 1, data[start + 1]
    if not mqtt5:
        _nothing_after(start + 2, end, "CONNACK")
        if code not in V311_CONNACK:
            raise RemoteProtocolError(f"an MQTT 3.1.1 CONNACK with return code {code}")
        return ConnAck(session_present, V311_CONNACK[code])
    properties, at = _read_properties(data, start + 2, end)
    _nothing_after(at, end, "CONNACK")
    return ConnAck(session_present, code, properties.get(RECEIVE_MAXIMUM, 65535),
                   properties.get(MAXIMUM_PACKET_SIZE), properties.get(SERVER_KEEPALIVE),
                   properties.get(REASON_STRING), properties.get(ASSIGNED_CLIENT_ID))


def _numbered(mqtt5: bool, data: bytes, start: int, end: int) -> tuple[int, int]:
    """A (UN)SUBSCRIBE or (UN)SUBACK's packet id, and where what follows its properties starts."""
    packet_id = _two(data, start, end)
    at = start + 2
    if mqtt5:
        _, at = _read_properties(data, at, end)
    return packet_id, at


def _acked(mqtt5: bool, data: bytes, start: int, end: int) -> tuple[int, bytes]:
    """A SUBACK or UNSUBACK's packet id and reason codes."""
    packet_id, at = _numbered(mqtt5, data, start, end)
    return packet_id, data[at:end]


def _decode_suback(mqtt5: bool, data: bytes, start: int, end: int) -> SubAck:
    packet_id, reasons = _acked(mqtt5, data, start, end)
    if not reasons:
        raise RemoteProtocolError("a SUBACK without reason codes")
    return SubAck(packet_id, tuple(reasons))


def _decode_unsuback(mqtt5: bool, data: bytes, start: int, end: int) -> UnsubAck:
    packet_id, reasons = _acked(mqtt5, data, start, end)
    if not mqtt5:
        _nothing_after(start + 2, end, "UNSUBACK")
    return UnsubAck(packet_id, tuple(reasons))


def _decode_pingresp(mqtt5: bool, data: bytes, start: int, end: int) -> PingResp:
    _nothing_after(start, end, "PINGRESP")
    return PingResp()


def _decode_pingreq(mqtt5: bool, data: bytes, start: int, end: int) -> PingReq:
    _nothing_after(start, end, "PINGREQ")
    return PingReq()


def _decode_disconnect(mqtt5: bool, data: bytes, start: int, end: int) -> Disconnect:
    if start == end:
        return Disconnect()
    if not mqtt5:
        raise RemoteProtocolError("an MQTT 3.1.1 DISCONNECT with a body")
    properties: dict[int, Any] = {}
    if end - start > 1:
        properties, at = _read_properties(data, start + 1, end)
        _nothing_after(at, end, "DISCONNECT")
    return Disconnect(data[start], properties.get(REASON_STRING), properties.get(SESSION_EXPIRY))


def _decode_connect(mqtt5: bool, data: bytes, start: int, end: int) -> Connect:
    name, at = decode_binary(data, start, end)
    if name != b"MQTT" or at + 4 > end or data[at] != (MQTT_5 if mqtt5 else MQTT_311):
        raise RemoteProtocolError("a CONNECT for another protocol or version")
    flags, keepalive = data[at + 1], _two(data, at + 2, end)
    at += 4
    properties: dict[int, Any] = {}
    if mqtt5:
        properties, at = _read_properties(data, at, end)
    client_id, at = decode_string(data, at, end)
    will = None
    if flags & 0x04:
        if mqtt5:
            _, at = _read_properties(data, at, end)
        topic, at = decode_string(data, at, end)
        payload, at = decode_binary(data, at, end)
        will = Will(topic, payload, flags >> 3 & 3, bool(flags & 0x20))
    username = password = None
    if flags & 0x80:
        username, at = decode_string(data, at, end)
    if flags & 0x40:
        raw, at = decode_binary(data, at, end)
        password = raw.decode("utf-8", "surrogateescape")  # binary data: any bytes
    _nothing_after(at, end, "CONNECT")
    return Connect(client_id, bool(flags & 0x02), keepalive, properties.get(SESSION_EXPIRY),
                   properties.get(RECEIVE_MAXIMUM), username, password, will)


def _decode_subscribe(mqtt5: bool, data: bytes, start: int, end: int) -> Subscribe:
    packet_id, at = _numbered(mqtt5, data, start, end)
    subscriptions = []
    while at < end:
        topic_filter, at = decode_string(data, at, end)
        if at >= end:
            raise RemoteProtocolError("a SUBSCRIBE filter without options")
        options = data[at]
        at += 1
        if options & 3 == 3 or options >> 4 & 3 == 3 or options & 0xC0:
            raise RemoteProtocolError(f"subscription options 0x{options:02X}")
        subscriptions.append(Subscription(topic_filter, options & 3, bool(options & 4), options >> 4 & 3))
    if not subscriptions:
        raise RemoteProtocolError("a SUBSCRIBE without filters")
    return Subscribe(packet_id, tuple(subscriptions))


def _decode_unsubscribe(mqtt5: bool, data: bytes, start: int, end: int) -> Unsubscribe:
    packet_id, at = _numbered(mqtt5, data, start, end)
    filters = []
    while at < end:
        topic_filter, at = decode_string(data, at, end)
        filters.append(topic_filter)
    if not filters:
        raise RemoteProtocolError("an UNSUBSCRIBE without filters")
    return Unsubscribe(packet_id, tuple(filters))


_DECODERS: dict[int, Callable[[bool, bytes, int, int], Packet]] = {
    CONNECT: _decode_connect, CONNACK: _decode_connack, SUBSCRIBE: _decode_subscribe, SUBACK: _decode_suback,
    UNSUBSCRIBE: _decode_unsubscribe, UNSUBACK: _decode_unsuback, PINGREQ: _decode_pingreq,
    PINGRESP: _decode_pingresp, DISCONNECT: _decode_disconnect,
}
