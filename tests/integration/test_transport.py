"""The transport on a private Mosquitto: when the forwards' acknowledgements are read (``ACK_LINGER``), and
publishes the broker's Maximum Packet Size forbids.

Acknowledgements may wait to share a turn with the next device messages, but never longer than the linger,
never when something else wakes the loop, and never when what awaits them is as much as the room left to take
messages in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttlb import transport as transport_module
from mqttlb.commands.broker import PrivateBroker
from mqttlb.core.config import BrokerSettings
from mqttlb.mqtt import codec
from mqttlb.mqtt.events import Subscription
from mqttlb.mqtt.reasons import NO_MATCHING_SUBSCRIBERS
from mqttlb.transport import TOO_LARGE, DeviceMessages, Event, PublishingConnected, Settled, Transport

from .conftest import Client, wait_for

ROOM = 100


@pytest.fixture
def transport(broker: PrivateBroker) -> Iterator[Transport[str]]:
    settings = BrokerSettings(host=broker.host, port=broker.port, client_id="t-acks", session_expiry=0)
    link: Transport[str] = Transport(settings, heartbeat_filter="mqttlb/workers/+/heartbeat",
                                     routes=[Subscription("dev/#", 1)])
    link.start()
    wait_for(lambda: link.poll(0.05, ROOM) is not None and link.connected, what="the transport to connect")
    yield link
    link.close(0.5)


def settled_tags(events: list[Event[str]]) -> list[str]:
    """What the broker answered: nothing subscribes to ``w/in`` here, so it takes each publish with 0x10, No
    matching subscribers (which the service makes a dead letter of)."""
    return [tag for event in events if isinstance(event, Settled)
            for tag in [*event.acked, *(tag for tag, reason in event.refused if reason == NO_MATCHING_SUBSCRIBERS)]]


def forward_and_settle(transport: Transport[str], tag: str) -> None:
    """Publish at QoS 1 and poll until the broker's acknowledgement is read (which starts a linger)."""
    assert transport.publish("w/in", tag.encode(), 1, b"", tag) is None
    wait_for(lambda: tag in settled_tags(transport.poll(0.05, ROOM)), what=f"{tag} settled")


def test_acknowledgements_alone_wait_for_the_linger_then_are_read(
        transport: Transport[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "ACK_LINGER", 1.0)
    forward_and_settle(transport, "a")
    started = time.monotonic()
    assert transport.publish("w/in", b"b", 1, b"", "b") is None
    early: list[str] = []
    while time.monotonic() - started < 0.5:
        early += settled_tags(transport.poll(0.05, ROOM))
    assert early == []  # read as it came, it would have taken a turn of its own
    wait_for(lambda: "b" in settled_tags(transport.poll(0.05, ROOM)), timeout=5, what="b settled")
    assert time.monotonic() - started < 1.0 + 2.0


def test_acknowledgements_are_read_with_the_device_messages_that_wake_the_loop(
        broker: PrivateBroker, transport: Transport[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "ACK_LINGER", 30.0)
    worker = Client(broker, "t-worker")
    device = Client(broker, "t-device")
    try:
        worker.subscribe("w/in")
        def probe() -> bool:
            device.publish("w/in", b"probe", qos=1)
            return bool(worker.messages())

        wait_for(probe, what="the worker subscribed")
        forward_and_settle(transport, "a")
        assert transport.publish("w/in", b"b", 1, b"", "b") is None
        transport.poll(0.0, ROOM)  # writes it
        wait_for(lambda: b"b" in [m.payload for m in worker.messages()], what="the worker to get b")
        device.publish("dev/1", b"m", qos=1)
        events: list[Event[str]] = []

        def device_message() -> bool:
            events.extend(transport.poll(0.05, ROOM))
            return any(isinstance(event, DeviceMessages) for event in events)

        wait_for(device_message, timeout=5, what="the device message")
        assert "b" in settled_tags(events)  # long before the linger's 30 s
    finally:
        worker.close()
        device.close()


def test_acknowledgements_are_read_at_once_when_they_are_as_many_as_the_room_left(
        transport: Transport[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "ACK_LINGER", 30.0)
    forward_and_settle(transport, "a")
    assert transport.publish("w/in", b"b", 1, b"", "b") is None
    wait_for(lambda: "b" in settled_tags(transport.poll(0.05, room=1)), timeout=5,
             what="b settled with the room for one message")


def test_publishes_made_while_down_that_the_broker_comes_back_too_small_for_are_settled_too_large(
        tmp_path: Path) -> None:
    """The broker's Maximum Packet Size is its CONNACK's, and a restart may lower it. What was published while
    the link was down is sent when it is back, but for what the new limit forbids: that is handed back as
    ``too_large``, after the new limit (before, the session's refusal escaped ``poll``: a traceback)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with PrivateBroker(workdir=tmp_path / "a") as broker:
        settings = BrokerSettings(host=broker.host, port=broker.port, client_id="t-limit", session_expiry=0)
        link: Transport[str] = Transport(settings, heartbeat_filter="mqttlb/workers/+/heartbeat",
                                         routes=[Subscription("dev/#", 1)])
        link.start()
        wait_for(lambda: link.poll(0.05, ROOM) is not None and link.connected, what="the transport to connect")
        assert link.publish("w/in", b"x" * 1000, 1, b"", "fits") is None
    try:
        wait_for(lambda: link.poll(0.05, ROOM) is not None and not link.connected, what="the broker gone")
        assert link.publish("w/in", b"x" * 1000, 1, b"", "big") is None  # kept, to be sent once back
        assert link.publish("w/in", b"small", 1, b"", "small") is None
        with PrivateBroker(port=broker.port, workdir=tmp_path / "b",
                           edits={"set_tcp_nodelay true": "set_tcp_nodelay true\nmax_packet_size 512"}):
            events: list[Event[str]] = []
            wait_for(lambda: events.extend(link.poll(0.05, ROOM)) or "small" in settled_tags(events),
                     what="the small one acknowledged")
        connected = next(i for i, e in enumerate(events) if isinstance(e, PublishingConnected))
        assert isinstance(events[connected], PublishingConnected) and events[connected].max_packet_size == 512
        too_large = [(i, tag) for i, e in enumerate(events) if isinstance(e, Settled) for tag in e.too_large]
        assert [tag for _, tag in too_large] == ["big"] and too_large[0][0] > connected  # the limit first
        assert link.publish("w/in", b"x" * 1000, 1, b"", "later") is TOO_LARGE  # made now: said at once
    finally:
        link.close(0.5)


def test_a_forward_more_than_mqtt_can_frame_is_too_large_and_the_link_goes_on(transport: Transport[str]) -> None:
    """Mosquitto names no Maximum Packet Size by default, and takes a device message of MQTT's largest size: the
    forward, a few bytes longer, cannot be framed. It is answered ``too_large`` (which the service dead-letters),
    not raised (a crash, and a crash loop: the message comes back after a restart)."""
    most = codec.MAX_REMAINING_LENGTH  # zeros from calloc: no memory is touched
    assert transport.publish("w/in", bytes(most), 1, b"", "unframeable") is TOO_LARGE
    assert transport.publish("w/in", bytes(most), 0, b"", "unframeable") is TOO_LARGE
    forward_and_settle(transport, "next")
