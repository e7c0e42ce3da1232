"""The sans-I/O session against a broker double in memory: no socket, no thread, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttlb.mqtt import (
    BadPublish,
    ConnAck,
    Disconnect,
    LocalProtocolError,
    Oversized,
    PingResp,
    PubAck,
    Publish,
    RemoteProtocolError,
    Session,
    SubAck,
    Subscription,
    UnsubAck,
    codec,
    encode_user_properties,
    user_properties,
)
from mqttlb.mqtt.errors import PacketTooLarge
from mqttlb.mqtt.events import Connect, Packet, PingReq, Subscribe, Unsubscribe


class Broker:
    """Just enough of a broker: CONNACK, SUBACK, UNSUBACK, PUBACK for QoS 1, PINGRESP, and each PUBLISH
    echoed to the subscribers whose filter is the topic or ends in '#' over it (QoS 1 when subscribed so)."""

    def __init__(self, protocol: int, **connack: int) -> None:
        self.protocol, self.connack = protocol, connack
        self.filters: dict[str, int] = {}
        self.received: list[Packet] = []
        self.next_id = 1000

    def feed(self, data: bytes) -> bytes:
        out, at = [], 0
        while (framed := codec.frame(data, at, len(data))) is not None:
            packet = codec.decode(self.protocol, data[at], data, *framed)
            self.received.append(packet)
            out.append(self.answer(packet))
            at = framed[1]
        assert at == len(data)
        return b"".join(out)

    def answer(self, packet: Packet) -> bytes:
        p = self.protocol
        if isinstance(packet, Connect):
            return codec.encode_connack(p, False, 0, **self.connack)
        if isinstance(packet, Subscribe):
            self.filters.update((s.filter, s.qos) for s in packet.subscriptions)
            return codec.encode_suback(p, packet.packet_id, [s.qos for s in packet.subscriptions])
        if isinstance(packet, Unsubscribe):
            for topic_filter in packet.filters:
                self.filters.pop(topic_filter, None)
            return codec.encode_unsuback(p, packet.packet_id, [0] * len(packet.filters) if p == 5 else [])
        if isinstance(packet, PingReq):
            return codec.PINGRESP_PACKET
        if isinstance(packet, Publish):
            ack = codec.encode_puback(p, packet.packet_id) if packet.qos else b""
            return ack + b"".join(self.deliver(packet, qos) for f, qos in self.filters.items()
                                  if f == packet.topic or (f.endswith("#") and packet.topic.startswith(f[:-1])))
        return b""

    def deliver(self, packet: Publish, qos: int) -> bytes:
        qos = min(qos, packet.qos)
        self.next_id += 1
        return codec.encode_publish(self.protocol, packet.topic.encode(), packet.payload, qos,
                                    self.next_id if qos else 0, False, False, packet.properties)


def connected(protocol: int = 5, **connack: int) -> tuple[Session, Broker]:
    session, broker = Session(protocol), Broker(protocol, **connack)
    session.receive_data(broker.feed(session.connect("client", clean_start=True, keepalive=30)))
    [ack] = session.events()
    assert isinstance(ack, ConnAck) and session.connected
    return session, broker


def exchange(session: Session, broker: Broker, data: bytes) -> list[object]:
    session.receive_data(broker.feed(data))
    return list(session.events())


@pytest.mark.parametrize("protocol", [4, 5])
def test_subscribe_publish_receive_and_acknowledge(protocol: int) -> None:
    session, broker = connected(protocol)
    packet_id, data = session.subscribe([Subscription("devices/#", 1)])
    assert exchange(session, broker, data) == [SubAck(packet_id, (1,))]
    user = encode_user_properties([("mqttlb-key", "dev\ufeff1")]) if protocol == 5 else b""
    mid, data = session.publish("devices/1", b"hello", 1, properties=user)
    assert session.in_flight == 1
    ack, echo = exchange(session, broker, data)
    assert ack == PubAck(mid, 0) and session.in_flight == 0
    assert isinstance(echo, Publish) and (echo.topic, echo.payload, echo.qos) == ("devices/1", b"hello", 1)
    assert user_properties(echo.properties) == ((("mqttlb-key", "dev\ufeff1"),) if protocol == 5 else ())
    assert session.puback(echo.packet_id) == codec.encode_puback(protocol, echo.packet_id)
    assert session.pubacks([echo.packet_id, 7]) == session.puback(echo.packet_id) + session.puback(7)
    packet_id, data = session.unsubscribe(["devices/#"])
    assert exchange(session, broker, data) == [UnsubAck(packet_id, (0,) if protocol == 5 else ())]
    assert exchange(session, broker, session.ping()) == [PingResp()]


def test_packets_split_anywhere_come_out_whole_and_in_order() -> None:
    session, broker = connected()
    stream = b"".join(codec.encode_publish(5, b"t/%d" % n, bytes(n * 50), 1, n + 1) for n in range(10))
    events = []
    for index in range(len(stream)):  # one byte at a time
        session.receive_data(stream[index:index + 1])
        events += session.events()
    assert [(e.topic, len(e.payload)) for e in events if isinstance(e, Publish)] == [
        (f"t/{n}", n * 50) for n in range(10)]


def test_nothing_goes_out_before_connack() -> None:
    session = Session()
    for call in (lambda: session.publish("t", b""), lambda: session.subscribe([Subscription("t", 0)]),
                 session.ping, lambda: session.puback(1), lambda: session.pubacks([1])):
        with pytest.raises(LocalProtocolError):
            call()
    session.connect("c", clean_start=True, keepalive=0)
    session.receive_data(codec.encode_publish(5, b"t", b"", 0, 0))
    with pytest.raises(RemoteProtocolError):
        session.events()


def test_a_refusal_leaves_the_session_unconnected() -> None:
    session = Session(4)
    session.connect("c", clean_start=True, keepalive=0)
    session.receive_data(b"\x20\x02\x00\x05")
    assert session.events() == [ConnAck(False, 0x87)] and not session.connected


def test_packet_ids_skip_those_in_use_and_return_when_acknowledged() -> None:
    session, broker = connected()
    first, _ = session.publish("t", b"", 1)
    session._next_id = 65535
    last, _ = session.publish("t", b"", 1)
    wrapped, _ = session.publish("t", b"", 1)
    assert (first, last, wrapped) == (1, 65535, 2)  # 1 is still in use
    session.receive_data(codec.encode_puback(5, 1))
    assert session.events() == [PubAck(1)] and session.in_flight == 2


def test_the_broker_limits_are_reported_and_the_packet_size_enforced() -> None:
    session, _ = connected(receive_maximum=2, maximum_packet_size=64, server_keepalive=5)
    assert (session.receive_maximum, session.server_keepalive) == (2, 5)
    session.publish("t", b"", 1)
    assert session.send_quota == 1
    with pytest.raises(LocalProtocolError, match="Maximum Packet Size"):
        session.publish("t", bytes(64), 1)
    assert session.in_flight == 1  # the refused publish took no id


@pytest.mark.parametrize("protocol", [5, 4])
def test_a_publish_more_than_mqtt_can_frame_is_too_large_and_takes_no_id(protocol: int) -> None:
    """Without a Maximum Packet Size from the broker, MQTT's own framing is the limit: such a forward is refused
    as too large, which the router dead-letters, not as a local error it would crash on (a crash loop, since the
    message comes back after a restart)."""
    session, _ = connected(protocol)
    most = codec.MAX_REMAINING_LENGTH - 2 - 1 - 2 - (protocol == 5)  # a topic of one byte, a packet id, properties
    assert len(session.publish("t", bytes(most), 1)[1]) == 5 + codec.MAX_REMAINING_LENGTH
    with pytest.raises(PacketTooLarge, match="more than MQTT can frame"):
        session.publish("t", bytes(most + 1), 1)
    assert session.in_flight == 1


def test_a_persistent_reconnect_keeps_unacknowledged_publishes_for_republish() -> None:
    session, broker = connected()
    mid, _ = session.publish("t", b"x", 1)
    sub, _ = session.subscribe([Subscription("s", 1)])
    session.receive_data(broker.feed(session.connect("client", clean_start=False, keepalive=30)))
    session.events()
    assert session.in_flight == 1
    again = session.republish(mid, "t", b"x")
    assert again[0] == 0x3A  # QoS 1 with DUP
    assert exchange(session, broker, again) == [PubAck(mid)]
    session.receive_data(broker.feed(session.connect("client", clean_start=True, keepalive=30)))
    session.events()
    with pytest.raises(LocalProtocolError):
        session.republish(mid, "t", b"x")


def test_a_kept_publish_over_a_lower_maximum_packet_size_after_a_reconnect_is_refused_and_its_id_freed() -> None:
    """The broker may name a smaller Maximum Packet Size on any reconnect; a kept publish over it would cost the
    connection again on every reconnect."""
    session, _ = connected()
    mid, _ = session.publish("t", bytes(500), 1)
    session.connect("client", clean_start=False, keepalive=30)
    session.receive_data(codec.encode_connack(5, True, maximum_packet_size=100))
    session.events()
    assert session.in_flight == 1
    with pytest.raises(PacketTooLarge, match="Maximum Packet Size is 100"):
        session.republish(mid, "t", bytes(500))
    assert session.in_flight == 0 and session.send_quota == session.receive_maximum
    with pytest.raises(LocalProtocolError, match="not an unacknowledged publish"):
        session.republish(mid, "t", bytes(500))


@pytest.mark.parametrize("reason", [-1, 0x100])
def test_a_disconnect_reason_out_of_a_byte_is_our_mistake(reason: int) -> None:
    session, _ = connected()
    with pytest.raises(LocalProtocolError, match="reason"):
        session.disconnect(reason)


def test_a_receive_maximum_of_zero_is_never_sent() -> None:
    with pytest.raises(LocalProtocolError, match="0x21"):
        Session(5).connect("client", clean_start=True, keepalive=30, receive_maximum=0)


def test_a_bad_topic_from_the_broker_is_an_event_and_the_session_goes_on() -> None:
    session, _ = connected()
    session.receive_data(codec.encode_publish(5, b"a/\xff", b"x", 1, 7) + codec.encode_publish(5, b"ok", b"y", 0, 0))
    bad, good = session.events()
    assert isinstance(bad, BadPublish) and bad.packet_id == 7 and isinstance(good, Publish)


HUGE = 200 * 1024 * 1024
"""A payload Mosquitto takes from a device when it has no limit of its own (its default: MQTT's 256 MiB)."""


def fed_in_reads(session: Session, stream: bytes, read: int = 65536) -> tuple[list[object], int]:
    """The events of ``stream`` fed a socket read at a time, and the most bytes the session held meanwhile."""
    events: list[object] = []
    most = 0
    view = memoryview(stream)
    for at in range(0, len(stream), read):
        session.receive_data(view[at:at + read])
        most = max(most, session._buffered)  # noqa: SLF001 - what it holds is the point of the test
        events += session.events()
    return events, most


def huge_publish(protocol: int, qos: int, properties: bytes = b"", payload: int = HUGE) -> bytes:
    header = codec.encode_publish(protocol, b"devices/d1/telemetry", b"", qos, 7 if qos else 0,
                                  properties=properties)
    framed = codec.frame(header, 0, len(header))
    assert framed is not None
    start, stop = framed
    return bytes([header[0]]) + codec.encode_varint(stop - start + payload) + header[start:] + bytes(payload)


@pytest.mark.parametrize(("protocol", "qos"), [(5, 1), (4, 1), (5, 0)])
def test_a_publish_over_max_incoming_is_reported_without_its_payload_and_never_held(protocol: int, qos: int) -> None:
    """200 MiB from a device were held whole, then copied to decode: three times that in the router's memory,
    and a router killed for it was sent the message again on every restart."""
    session, _ = connected(protocol)
    session.max_incoming = 1 << 20
    user = encode_user_properties([("trace", "t1")]) if protocol == 5 else b""
    stream = huge_publish(protocol, qos, user) + codec.encode_publish(protocol, b"devices/d2/telemetry", b"after",
                                                                        qos, 8 if qos else 0)
    events, most = fed_in_reads(session, stream)
    assert most < codec.KEPT_HEAD + 2 * 65536
    big, after = events
    assert big == Oversized("devices/d1/telemetry", qos, 7 if qos else 0, False, user, HUGE,
                            len(stream) - len(after_bytes(protocol, qos)) - 5)
    assert isinstance(after, Publish) and after.payload == b"after"


def after_bytes(protocol: int, qos: int) -> bytes:
    return codec.encode_publish(protocol, b"devices/d2/telemetry", b"after", qos, 8 if qos else 0)


def test_properties_too_long_to_keep_are_left_out_and_the_size_still_told() -> None:
    session, _ = connected()
    session.max_incoming = 1 << 20
    user = encode_user_properties([("p", "x" * 50_000), ("q", "y" * 50_000), ("r", "z" * 50_000)])
    events, _ = fed_in_reads(session, huge_publish(5, 1, user, payload=2 << 20))
    [big] = events
    assert isinstance(big, Oversized) and big.properties == b"" and big.payload_size == 2 << 20
    assert big.size == 2 + len("devices/d1/telemetry") + 2 + len(codec.encode_varint(len(user))) + len(user) + (2 << 20)


def test_an_oversized_publish_whole_in_one_read_and_one_with_a_bad_topic() -> None:
    session, _ = connected()
    session.max_incoming = codec.KEPT_HEAD
    whole = huge_publish(5, 1, payload=codec.KEPT_HEAD + 10)
    bad = codec.encode_publish(5, b"a/\xff", bytes(codec.KEPT_HEAD + 10), 1, 9)
    session.receive_data(whole + bad + codec.encode_publish(5, b"ok", b"y", 0, 0))
    big, refused, good = session.events()
    assert isinstance(big, Oversized) and big.payload_size == codec.KEPT_HEAD + 10
    assert isinstance(refused, BadPublish) and refused.packet_id == 9 and isinstance(good, Publish)


def test_another_packet_over_max_incoming_is_the_brokers_fault() -> None:
    session, _ = connected()
    session.max_incoming = codec.KEPT_HEAD
    suback = codec.encode_suback(5, 1, [0] * (codec.KEPT_HEAD + 1))
    with pytest.raises(RemoteProtocolError, match="over the"):
        fed_in_reads(session, suback)


@pytest.mark.parametrize("protocol", [5, 4])
def test_qos_2_is_refused_both_ways(protocol: int) -> None:
    """This client has no QoS 2 flow: a QoS 2 PUBLISH from the broker was routed and answered with a PUBACK, which
    the broker cannot take for its PUBREC; subscribing at QoS 2 is what would invite one."""
    session, _ = connected(protocol)
    with pytest.raises(LocalProtocolError, match="QoS 2"):
        session.subscribe([Subscription("t/#", 2)])
    session.receive_data(codec.encode_publish(protocol, b"t/1", b"x", 2, 5))
    with pytest.raises(RemoteProtocolError, match="QoS 2"):
        session.events()


def test_a_broken_session_stays_broken_until_it_connects_again() -> None:
    session, _ = connected()
    session.receive_data(b"\x62\x02\x00\x01")  # PUBREL: QoS 2, which this client never asks for
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            session.events()
    session.connect("c", clean_start=True, keepalive=0)
    session.receive_data(codec.encode_connack(5, False))
    assert session.events() == [ConnAck(False, 0)]


def test_the_brokers_disconnect_ends_the_connection() -> None:
    session, _ = connected()
    session.receive_data(codec.encode_disconnect(5, 0x8E, reason_string="taken over"))
    assert session.events() == [Disconnect(0x8E, "taken over")] and not session.connected


def test_local_errors_change_nothing() -> None:
    session, broker = connected()
    for call in (lambda: session.publish("a/+", b""), lambda: session.publish("t", b"", 2),
                 lambda: session.subscribe([Subscription("a/#/b", 1)]), lambda: session.unsubscribe([]),
                 lambda: session.pubacks([1, 0]), lambda: session.pubacks([65536])):
        with pytest.raises(LocalProtocolError):
            call()
    assert session.in_flight == 0 and session.connected


@given(st.sampled_from([4, 5]), st.lists(st.binary(max_size=40), max_size=5))
def test_any_bytes_give_events_or_the_brokers_fault(protocol: int, chunks: list[bytes]) -> None:
    session, _ = connected(protocol)
    for chunk in chunks:
        session.receive_data(chunk)
        try:
            session.events()
        except RemoteProtocolError:
            return


@given(st.lists(st.sampled_from([codec.encode_publish(5, b"t", b"x", 1, 2), codec.encode_puback(5, 1),
                                 codec.encode_suback(5, 3, [1]), codec.encode_disconnect(5, 0x8E),
                                 codec.PINGRESP_PACKET, codec.encode_publish(5, b"\xff", b"", 0, 0)]), max_size=6),
       st.binary(max_size=8), st.integers(0, 60))
def test_mangled_valid_streams_give_events_or_the_brokers_fault(packets: list[bytes], noise: bytes, cut: int) -> None:
    session, _ = connected()
    stream = b"".join(packets)
    session.receive_data(stream[:cut] + noise + stream[cut:])
    try:
        session.events()
    except RemoteProtocolError:
        pass
