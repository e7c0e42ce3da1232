"""The benches' raw publisher against a real Mosquitto: a paced run is on time, and a paced run or a burst loses
nothing at QoS 1."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mqttlb.commands.bench_publisher import RawPublisher, packet_id, publish_packet
from mqttlb.commands.bench_throughput import Subscribers, peak, warm_up
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


def test_the_benchs_qos_1_burst_arrives_whole_past_the_brokers_inflight_limit(broker: PrivateBroker,
                                                                               tmp_path: Path) -> None:
    """``mqttlb bench``'s peak burst: 100,000 messages at QoS 1, ten times the broker's inflight limit, all
    delivered (``mosquitto_pub -l`` published it before: the broker cut it off for going past its Receive
    Maximum, at about a third of the burst, and the table said fewer delivered)."""
    subscribers = Subscribers(broker, "shared", 1, tmp_path)
    try:
        warm_up(broker, 1, subscribers)
        delivered, rate = peak(broker, 1, 100_000, subscribers)
    finally:
        subscribers.stop()
    assert delivered == 100_000 and rate > 0
