"""The benches' raw publisher against a real Mosquitto: a paced run is on time and loses nothing at QoS 1."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mqttlb.commands.bench_publisher import RawPublisher, packet_id, publish_packet
from mqttlb.commands.broker import PrivateBroker

from .conftest import Client, wait_for


def test_a_paced_run_publishes_at_its_rate_and_every_message_arrives(broker: PrivateBroker,
                                                                     clients: Callable[..., Any]) -> None:
    subscriber: Client = clients(Client, "paced-sub")
    subscriber.subscribe("paced/#", qos=1)
    subscriber.publish("paced/probe", b"-1")
    wait_for(subscriber.messages, what="the subscription")  # its own probe is back: it is subscribed
    publisher = RawPublisher(broker, "paced-test")
    start = time.monotonic()
    try:
        sent = publisher.paced(lambda n: publish_packet("paced/t", b"%d" % n, 1, packet_id(n)), 2000, 1.0)
    finally:
        publisher.close()
    took = time.monotonic() - start
    assert sent == 2000 and 0.99 < took < 2.0  # on time: not ahead of the rate, and not far behind it
    wait_for(lambda: len(subscriber.messages()) > sent, what=f"{sent} paced messages")
    assert sorted(int(m.payload) for m in subscriber.messages())[1:] == list(range(sent))
