"""Hostile heartbeats through a live router: whatever workers announce, it never stops and keeps routing.

The pure half is tests/unit/test_fuzz.py; here the same strategies go through
a real Mosquitto to ``mqttlb run``, retained, as a misbehaving or malicious
worker would send them, with the extreme numbers the SPEC accepts among them.
After every example a device's message must still reach the genuine worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mqttlb.commands.broker import PrivateBroker
from mqttlb.core.topics import key_problem

from ..unit.test_fuzz import json_value, level, payload
from .conftest import Client, RouterProcess, TestWorker, wait_for, write_config

pytestmark = pytest.mark.integration

EXTREME = st.sampled_from([1e308, 1.7976931348623157e308, 5e-324, 2.2250738585072014e-308, 1e-300, 2**63, 2**64,
                           10**30, 0.1, 3])
heartbeat_fields = st.fixed_dictionaries(
    {"pool": st.sampled_from(["default", "other"]), "weight": st.one_of(EXTREME, json_value)},
    optional={"state": st.sampled_from(["up", "down", "draining", "UP", ""]),
              "inflight": st.one_of(st.sampled_from([0, 2**63, 10**30, -1]), json_value), "worker": level})
extreme_but_valid = st.builds(lambda weight, inflight: {"pool": "default", "weight": weight, "inflight": inflight},
                              EXTREME, st.sampled_from([0, 2**63 - 1, 10**30]))
body = st.one_of(  # json: ints past 64 bits; the valid extremes twice as often, as they are what hurts
    extreme_but_valid.map(lambda fields: json.dumps(fields).encode()),
    extreme_but_valid.map(lambda fields: json.dumps(fields).encode()),
    heartbeat_fields.map(lambda fields: json.dumps(fields).encode()),
    payload)
publishable = level.filter(lambda worker: key_problem(worker) is None and worker != "w1")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterProcess, TestWorker, Client]]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    with PrivateBroker(workdir=workdir) as broker:
        routes = [{"name": "hashed", "match": "devices/{device}/telemetry", "key": "device"},
                  {"name": "weighted", "match": "devices/+/logs", "algorithm": "weighted_round_robin"},
                  {"name": "random", "match": "devices/+/random", "algorithm": "random"}]
        router = RouterProcess(write_config(workdir / "router.yaml", broker, routes=routes,
                                            pools={"default": {"slow_start": "2s"}})).wait_ready()
        worker = TestWorker(broker, "w1")
        fuzzer = Client(broker, "fuzzer")
        fuzzer.subscribe("mqttlb/workers/+/in/#")
        try:
            yield router, worker, fuzzer
        finally:
            for client in (worker, fuzzer):
                client.close()
            router.stop()


HUGE = json.dumps({"pool": "default", "weight": 1e308}).encode()


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(beats=st.lists(st.tuples(publishable, body), min_size=1, max_size=6))
@example(beats=[("f1", HUGE), ("f2", HUGE)])  # weights whose sum overflows: this crashed every restart
@example(beats=[("f1", HUGE), ("f2", HUGE), ("f3", json.dumps({"pool": "default", "weight": 5e-324}).encode())])
def test_hostile_heartbeats_never_stop_a_live_router(live, beats: list[tuple[str, bytes]]) -> None:
    router, _, fuzzer = live
    for worker_id, heartbeat in beats:
        fuzzer.publish(f"mqttlb/workers/{worker_id}/heartbeat", heartbeat, retain=True)
    marker = orjson.dumps(len(fuzzer.messages()))
    for suffix in ("telemetry", "logs", "random"):
        fuzzer.publish(f"devices/probe/{suffix}", marker)

    def forwarded() -> set[str]:
        return {m.topic.rsplit("/", 1)[1] for m in fuzzer.messages()
                if m.payload == marker and m.topic.startswith("mqttlb/workers/")}
    # w1 is always up, so each route forwards its probe at once, to w1 or to a fuzzed worker that is up.
    wait_for(lambda: router.process.poll() is not None or forwarded() == {"telemetry", "logs", "random"},
             what="every route forwarding after hostile heartbeats")
    assert router.process.poll() is None, router.log()[-3000:]
    assert "Traceback" not in router.log()
    for worker_id, _ in beats:  # the next example starts from w1 alone
        fuzzer.publish(f"mqttlb/workers/{worker_id}/heartbeat", b"", retain=True)
