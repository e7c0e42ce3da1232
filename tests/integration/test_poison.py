"""Forwards the broker would refuse, and routing that fails: never a stalled router, never a crash loop.

Mosquitto drops a client whose PUBLISH breaks one of its limits; sent again on
the next connection, the same forward would stop every other device for good.
Each test proves the fix by what is delivered: the other devices' messages
reach their worker, and the bad one reaches the dead letters with its reason.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from mqttlb.commands.broker import PrivateBroker

from .conftest import Client, RouterProcess, TestWorker, wait_for, write_config

pytestmark = pytest.mark.integration

LIMITED = {"set_tcp_nodelay true": "set_tcp_nodelay true\nmax_packet_size 2048"}
"""dev.conf with a Maximum Packet Size: MQTT 5 clients are told it in CONNACK, MQTT 3.1.1 ones are not."""
TINY = {"set_tcp_nodelay true": "set_tcp_nodelay true\nmax_packet_size 200"}
"""Room for the router's CONNECT (its will included) and a short forward; none for any dead letter of a message
on a long topic, whose smallest one carries the topic in its reason."""


@pytest.fixture
def limited_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    workdir = tmp_path / "limited"
    workdir.mkdir()
    with PrivateBroker(workdir=workdir, edits=LIMITED) as b:
        yield b


def user_properties(message: Any) -> dict[str, str]:
    return dict(getattr(message.properties, "UserProperty", []) or [])


def send_good(device: Client, count: int, start: int = 0) -> set[bytes]:
    sent = set()
    for n in range(start, start + count):
        payload = f"good-{n}".encode()
        device.publish(f"devices/d{n % 7}/telemetry", payload)
        sent.add(payload)
    return sent


def delivered(worker: Client) -> set[bytes]:
    return {m.payload for m in worker.messages()}


def test_a_forward_with_too_many_levels_is_dead_lettered_and_the_others_flow(make_router, clients):
    worker = clients(TestWorker, "w1")
    make_router()
    dead = clients(Client, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = clients(Client, "device")

    deep = "devices/d1/logs/" + "/".join(["x"] * 198)  # 201 levels: the broker's most; the forward adds 4
    assert deep.count("/") == 200
    device.publish(deep, b"deep")
    sent = send_good(device, 50)

    wait_for(lambda: delivered(worker) >= sent, what="the other devices' messages")
    letter = wait_for(lambda: dead.messages(), what="the dead letter")[0]
    assert letter.topic == "mqttlb/deadletter/bad_topic"  # shortened: the whole topic would be too deep too
    assert letter.payload == b"deep"                    # the topic was the problem, not the payload
    reason = user_properties(letter)["mqttlb-reason"]
    assert "levels" in reason and "devices/d1/logs/x/x" in reason
    assert b"deep" not in delivered(worker)


def test_a_forward_over_the_brokers_packet_size_is_dead_lettered(limited_broker, tmp_path, clients):
    worker = TestWorker(limited_broker, "w1")
    dead = Client(limited_broker, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = Client(limited_broker, "device")
    router = RouterProcess(write_config(tmp_path / "router.yaml", limited_broker)).wait_ready()
    try:
        big = b"b" * 1990  # the device's packet fits 2048 bytes; its forward, with topic and properties, does not
        device.publish("devices/d1/telemetry", big)
        sent = send_good(device, 50)
        wait_for(lambda sent=sent: delivered(worker) >= sent, what="the other devices' messages")
        letter = wait_for(lambda: dead.messages(), what="the dead letter")[0]
        assert letter.topic == "mqttlb/deadletter/too_large/devices/d1/telemetry"
        assert letter.payload == b""
        assert "maximum packet size of 2048" in user_properties(letter)["mqttlb-reason"]
        assert big not in delivered(worker)
        assert "disconnected" not in router.log()
    finally:
        router.stop()
        for c in (worker, dead, device):
            c.close()


def test_a_limit_the_router_cannot_know_is_quarantined_before_and_after_a_restart(limited_broker, tmp_path):
    """MQTT 3.1.1: the broker does not say its Maximum Packet Size, so only the poison guard can help."""
    config = write_config(tmp_path / "router.yaml", limited_broker, broker={"protocol": "3.1.1"})
    worker = TestWorker(limited_broker, "w1")
    dead = Client(limited_broker, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = Client(limited_broker, "device")
    router = RouterProcess(config).wait_ready()
    try:
        router.stop()  # the router's session keeps what arrives meanwhile: the poison meets a fresh router
        big = b"p" * 2015  # 2043 bytes from the device; 2063 as a forward (no properties in MQTT 3.1.1)
        device.publish("devices/d1/telemetry", big)
        sent = send_good(device, 50)

        router = RouterProcess(config).wait_ready()
        wait_for(lambda: delivered(worker) >= sent, timeout=20, what="the other devices' messages")
        letters = wait_for(lambda: dead.messages(), what="the poison dead letter")
        assert [(m.topic, m.payload) for m in letters] == [("mqttlb/deadletter/poison", b"")]
        router.wait_log("quarantined as a poison dead letter")
        assert big not in delivered(worker)

        router.stop()  # acknowledged: a restart does not meet it again
        router = RouterProcess(config).wait_ready()
        more = send_good(device, 20, start=50)
        wait_for(lambda: delivered(worker) >= more, what="routing after the restart")
        assert len(dead.messages()) == 1
        assert "quarantined" not in router.log()
    finally:
        router.stop()
        for c in (worker, dead, device):
            c.close()


BOOM = """\
import sys
from mqttlb import balancers
from mqttlb.core.balancers.stateless import RoundRobin
from mqttlb.commands.cli import main


