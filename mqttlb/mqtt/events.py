"""What the session reports (events) and the values callers hand it, all frozen and slotted.

The first group is what a broker sends a client, as ``Session.events()`` returns it. The second group is
what a client sends, as ``codec.decode`` reads it for a server (the tests' broker double): the session
itself never decodes those.

``Publish`` and ``PubAck`` are made for every message the router moves, and a frozen dataclass's own
``__init__`` spends most of its time in ``object.__setattr__`` (2.7 µs for a Publish, against 0.9 µs here):
the decoder builds them through ``publish_event`` and ``puback_event``, which fill an unfrozen twin with
the same slots and then give the object its frozen class. The result is an ordinary, equal, immutable
event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason: int
    """MQTT 5's reason code; an MQTT 3.1.1 return code is given as its MQTT 5 counterpart."""
    receive_maximum: int = 65535
    """How many QoS 1 publishes the broker takes unacknowledged: reported, not enforced by the session."""
    maximum_packet_size: int | None = None
    server_keepalive: int | None = None
    """The keep-alive the broker imposes in place of the one CONNECT asked for."""
    reason_string: str | None = None
    assigned_client_id: str | None = None

    @property
    def success(self) -> bool:
        return self.reason < 0x80


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int
    """0 at QoS 0."""
    retain: bool
    dup: bool
    properties: bytes = b""
    """The MQTT 5 property block's content as it came (no length prefix), undecoded; b"" with MQTT 3.1.1."""


@dataclass(frozen=True, slots=True)
class Oversized:
    """A PUBLISH over the most the session takes whole (``Session(max_incoming=...)``): its head, and its size.

    Its payload was never held: the session reads past it as it comes, so one device's huge message costs the
    router no more memory than a small one. ``properties`` are b"" when they were too long to keep
    (``codec.KEPT_HEAD``)."""

    topic: str
    qos: int
    packet_id: int
    retain: bool
    properties: bytes
    payload_size: int
    size: int
    """The whole packet's bytes after its fixed header (MQTT's Remaining Length)."""


@dataclass(frozen=True, slots=True)
class BadPublish:
    """A PUBLISH whose topic is not a valid MQTT topic name (invalid UTF-8, a NUL, a wildcard, empty).

    The rest of the packet was sound, so the caller can acknowledge it (``packet_id``) and count it: one
    device's bad topic must not cost the connection, which the broker would answer by sending it again.
    """

    topic: bytes
    qos: int
    packet_id: int
    detail: str


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int
    reason: int = 0


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    reasons: tuple[int, ...]
    """One per filter: the QoS granted (0, 1, 2) or a failure (>= 0x80)."""


@dataclass(frozen=True, slots=True)
class UnsubAck:
    packet_id: int
    reasons: tuple[int, ...] = ()
    """One per filter with MQTT 5; MQTT 3.1.1 names none."""


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A DISCONNECT: from the broker (MQTT 5 only), or from a client as a server decodes it."""

    reason: int = 0
    reason_string: str | None = None
    session_expiry: int | None = None


Event = ConnAck | Publish | Oversized | BadPublish | PubAck | SubAck | UnsubAck | PingResp | Disconnect


# -- what a client hands the session --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Subscription:
    filter: str
    qos: int
    no_local: bool = False
    """MQTT 5: do not receive our own publishes."""
    retain_handling: int = 0
    """MQTT 5: 0 send retained messages on subscribe, 1 only on a new subscription, 2 never."""


# -- what a client sends, decoded for a server ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    clean_start: bool
    keepalive: int
    session_expiry: int | None = None
    receive_maximum: int | None = None
    username: str | None = None
    password: str | None = None
    will: Will | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PingReq:
    pass


Packet = Event | Connect | Subscribe | Unsubscribe | PingReq


class _PublishTwin:
    __slots__ = Publish.__slots__

    def __init__(self, topic: str, payload: bytes, qos: int, packet_id: int, retain: bool, dup: bool,
                 properties: bytes) -> None:
        self.topic, self.payload, self.qos, self.packet_id = topic, payload, qos, packet_id
        self.retain, self.dup, self.properties = retain, dup, properties
        self.__class__ = Publish  # type: ignore[assignment]


class _PubAckTwin:
    __slots__ = PubAck.__slots__

    def __init__(self, packet_id: int, reason: int) -> None:
        self.packet_id, self.reason = packet_id, reason
        self.__class__ = PubAck  # type: ignore[assignment]


publish_event = cast(Callable[[str, bytes, int, int, bool, bool, bytes], Publish], _PublishTwin)
"""``Publish(...)`` three times faster (positional arguments only)."""
puback_event = cast(Callable[[int, int], PubAck], _PubAckTwin)
"""``PubAck(...)``, faster."""
