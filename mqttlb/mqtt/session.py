"""One MQTT client connection as a state machine: calls in, bytes out; bytes in, events out.

No sockets, threads or clock, after h11: whoever owns the socket writes what the calls return,
feeds what it reads to ``receive_data`` and acts on ``events()``. Everything that makes the
state lives here:

1. ``connect()`` starts a connection: the parser forgets any bytes of the last one and nothing
   may be sent but CONNECT until a successful CONNACK (``connected``). The broker must answer
   CONNACK first, once; anything else is a ``RemoteProtocolError``.
2. Packet ids run 1..65535 and skip those still in use: an id is taken by a QoS 1 publish, a
   SUBSCRIBE or an UNSUBSCRIBE and given back by its ack. ``connect(clean_start=True)`` frees them
   all; ``connect(clean_start=False)`` keeps the publishes' (the session goes on and the caller
   sends them again with ``republish``) and frees the rest, whose acks cannot come any more.
3. The broker's Receive Maximum and Maximum Packet Size come from CONNACK. The first is reported
   (``send_quota``) for the caller to keep to; the second is enforced, as a publish over it would
   cost the connection.
4. An error of ours (``LocalProtocolError``) changes nothing. An error of the broker's
   (``RemoteProtocolError``) breaks the session: ``events()`` raises it again until ``connect()``.
5. Only QoS 0 and 1: a QoS 2 PUBLISH or any QoS 2 ack from the broker is a ``RemoteProtocolError``
   (a client that never subscribes at QoS 2 never gets one).
6. ``max_incoming`` bounds what is held of a PUBLISH: one whose body is longer is reported as
   ``Oversized`` once its head is in (``codec.KEPT_HEAD``), and the rest of it is skipped as it
   comes, never buffered. A broker with no limit of its own passes a device's message of up to
   256 MiB, which held whole (and copied to decode it) took the router's memory three times over:
   killed for it, the router would be sent the same message again on every restart. Any other
   packet over it is a ``RemoteProtocolError``: no broker sends one.

Inbound PUBLISH properties are not decoded (``Publish.properties`` holds them as they came): the
router passes them on, and a worker decodes its user properties with ``codec.user_properties``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .codec import (
    KEPT_HEAD,
    MAX_PACKET_ID,
    MAX_REMAINING_LENGTH,
    MQTT_5,
    PINGREQ_PACKET,
    PROTOCOLS,
    PUBLISH,
    SUBSCRIBE,
    UNSUBSCRIBE,
    decode,
    decode_oversized,
    decode_publish,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    encode_topic_name,
    encode_unsubscribe,
    frame,
)
from .errors import LocalProtocolError, PacketTooLarge, RemoteProtocolError
from .events import (
    BadPublish,
    ConnAck,
    Disconnect,
    Event,
    Oversized,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscription,
    UnsubAck,
    Will,
    puback_event,
)

_SERVER_PACKETS = (ConnAck, Publish, BadPublish, PubAck, SubAck, UnsubAck, PingResp, Disconnect)


class Session:
    """See the module docstring."""

    def __init__(self, protocol: int = MQTT_5, max_incoming: int = MAX_REMAINING_LENGTH) -> None:
        """``max_incoming``: the longest packet body (Remaining Length) held whole (rule 6)."""
        if protocol not in PROTOCOLS:
            raise LocalProtocolError(f"protocol {protocol!r}: 4 (MQTT 3.1.1) or 5 (MQTT 5)")
        self.protocol = protocol
        self.max_incoming = max(max_incoming, KEPT_HEAD)
        self._skipping = 0
        """Bytes still to come of an ``Oversized`` PUBLISH, dropped as they arrive (rule 6)."""
        self.connected = False
        """A successful CONNACK came on the current connection."""
        self.receive_maximum = 65535
        """The most QoS 1 publishes the broker takes unacknowledged, from its CONNACK."""
        self.maximum_packet_size: int | None = None
        self.server_keepalive: int | None = None
        self._mqtt5 = protocol == MQTT_5
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._needed = 1
        """Bytes the buffer must hold before a packet can be complete."""
        self._broken: RemoteProtocolError | None = None
        self._in_use: dict[int, int] = {}
        """Packet id -> the type of the packet that took it."""
        self._next_id = 1
        self._publishes = 0

    # -- calls: bytes to send -----------------------------------------------------------------------------

    def connect(self, client_id: str, *, clean_start: bool, keepalive: int, session_expiry: int | None = None,
                receive_maximum: int | None = None, username: str | None = None, password: str | None = None,
                will: Will | None = None) -> bytes:
        """CONNECT, for a new connection (rule 1). ``session_expiry`` and ``receive_maximum`` are MQTT 5's."""
        packet = encode_connect(self.protocol, client_id, clean_start=clean_start, keepalive=keepalive,
                                session_expiry=session_expiry, receive_maximum=receive_maximum,
                                username=username, password=password, will=will)
        self.connected = False
        self._chunks, self._buffered, self._needed, self._broken, self._skipping = [], 0, 1, None, 0
        self._in_use = {} if clean_start else {pid: kind for pid, kind in self._in_use.items() if kind == PUBLISH}
        self._publishes = len(self._in_use)
        self.receive_maximum, self.maximum_packet_size, self.server_keepalive = 65535, None, None
        return packet

    def publish(self, topic: str | bytes, payload: bytes, qos: int = 0, *, retain: bool = False,
                properties: bytes = b"") -> tuple[int, bytes]:
        """PUBLISH: (its packet id, 0 at QoS 0; its bytes).

        ``topic`` as bytes is taken as already checked and encoded; as str it is checked.
        ``properties`` is the content of an MQTT 5 property block, encoded; ignored with MQTT 3.1.1.
        """
        if not self.connected:
            raise LocalProtocolError("publish before a successful CONNACK")
        if topic.__class__ is not bytes:
            topic = encode_topic_name(topic)  # type: ignore[arg-type]
        if qos == 0:
            packet_id = 0
        elif qos == 1:
            packet_id = self._take_id(PUBLISH)
            self._publishes += 1
        else:
            raise LocalProtocolError(f"QoS {qos}: this client publishes at QoS 0 or 1")
        try:
            packet = encode_publish(self.protocol, topic, payload, qos, packet_id, retain, False, properties)
        except LocalProtocolError as error:  # the topic and properties are encoded: only a length can overflow
            self._give_back(packet_id)
            raise PacketTooLarge(f"a PUBLISH of over {MAX_REMAINING_LENGTH} bytes after its fixed header: more "
                                 f"than MQTT can frame") from error
        if self.maximum_packet_size is not None and len(packet) > self.maximum_packet_size:
            raise self._too_large(packet_id, packet)
        return packet_id, packet

    def republish(self, packet_id: int, topic: str | bytes, payload: bytes, *, retain: bool = False,
                  properties: bytes = b"") -> bytes:
        """A QoS 1 PUBLISH sent before and not acknowledged, again with its packet id and DUP (rule 2).

        PacketTooLarge when the broker names a smaller Maximum Packet Size now than when it was first sent:
        its packet id is freed, as sending it would cost the connection on every reconnect.
        """
        if not self.connected:
            raise LocalProtocolError("publish before a successful CONNACK")
        if self._in_use.get(packet_id) != PUBLISH:
            raise LocalProtocolError(f"packet id {packet_id} is not an unacknowledged publish")
        if topic.__class__ is not bytes:
            topic = encode_topic_name(topic)  # type: ignore[arg-type]
        packet = encode_publish(self.protocol, topic, payload, 1, packet_id, retain, True, properties)
        if self.maximum_packet_size is not None and len(packet) > self.maximum_packet_size:
            raise self._too_large(packet_id, packet)
        return packet

    def _too_large(self, packet_id: int, packet: bytes) -> PacketTooLarge:
        """A PUBLISH over the broker's Maximum Packet Size: not sent, so its packet id is given back."""
        self._give_back(packet_id)
        return PacketTooLarge(f"a PUBLISH of {len(packet)} bytes: the broker's Maximum Packet Size is "
                              f"{self.maximum_packet_size}")

    def puback(self, packet_id: int, reason: int = 0) -> bytes:
        """PUBACK for an inbound QoS 1 PUBLISH (``reason`` is MQTT 5's; 3.1.1 has none)."""
        if not self.connected:
            raise LocalProtocolError("PUBACK before a successful CONNACK")
        if not 0 < packet_id <= MAX_PACKET_ID or not 0 <= reason <= 0xFF:
            raise LocalProtocolError(f"PUBACK for packet id {packet_id} with reason {reason}")
        return encode_puback(self.protocol, packet_id, reason)

    def pubacks(self, packet_ids: Sequence[int]) -> bytes:
        """PUBACKs of success for inbound QoS 1 PUBLISHes, in order, as one piece."""
        return b"".join([self.puback(packet_id) for packet_id in packet_ids])

    def subscribe(self, subscriptions: Sequence[Subscription]) -> tuple[int, bytes]:
        """SUBSCRIBE, at QoS 0 or 1 (rule 5)."""
        if any(subscription.qos > 1 for subscription in subscriptions):
            raise LocalProtocolError("QoS 2: this client subscribes at QoS 0 or 1")
        return self._numbered(SUBSCRIBE, lambda packet_id: encode_subscribe(self.protocol, packet_id, subscriptions))

    def unsubscribe(self, filters: Sequence[str]) -> tuple[int, bytes]:
        return self._numbered(UNSUBSCRIBE, lambda packet_id: encode_unsubscribe(self.protocol, packet_id, filters))

    def _numbered(self, kind: int, encode: Callable[[int], bytes]) -> tuple[int, bytes]:
        """A SUBSCRIBE or UNSUBSCRIBE with a packet id of its own; the id is given back if it cannot be sent."""
        if not self.connected:
            raise LocalProtocolError("SUBSCRIBE or UNSUBSCRIBE before a successful CONNACK")
        packet_id = self._take_id(kind)
        try:
            return packet_id, encode(packet_id)
        except LocalProtocolError:
            self._give_back(packet_id)
            raise

    def ping(self) -> bytes:
        if not self.connected:
            raise LocalProtocolError("PINGREQ before a successful CONNACK")
        return PINGREQ_PACKET

    def disconnect(self, reason: int = 0, session_expiry: int | None = None) -> bytes:
        """DISCONNECT; reason 0 means no will. The caller closes the socket after sending it."""
        packet = encode_disconnect(self.protocol, reason, session_expiry=session_expiry)
        self.connected = False
        return packet

    def closed(self) -> None:
        """The connection ended without a DISCONNECT of ours: nothing may be sent until ``connect()``."""
        self.connected = False

    # -- state ----------------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Packet ids in use: QoS 1 publishes, SUBSCRIBEs and UNSUBSCRIBEs not acknowledged yet."""
        return len(self._in_use)

    @property
    def send_quota(self) -> int:
        """How many more QoS 1 publishes the broker's Receive Maximum allows now (may go below 0)."""
        return self.receive_maximum - self._publishes

    def _take_id(self, kind: int) -> int:
        in_use = self._in_use
        if len(in_use) >= MAX_PACKET_ID:
            raise LocalProtocolError("all 65535 packet ids are in use")
        packet_id = self._next_id
        while packet_id in in_use:
            packet_id = packet_id % MAX_PACKET_ID + 1
        self._next_id = packet_id % MAX_PACKET_ID + 1
        in_use[packet_id] = kind
        return packet_id

    def _give_back(self, packet_id: int) -> None:
        """Free a packet id: its packet was acknowledged, or never sent (the PUBACK fast path in ``events``
        does the same inline)."""
        if self._in_use.pop(packet_id, 0) == PUBLISH:
            self._publishes -= 1

    # -- bytes in, events out -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the connection; ``events()`` decodes them."""
        if self._skipping:
            skipped = min(self._skipping, len(data))
            self._skipping -= skipped
            data = data[skipped:]
        if data:
            self._chunks.append(bytes(data))
            self._buffered += len(data)

    def events(self) -> list[Event]:
        """Every complete packet received, decoded, in order; raises RemoteProtocolError on a broken one."""
        if self._broken is not None:
            raise self._broken
        if self._buffered < self._needed:
            return []
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        end = len(data)
        at = 0
        needed = 1
        out: list[Event] = []
        append = out.append
        mqtt5 = self._mqtt5
        connected = self.connected
        in_use = self._in_use
        max_incoming = self.max_incoming
        try:
            while at < end:
                if at + 2 > end:
                    needed = 2
                    break
                first = data[at]
                length = data[at + 1]
                if length < 0x80:
                    start = at + 2
                    stop = start + length
                else:
                    framed = frame(data, at, end)
                    if framed is None:
                        needed = end - at + 1
                        break
                    start, stop = framed
                if stop - start > max_incoming:
                    head = start + KEPT_HEAD
                    if head > end:
                        needed = head - at
                        break
                    append(self._oversized(first, data, start, head, stop))
                    self._skipping = stop - end if stop > end else 0
                    at = min(stop, end)
                    continue
                if stop > end:
                    needed = stop - at
                    break
                if first >> 4 == PUBLISH and connected:
                    if first & 0x06 == 0x04:
                        raise RemoteProtocolError("a PUBLISH at QoS 2, which this client never subscribes at")
                    append(decode_publish(mqtt5, first, data, start, stop))
                elif first == 0x40 and length == 2 and connected:  # a PUBACK of success
                    packet_id = data[start] << 8 | data[start + 1]
                    if in_use.pop(packet_id, 0) == PUBLISH:
                        self._publishes -= 1
                    append(puback_event(packet_id, 0))
                else:
                    append(self._other(first, data, start, stop))
                    connected = self.connected
                at = stop
        except RemoteProtocolError as error:
            self._broken = error
            raise
        rest = data[at:]
        self._chunks = [rest] if rest else []
        self._buffered = len(rest)
        self._needed = needed
        return out

    def _oversized(self, first: int, data: bytes, start: int, head: int, stop: int) -> Oversized | BadPublish:
        """A packet longer than ``max_incoming``, of which ``data[start:head]`` is here (rule 6)."""
        if first >> 4 != PUBLISH or not self.connected:
            raise RemoteProtocolError(f"a packet of type {first >> 4} and {stop - start} bytes, over the "
                                      f"{self.max_incoming} this client takes")
        if first & 0x06 == 0x04:
            raise RemoteProtocolError("a PUBLISH at QoS 2, which this client never subscribes at")
        return decode_oversized(self._mqtt5, first, data, start, head, stop)

    def _other(self, first: int, data: bytes, start: int, stop: int) -> Event:
        """Any packet but a PUBLISH or a plain PUBACK on an open connection, checked against the state."""
        packet = decode(self.protocol, first, data, start, stop)
        if not isinstance(packet, _SERVER_PACKETS):
            raise RemoteProtocolError(f"the broker sent a client's packet: {type(packet).__name__}")
        if isinstance(packet, ConnAck):
            if self.connected:
                raise RemoteProtocolError("a second CONNACK")
            self.connected = packet.success
            self.receive_maximum = packet.receive_maximum
            self.maximum_packet_size = packet.maximum_packet_size
            self.server_keepalive = packet.server_keepalive
        elif not self.connected:
            raise RemoteProtocolError(f"{type(packet).__name__} before a successful CONNACK")
        elif isinstance(packet, (PubAck, SubAck, UnsubAck)):
            self._give_back(packet.packet_id)
        elif isinstance(packet, Disconnect):
            self.connected = False
        return packet