class Boom(RoundRobin):
    \"\"\"A user's algorithm with bugs: it raises for one key and for one worker.\"\"\"

    name = "boom"
    needs_key = True

    def update(self, workers):
        if "evil" in workers:
            raise RuntimeError("cannot take worker evil")
        super().update(workers)

    def pick(self, key):
        if key == "bomb":
            raise ZeroDivisionError("bomb")
        return super().pick(key)


balancers.register("boom", Boom)
sys.exit(main(["run", "-c", sys.argv[1], "--log-level", "debug"]))
"""


@pytest.fixture
def plugin_router(broker: PrivateBroker, tmp_path: Path) -> Iterator[Callable[[], RouterProcess]]:
    """``mqttlb run`` with a user's balancer registered first, as the Python API allows."""
    script = tmp_path / "boom_router.py"
    script.write_text(textwrap.dedent(BOOM))
    routes = [{"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device", "algorithm": "boom"}]
    config = write_config(tmp_path / "router.yaml", broker, routes=routes)
    started: list[RouterProcess] = []

    def start() -> RouterProcess:
        started.append(RouterProcess(config, command=[sys.executable, str(script), str(config)]))
        return started[-1]

    yield start
    for router in started:
        if router.process.poll() is None:
            router.kill()


def test_a_failing_balancer_costs_one_message_not_the_router_nor_its_restarts(plugin_router, clients):
    worker = clients(TestWorker, "w1")
    dead = clients(Client, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = clients(Client, "device")
    evil = clients(Client, "evil")
    evil.publish("mqttlb/workers/evil/heartbeat", orjson.dumps({"worker": "evil"}), retain=True)

    router = plugin_router().wait_ready()
    router.stop()
    device.publish("devices/bomb/telemetry", b"bomb")  # queued for the next router, as is the retained heartbeat
    sent = send_good(device, 30)
    for attempt in range(2):  # no crash loop: the first restart dead-letters it, the second does not meet it
        router = plugin_router().wait_ready()
        wait_for(lambda sent=sent: delivered(worker) >= sent, what="the other devices' messages")
        assert router.process.poll() is None
        if attempt == 0:
            letter = wait_for(lambda: dead.messages(), what="the internal dead letter")[0]
            assert (letter.topic, letter.payload) == ("mqttlb/deadletter/internal/devices/bomb/telemetry", b"bomb")
            assert "ZeroDivisionError: bomb" in user_properties(letter)["mqttlb-reason"]
            router.wait_log("Traceback")
            router.wait_log("cannot take worker evil")
        assert router.stop() == 0
        sent = send_good(device, 10, start=100)
    assert len(dead.messages()) == 1


@pytest.mark.parametrize("broker_settings", [{}, {"protocol": "3.1.1", "max_packet_size": 2048}],
                         ids=["mqtt5-connack", "mqtt311-config"])
def test_stats_over_the_brokers_packet_size_are_held_back_not_sent(limited_broker, tmp_path, broker_settings):
    """A stats snapshot grows with the fleet; one over the broker's limit would drop the publishing connection
    at every stats interval, taking the forwards in flight with it. The limit is the broker's own (MQTT 5
    CONNACK) or ``broker.max_packet_size`` (MQTT 3.1.1, where the broker does not say it)."""
    beats = Client(limited_broker, "beats")
    beats.subscribe("mqttlb/workers/+/in/#")  # the fake workers' share of the traffic
    for n in range(40):  # each worker adds ~150 bytes to the snapshot: ~6 KiB against 2 KiB
        beats.publish(f"mqttlb/workers/w{n:02d}/heartbeat", orjson.dumps({"worker": f"w{n:02d}"}), retain=True)
    worker = TestWorker(limited_broker, "w1")
    device = Client(limited_broker, "device")
    router = RouterProcess(write_config(tmp_path / "router.yaml", limited_broker, stats={"interval": "500ms"},
                                        broker=broker_settings))
    try:
        router.wait_ready()
        router.wait_log("stats not published: larger than the broker's maximum packet size (2048 bytes)")
        sent = set()
        for n in range(200):
            payload = f"m{n}".encode()
            device.publish(f"devices/d{n}/telemetry", payload)
            sent.add(payload)
        wait_for(lambda: delivered(worker) | delivered(beats) >= sent, what="every message")
        assert "disconnected" not in router.log()
    finally:
        router.stop()
        for c in (beats, worker, device):
            c.close()


def test_a_message_not_even_whose_smallest_dead_letter_fits_is_lost_counted_and_acknowledged(tmp_path):
    """A broker may name any Maximum Packet Size (MQTT 5 allows one byte). When not even the smallest dead
    letter of a message fits, the message is lost: said and counted, and acknowledged, for the broker would
    send it again for ever, to the same end. Before, that dead letter was a traceback and exit 1, and the
    message came back to the next router: a crash loop."""
    workdir = tmp_path / "tiny"
    workdir.mkdir()
    with PrivateBroker(workdir=workdir, edits=TINY) as broker:
        worker = TestWorker(broker, "w1")
        device = Client(broker, "device")
        config = write_config(tmp_path / "router.yaml", broker)
        routers = [RouterProcess(config)]
        try:
            routers[0].wait_ready()
            long_topic = "devices/" + "d" * 120 + "/telemetry"
            device.publish(long_topic, b"lost")
            device.publish("devices/d1/telemetry", b"ok")
            wait_for(lambda: b"ok" in delivered(worker), what="the short message at its worker")
            routers[0].wait_log("the broker has too small a maximum packet size for the dead letter for "
                                "devices/ddd")
            assert routers[0].process.poll() is None
            assert routers[0].stop() == 0
            routers.append(RouterProcess(config))
            routers[1].wait_ready()
            device.publish("devices/d2/telemetry", b"after")
            wait_for(lambda: b"after" in delivered(worker), what="a message after the restart")
            assert "the message is lost" not in routers[1].log()  # acknowledged: the broker did not send it again
            assert b"lost" not in delivered(worker)
        finally:
            for router in routers:
                router.stop()
            worker.close()
            device.close()


def test_a_311_broker_dropping_us_over_its_unsaid_packet_size_is_named_as_a_possible_cause(limited_broker,
                                                                                            tmp_path):
    """An MQTT 3.1.1 broker does not say its maximum packet size; without broker.max_packet_size the stats
    snapshot (40 workers: ~6 KiB against 2 KiB) goes out at once on every connect and the broker drops the
    connection right after. That looks like a takeover, and used to be said as one alone; the error now names
    the other cause and its fix."""
    beats = Client(limited_broker, "beats")
    for n in range(40):
        beats.publish(f"mqttlb/workers/w{n:02d}/heartbeat", orjson.dumps({"worker": f"w{n:02d}"}), retain=True)
    router = RouterProcess(write_config(tmp_path / "router.yaml", limited_broker, broker={"protocol": "3.1.1"}))
    try:
        router.wait_log("session taken over", timeout=20)
        line = next(line for line in router.lines if "session taken over" in line)
        assert "ERROR" in line and "set broker.max_packet_size" in line
    finally:
        router.stop()
        beats.close()
