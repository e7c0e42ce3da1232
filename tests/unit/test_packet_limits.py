"""Publishes over the broker's Maximum Packet Size, in the service: never a crash, never a silent loss.

A broker may name any Maximum Packet Size in its CONNACK (MQTT 5 allows one byte), and a reconnect may
lower it after a forward was made. The session refuses such a publish (``PacketTooLarge``); the transport
says ``TOO_LARGE``. What the service makes of that, without a broker: a fake transport answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from mqttlb.core.config import parse
from mqttlb.core.inflight import Receipt
from mqttlb.core.limits import MQTT_MAX_PACKET
from mqttlb.core.router import DeadLetter, Forward, Message, Reason
from mqttlb.service import Service
from mqttlb.transport import TOO_LARGE, Outcome, Settled


class FakeTransport:
    """Records what the service publishes, announces and acknowledges; answers each publish from ``outcomes``."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome | None] = []
        self.published: list[tuple[str, bytes, Any]] = []
        self.announced: list[str] = []
        self.acked: list[int] = []

    def publish(self, topic: str, payload: bytes, qos: int, properties: bytes, tag: Any) -> Outcome | None:
        self.published.append((topic, payload, tag))
        return self.outcomes.pop(0) if self.outcomes else None

    def properties(self, inbound: bytes, user: Any) -> bytes:
        return b""

    def announce(self, topic: str, payload: bytes) -> None:
        self.announced.append(topic)

    def ack(self, packet_ids: list[int], source: int = 0) -> None:
        self.acked.extend(packet_ids)


@pytest.fixture(params=[{}])
def service(request: pytest.FixtureRequest) -> Iterator[Service]:
    config = parse({"routes": [{"match": "devices/{device}/telemetry", "key": "device"}],
                    "metrics": {"listen": None}, **request.param}, base_dir=Path("."), environ={})
    made = Service(config)
    real = made.transport
    made.transport = FakeTransport()  # type: ignore[assignment]
    made.router.heartbeat("w1", orjson.dumps({"worker": "w1"}), made.clock())
    yield made
    real.close(0)


def fake(service: Service) -> FakeTransport:
    assert isinstance(service.transport, FakeTransport)
    return service.transport


def forward_of(service: Service, topic: str = "devices/d1/telemetry", packet_id: int = 7) -> Forward[Receipt]:
    message = Message(topic, b"x" * 300, Receipt(service.inflight.generation, packet_id, 1, b""), service.clock())
    service.inflight.took(1)
    [action] = service.router.route(message)
    assert isinstance(action, Forward)
    return action


def test_a_forward_over_a_lowered_limit_becomes_a_too_large_dead_letter_without_its_payload(service):
    forward = forward_of(service)
    service.router.limits = replace(service.router.limits, max_packet_size=256)  # the broker came back lower
    service._settle_all(Settled([], [], [forward]))
    [(topic, payload, letter)] = fake(service).published
    assert isinstance(letter, DeadLetter) and letter.reason == Reason.TOO_LARGE
    assert topic.startswith("mqttlb/deadletter/too_large/") and payload == b""
    assert "over the broker's maximum packet size of 256" in letter.detail
    assert fake(service).acked == []  # settled once the dead letter is acknowledged, not before


def test_a_dead_letter_over_the_limit_goes_again_as_small_as_a_dead_letter_can_be(service):
    forward = forward_of(service)
    fake(service).outcomes = [TOO_LARGE]
    service._settle_all(Settled([], [(forward, 0x87)], []))  # refused: a dead letter the broker cannot take whole
    [(_, _, whole), (topic, payload, smallest)] = fake(service).published
    assert isinstance(whole, DeadLetter) and whole.keep_properties
    assert isinstance(smallest, DeadLetter) and not smallest.keep_properties and payload == b""
    assert topic == "mqttlb/deadletter/refused"
    assert [name for name, _ in smallest.user_properties] == ["mqttlb-reason"]


def test_a_message_whose_smallest_dead_letter_is_over_the_limit_is_counted_lost_and_acknowledged(service):
    forward = forward_of(service, packet_id=9)
    fake(service).outcomes = [TOO_LARGE, TOO_LARGE]
    service._settle_all(Settled([], [], [forward]))
    assert len(fake(service).published) == 2  # the dead letter, then its smallest form; nothing a third time
    assert service.counters.dropped == 1
    assert fake(service).acked == [9]  # the broker would send it again for ever, to the same end
    assert service.inflight.unsettled == 0


def test_a_router_heartbeat_over_the_limit_is_held_back_not_sent(service, caplog):
    service.router.limits = replace(service.router.limits, max_packet_size=64)
    service._announce_router()
    assert fake(service).announced == []
    assert "router heartbeat not published: larger than the broker's maximum packet size (64 bytes)" in caplog.text
    service.router.limits = replace(service.router.limits, max_packet_size=None)
    service._announce_router()
    assert fake(service).announced == [service.config.router.heartbeat_of(service.config.broker.client_id)]


@pytest.mark.parametrize("service", [{"dead_letter": {"max_payload": MQTT_MAX_PACKET - 5}}], indirect=True)
def test_a_forward_more_than_mqtt_can_frame_becomes_a_too_large_dead_letter_that_says_so(service):
    """No limit from the broker, payloads up to MQTT's largest allowed, and a device message of that size: the
    forward cannot be framed."""
    message = Message("devices/d1/telemetry", bytes(MQTT_MAX_PACKET - 5 - 30), Receipt(service.inflight.generation,
                      5, 1, b""), service.clock())  # zeros from calloc: no memory is touched
    service.inflight.took(1)
    [forward] = service.router.route(message)
    assert isinstance(forward, Forward)  # nothing is measured when the broker names no limit
    fake(service).outcomes = [TOO_LARGE]  # as the session answers it
    service._publish(forward)
    [_, (topic, payload, letter)] = fake(service).published
    assert isinstance(letter, DeadLetter) and letter.reason == Reason.TOO_LARGE and payload == b""
    assert "over MQTT's largest packet of 268435460" in letter.detail
