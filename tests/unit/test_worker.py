"""mqttlb.Worker without a broker: what the handler sees, which inboxes, which arguments are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqttlb import Delivery, Worker
from mqttlb.core import config
from mqttlb.core.config import BrokerSettings
from mqttlb.mqtt.client import Inbound
from mqttlb.worker import Tally, delivery_of

BROKER = BrokerSettings(port=1)  # never connected to: nothing here calls start()
INBOX = ("mqttlb/workers/w1/in/#",)


def inbound(topic: str, payload: bytes = b"x", user: tuple[tuple[str, str], ...] = ()) -> Inbound:
    return Inbound(topic=topic, payload=payload, qos=1, retain=False, mid=1, user_properties=user)


def ignore(delivery: Delivery) -> None:
    pass


def test_mqtt5_delivery_takes_key_route_and_original_topic_from_the_properties() -> None:
    user = (("unit", "C"), ("mqttlb-route", "telemetry"), ("mqttlb-key", "d42"),
            ("mqttlb-topic", "devices/d42/telemetry"))
    got = delivery_of(inbound("mqttlb/workers/w1/in/devices/d42/telemetry", b"\x00\xff", user), INBOX)
    assert got == Delivery(device="d42", topic="devices/d42/telemetry", payload=b"\x00\xff", route="telemetry",
                           properties=user)


def test_mqtt311_delivery_takes_the_original_topic_from_the_inbox_topic() -> None:
    got = delivery_of(inbound("mqttlb/workers/w1/in/devices/d1/logs/a/b"), INBOX)
    assert (got.device, got.topic, got.route, got.properties) == (None, "devices/d1/logs/a/b", None, ())


def test_inbox_follows_the_routes_forward_templates() -> None:
    data = {"routes": [
        {"name": "t", "match": "devices/{device}/telemetry", "key": "device", "algorithm": "consistent_hash"},
        {"name": "l", "match": "devices/+/logs/#", "algorithm": "round_robin",
         "forward": "fleet/{pool}/{worker}/{route}/{topic}"},
        {"name": "m", "match": "meters/+/data", "algorithm": "random"},
    ]}
    worker = Worker.from_config(config.parse(data, base_dir=Path("."), environ={}), "w1", ignore)
    assert worker.inbox == ("mqttlb/workers/w1/in/#", "fleet/+/w1/+/#")
    assert worker.heartbeat_topic == "mqttlb/workers/w1/heartbeat"
    got = delivery_of(inbound("fleet/default/w1/l/devices/d1/logs/x"), worker.inbox)
    assert got.topic == "devices/d1/logs/x"


def test_heartbeat_topic_puts_the_id_in_the_plus_level() -> None:
    worker = Worker("w-7", ignore, broker=BROKER, heartbeat_topic="site/+/hb")
    assert worker.heartbeat_topic == "site/w-7/hb"
    assert (worker.received, worker.handled, worker.failed, worker.inflight, worker.state) == (0, 0, 0, 0, "up")


@pytest.mark.parametrize("kwargs, problem", [
    ({"worker_id": ""}, "worker id '': empty key"),
    ({"worker_id": "a/b"}, "forbidden character U+002F"),
    ({"worker_id": "w+"}, "forbidden character U+002B"),
    ({"pool": ""}, "pool '': empty key"),
    ({"weight": 0}, "weight must be > 0"),
    ({"weight": float("nan")}, "weight must be > 0"),
    ({"interval": -1}, "interval must be > 0"),
    ({"heartbeat_topic": "hb/+/+"}, "exactly one '+' level"),
])
def test_bad_arguments_are_refused(kwargs: dict[str, object], problem: str) -> None:
    arguments: dict[str, object] = {"worker_id": "w1", "handler": ignore, "broker": BROKER, **kwargs}
    with pytest.raises(ValueError, match=problem.replace("+", r"\+").replace("(", r"\(")):
        Worker(**arguments)  # type: ignore[arg-type]


def test_tally_counts_per_device_or_topic() -> None:
    tally = Tally("w1")
    for device, topic in (("d1", "devices/d1/telemetry"), ("d1", "devices/d1/telemetry"), (None, "devices/d2/logs")):
        tally(Delivery(device=device, topic=topic, payload=b"", route=None, properties=()))
    assert tally.summary() == "worker w1: 3 messages from 2 devices"
