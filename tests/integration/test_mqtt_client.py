"""``mqtt.client.Client`` against a real Mosquitto: properties on the wire, and QoS 1 kept across an outage."""

from __future__ import annotations

from mqttlb.commands.broker import PrivateBroker
from mqttlb.core.config import BrokerSettings
from mqttlb.mqtt import encode_user_properties
from mqttlb.mqtt.client import Client, Inbound

from .conftest import wait_for


def settings(broker: PrivateBroker, protocol: str = "5") -> BrokerSettings:
    return BrokerSettings(host=broker.host, port=broker.port, protocol=protocol, keepalive=5)


def test_user_properties_with_a_zero_width_no_break_space_arrive_as_sent(broker: PrivateBroker) -> None:
    received: list[Inbound] = []
    reader = Client(settings(broker), "reader", on_message=received.append)
    reader.subscribe("t/#", 1)
    writer = Client(settings(broker), "writer")
    try:
        reader.start()
        writer.start()
        pairs = (("mqttlb-topic", "a/\ufeffb"), ("\ufeff", ""))
        sent = writer.publish("t/\ufeff", b"payload", 1, properties=encode_user_properties(pairs))
        assert sent.wait_for_publish(5) and sent.is_published()
        wait_for(lambda: received, what="the message")
        assert (received[0].topic, received[0].payload, received[0].user_properties) == ("t/\ufeff", b"payload", pairs)
    finally:
        reader.stop()
        writer.stop()


def test_a_qos_1_publish_made_while_the_broker_is_down_goes_out_when_it_is_back(broker: PrivateBroker) -> None:
    writer = Client(settings(broker, "3.1.1"), "writer", persistent=True).start()
    try:
        broker.stop()
        wait_for(lambda: not writer.connected, what="the drop")
        kept = writer.publish("kept/1", b"made while down", 1, retain=True)
        lost = writer.publish("lost/1", b"qos 0", 0)
        broker.start()
        assert kept.wait_for_publish(15), "not sent again after the reconnect"
        assert lost.rc != 0 and not lost.is_published()
        received: list[Inbound] = []
        reader = Client(settings(broker), "reader", on_message=received.append)
        reader.subscribe("kept/#", 1)
        reader.start()
        try:
            wait_for(lambda: received, what="the retained message")
            assert received[0].payload == b"made while down"
        finally:
            reader.stop()
    finally:
        writer.stop()
