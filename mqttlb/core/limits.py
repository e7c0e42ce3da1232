"""What the broker refuses, measured before the router publishes.

Mosquitto drops a client whose PUBLISH breaks one of its limits, and the
publish is sent again on the next connection: one forward that breaks a limit
would stop every other forward for good. So each forward and dead letter is
measured against every limit the router can know before it is published:

* a topic's bytes (65,535: MQTT's own) and levels (Mosquitto 2.0 refuses more
  than 200 separators, 201 levels: measured, it answers "Protocol error");
* the whole packet against the broker's Maximum Packet Size: the one its
  MQTT 5 CONNACK names, or ``broker.max_packet_size`` (the only way to know it
  with MQTT 3.1.1), whichever is smaller; and always against MQTT's own
  largest packet, which a broker with no limit of its own takes from a
  device, leaving the router no room to add a forward's topic and properties;
* UTF-8 rules: device topics were accepted by the broker already, keys are
  checked when extracted, and the text the router adds of its own (a dead
  letter's reason) is made plain ASCII here.

What the router cannot know (another broker's limits) is left to the poison
guard in ``poison``. Pure: sizes are computed, nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from .topics import MAX_TOPIC_BYTES

MAX_TOPIC_SEPARATORS = 200
"""Mosquitto 2.0 drops a client that publishes to a topic with more ``/`` than this."""
MQTT_MAX_PACKET = 1 + 4 + 268_435_455
"""The largest packet MQTT can frame: a fixed header of 1 + 4 bytes, and at most 268,435,455 after it."""

UserProperties = tuple[tuple[str, str], ...]

_MOST_HEADERS = 13
"""A PUBLISH's bytes besides its topic's, payload's and properties' own, at most: the fixed header (1 + a length
of up to 4), the topic's length (2), a packet id (2), the properties' length (up to 4)."""
_MOST_PER_PROPERTY = 5
"""A user property's bytes besides its name's and value's: its identifier (1) and their two lengths (2 + 2)."""


def _variable_int_size(value: int) -> int:
    size = 1
    while value >= 128:
        value >>= 7
        size += 1
    return size


def _text_size(text: str) -> int:
    return 2 + len(text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """The limits of the broker the router publishes to, as far as it knows them."""

    mqtt5: bool = True
    max_packet_size: int | None = None
    """Bytes of a whole packet; None: not known, and only ``MQTT_MAX_PACKET`` applies."""

    def topic_problem(self, topic: str) -> str | None:
        """Why the broker would refuse a PUBLISH to ``topic``, or None."""
        size = len(topic.encode("utf-8"))
        if size > MAX_TOPIC_BYTES:
            return f"topic of {size} bytes, over MQTT's {MAX_TOPIC_BYTES}"
        separators = topic.count("/")
        if separators > MAX_TOPIC_SEPARATORS:
            return f"topic of {separators + 1} levels, over the broker's {MAX_TOPIC_SEPARATORS + 1}"
        return None

    def packet_size(self, topic: str, payload: int, qos: int, inbound_properties: int,
                    user: UserProperties) -> int:
        """The bytes of a PUBLISH: ``payload`` and ``inbound_properties`` are sizes, ``user`` what is added."""
        remaining = _text_size(topic) + (2 if qos else 0) + payload
        if self.mqtt5:
            properties = inbound_properties + sum(1 + _text_size(name) + _text_size(value) for name, value in user)
            remaining += _variable_int_size(properties) + properties
        return 1 + _variable_int_size(remaining) + remaining

    def surely_fits(self, topic: str, payload: int, inbound_properties: int, user: UserProperties) -> bool:
        """Whether such a PUBLISH (as ``packet_size`` takes it) is within the maximum packet size however its text
        encodes: a bound, from the text's length in characters, for a tenth of the cost of ``packet_size``, which
        encodes every string. Forwards far below the limit, the usual ones, are measured no further. Without a
        known limit nothing is measured: a forward over MQTT's own is refused as too large by the session."""
        if self.max_packet_size is None:
            return True
        chars = len(topic)
        for name, value in user:
            chars += len(name) + len(value)
        return 4 * chars + payload + inbound_properties + _MOST_HEADERS + _MOST_PER_PROPERTY * len(user) \
            <= self.max_packet_size  # UTF-8 takes at most 4 bytes a character

    def size_problem(self, size: int) -> str | None:
        """Why the broker would refuse a packet of ``size`` bytes, or None."""
        if self.max_packet_size is not None and size > self.max_packet_size:
            return f"{size} bytes, over the broker's maximum packet size of {self.max_packet_size}"
        if size > MQTT_MAX_PACKET:
            return f"{size} bytes, over MQTT's largest packet of {MQTT_MAX_PACKET}"
        return None


def plain(text: str) -> str:
    """``text`` as printable ASCII, escaped where needed: safe in any broker's UTF-8 string."""
    return text.encode("ascii", "backslashreplace").decode("ascii").translate(_CONTROLS)


_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}
