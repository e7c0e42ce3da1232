"""Bad input against a live router: dead letters with reasons, and the router stays connected."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from .conftest import Client, TestWorker, wait_for

pytestmark = pytest.mark.integration

ROUTES = [
    {"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device"},
    {"name": "events", "match": "events/+", "key": "payload.meta.id", "algorithm": "consistent_hash"},
]


def reasons(dead: Client) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in dead.messages()]


def test_each_reason_is_dead_lettered_and_routing_goes_on(make_router, clients):
    worker = clients(TestWorker, "w1")
    router = make_router(routes=ROUTES, dead_letter={"max_payload": "2KiB"})
    dead = clients(Client, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = clients(Client, "device")

    bad_payloads = [
        b"not json",
        b"\xff\xfe\xfd",
        b"[" * 1_000_000,                      # nested a million levels deep (over max_payload too)
        b'{"a":' * 200 + b"1" + b"}" * 200,    # deep, but under max_payload
        orjson.dumps({"meta": {"id": "a/b"}}),
        orjson.dumps({"meta": {"id": "ctl\u0001"}}),
        orjson.dumps({"meta": {"id": "\uffff"}}),
        orjson.dumps({"meta": {"id": "x" * 300}}),
        orjson.dumps({"meta": {"id": True}}),
        orjson.dumps({"meta": {}}),
        orjson.dumps([1, 2]),
    ]
    for payload in bad_payloads:
        device.publish("events/e1", payload)
    device.publish("events/e1", orjson.dumps({"meta": {"id": "good-1"}}))
    device.publish("devices/d1/telemetry", b"x" * 4096)

    got = wait_for(lambda: len(dead.messages()) == len(bad_payloads) + 1 and dead.messages(), what="dead letters")
    by_topic = reasons(dead)
    assert [t for t, _ in by_topic].count("mqttlb/deadletter/bad_key/events/e1") == len(bad_payloads) - 1
    assert ("mqttlb/deadletter/too_large/events/e1", b"") in by_topic      # the million-deep one
    assert ("mqttlb/deadletter/too_large/devices/d1/telemetry", b"") in by_topic
    for topic, payload in by_topic:
        if "bad_key" in topic:
            assert payload in bad_payloads  # unchanged
    assert all("mqttlb-reason" in dict(m.properties.UserProperty) for m in got)

    # Still connected and routing: the good message arrived, and a new one does too.
    device.publish("devices/d2/telemetry", b"after")
    wait_for(lambda: {m.payload for m in worker.messages()} >= {orjson.dumps({"meta": {"id": "good-1"}}), b"after"},
             what="routing after bad input")
    assert router.process.poll() is None
    assert "disconnected" not in router.log()


def test_a_forward_no_one_subscribes_to_is_a_dead_letter_not_a_delivery(make_router, clients):
    """A worker that sends heartbeats but is not subscribed to its inbox (a wrong filter, a clean session not yet
    subscribed): Mosquitto takes each forward with PUBACK 0x10, No matching subscribers, and throws it away. It
    was counted as forwarded and acknowledged: lost without a word."""
    beating = clients(Client, "deaf-worker")
    beating.publish("mqttlb/workers/deaf/heartbeat", orjson.dumps({"worker": "deaf"}), retain=True)
    make_router(routes=ROUTES)
    dead = clients(Client, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = clients(Client, "device")
    device.publish("devices/d1/telemetry", b"reading")
    [letter] = wait_for(dead.messages, what="the dead letter")
    assert (letter.topic, letter.payload) == ("mqttlb/deadletter/refused/devices/d1/telemetry", b"reading")
    reason = dict(letter.properties.UserProperty)["mqttlb-reason"]
    assert "No matching subscribers (0x10)" in reason and "nothing subscribes to the inbox of 'deaf'" in reason


def peak_rss_mib(pid: int) -> float:
    [line] = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def test_a_huge_message_is_a_dead_letter_the_router_never_holds(make_router, clients):
    """Mosquitto with no limit of its own (its default) takes up to 256 MiB from a device. The router held a
    200 MiB message whole and copied it to decode it: ~620 MiB of RSS, and a router killed for it would be sent
    the same message again on every restart. Now it reads past the payload and dead-letters what it saw."""
    worker = clients(TestWorker, "w1")
    router = make_router(routes=ROUTES).wait_ready()
    dead = clients(Client, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = clients(Client, "device")
    before = peak_rss_mib(router.process.pid)
    device.publish("devices/d1/telemetry", bytes(100 << 20), qos=1)
    device.publish("devices/d1/telemetry", b"after")
    [letter] = wait_for(dead.messages, timeout=30, what="the dead letter")
    assert (letter.topic, letter.payload) == ("mqttlb/deadletter/too_large/devices/d1/telemetry", b"")
    assert f"{100 << 20} bytes > 262144" in dict(letter.properties.UserProperty)["mqttlb-reason"]
    wait_for(lambda: [m.payload for m in worker.messages()] == [b"after"], what="routing after it")
    assert peak_rss_mib(router.process.pid) < before + 20  # it was before + ~300 (349 MiB, against 49)
    assert router.process.poll() is None and "disconnected" not in router.log()
    router.stop()
    again = make_router(routes=ROUTES).wait_ready()  # acknowledged: the broker does not send it again
    assert wait_for(lambda: "router started" in again.log() and again, what="a second router")
    assert len(dead.messages()) == 1


def test_a_huge_retained_heartbeat_is_ignored_never_held(broker, make_router, clients):
    """A heartbeat of 100 MiB, retained: every router that started took it whole, three times over (349 MiB of
    RSS against 49), before refusing it as no heartbeat."""
    worker = clients(TestWorker, "w1")
    clients(Client, "forger").publish("mqttlb/workers/evil/heartbeat", bytes(100 << 20), retain=True)
    router = make_router(routes=ROUTES).wait_ready()
    router.wait_log("ignoring heartbeat on mqttlb/workers/evil/heartbeat: 104857600 bytes")
    clients(Client, "device").publish("devices/d1/telemetry", b"reading")
    wait_for(lambda: [m.payload for m in worker.messages()] == [b"reading"], what="routing")
    assert peak_rss_mib(router.process.pid) < 80


def test_held_messages_are_bounded_in_bytes_and_none_is_lost(make_router, clients):
    """1,000 messages of 250 KB held for a pool with no worker took the router from 49 to 296 MiB: under a memory
    limit below that it was killed, and the broker sent the same messages to the next router. Past
    router.max_held_bytes it now takes nothing more in; the broker keeps the rest until the held ones leave."""
    router = make_router(routes=ROUTES, router={"max_held_bytes": "16MiB"},
                         dead_letter={"hold": "1s"}).wait_ready()
    dead = clients(Client, "dead-watch")
    dead.subscribe("mqttlb/deadletter/#")
    device = clients(Client, "device")
    before = peak_rss_mib(router.process.pid)
    payloads = [i.to_bytes(4, "big") + bytes(200_000) for i in range(400)]  # 80 MB, for a pool with no worker
    for payload in payloads:
        device.publish("devices/d1/telemetry", payload, qos=1)
    wait_for(lambda: len(dead.messages()) >= len(payloads), timeout=90, what="every message dead-lettered")
    letters = dead.messages()
    assert sorted(m.payload[:4] for m in letters) == sorted(p[:4] for p in payloads)  # none lost, none twice
    assert {m.topic for m in letters} == {"mqttlb/deadletter/no_worker/devices/d1/telemetry"}
    assert peak_rss_mib(router.process.pid) < before + 60  # unbounded: before + ~95
