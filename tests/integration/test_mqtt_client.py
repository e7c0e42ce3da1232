"""``mqtt.client.Client`` against a real Mosquitto: properties on the wire, and QoS 1 kept across an outage."""

from __future__ import annotations

import os
import signal

from mqttlb.commands.broker import PrivateBroker
from mqttlb.core.config import BrokerSettings
from mqttlb.mqtt import encode_user_properties
from mqttlb.mqtt.client import REFUSED, Client, Inbound

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


def test_a_kept_publish_over_the_broker_s_new_maximum_packet_size_is_refused_not_sent_again_for_ever(
        broker: PrivateBroker) -> None:
    """Mosquitto drops a connection over a packet larger than its max_packet_size. A publish kept unacknowledged
    across a restart that lowered the limit was sent again as it was, on every reconnect: the client never
    stayed connected. It is refused now (``REFUSED``), and what follows goes out."""
    writer = Client(settings(broker), "writer", persistent=True).start()
    restarted = None
    try:
        wait_for(lambda: writer.connected, what="the first connection")
        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGSTOP)  # it reads nothing more, and acknowledges nothing
        big = writer.publish("big/1", b"x" * 5000, 1)  # connected: in flight at once, never acknowledged
        broker.stop(signal.SIGKILL)
        restarted = PrivateBroker(port=broker.port, edits={"set_tcp_nodelay true": "set_tcp_nodelay true\n"
                                                                                   "max_packet_size 1000"}).start()
        assert big.wait_for_publish(15) and big.rc == REFUSED, "sent again, over the limit"
        small = writer.publish("small/1", b"fits", 1)
        assert small.wait_for_publish(15) and small.is_published(), "the client did not stay connected"
        assert restarted.log().count("New client connected") == 1, restarted.log()
    finally:
        writer.stop()
        if restarted is not None:
            restarted.close()
