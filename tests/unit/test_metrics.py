"""The Prometheus families and the health verdict made from a stats snapshot, without HTTP."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from mqttlb import metrics
from mqttlb.core.pool import Health, WorkerView
from mqttlb.core.stats import Backlog, Counters, Moment, snapshot
from mqttlb.metrics import STALLED, Pulse, families, health

from .test_stats import census_of, stats_of


def figures(*, connected: bool = True, stopping: bool = False, workers: list[WorkerView] | None = None,
            pools: tuple[str, ...] = ("default",), listed: bool = True) -> dict[str, Any]:
    counters = Counters()
    counters.forwarded.update({("telemetry", "w1"): 30, ("telemetry", "w2"): 60, ("logs", "w1"): 10})
    counters.dead_letters[("telemetry", "bad_key")] = 2
    counters.stranded[("default", "w2")] = 7
    counters.bad_heartbeats, counters.refused, counters.dropped = 3, 1, 0
    for seconds in (0.0004, 0.002, 0.002, 4.0):
        counters.forward_seconds.observe(seconds)
    if workers is None:
        workers = [WorkerView("w1", "default", Health.UP, 2.0, 5, 99.0),
                   WorkerView("w2", "default", Health.DOWN, 1.0, 0, 90.0)]
    return snapshot(router="r", moment=Moment(1.0, 100.0, 10.0, connected, stopping),
                    inbound=Backlog(unacked=12, held=4, peak=20, max_inflight=1000), counters=counters,
                    pools=pools, census=census_of(workers, {("gpu", "max_workers"): 4}),
                    workers=workers if listed else None, reconnects=2, awaiting_ack=8)


class _Fixed(Collector):
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        return iter(families(self._snapshot))


def scrape(snapshot: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition text, parsed back: (sample name, sorted labels) -> value."""
    registry = CollectorRegistry()
    registry.register(_Fixed(snapshot))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_spec_metrics_carry_the_snapshot() -> None:
    got = scrape(figures())
    assert got[("mqttlb_forwarded_total", (("route", "telemetry"), ("worker", "w2")))] == 60
    assert got[("mqttlb_forwarded_total", (("route", "logs"), ("worker", "w1")))] == 10
    assert got[("mqttlb_dead_letters_total", (("reason", "bad_key"), ("route", "telemetry")))] == 2
    assert got[("mqttlb_workers", (("pool", "default"), ("state", "up")))] == 1
    assert got[("mqttlb_workers", (("pool", "default"), ("state", "down")))] == 1
    assert got[("mqttlb_workers", (("pool", "default"), ("state", "timeout")))] == 0
    assert got[("mqttlb_connected", ())] == 1


def test_forward_seconds_is_a_histogram_with_cumulative_buckets() -> None:
    got = scrape(figures())
    assert got[("mqttlb_forward_seconds_bucket", (("le", "0.0005"),))] == 1
    assert got[("mqttlb_forward_seconds_bucket", (("le", "0.0025"),))] == 3
    assert got[("mqttlb_forward_seconds_bucket", (("le", "5.0"),))] == 4
    assert got[("mqttlb_forward_seconds_bucket", (("le", "+Inf"),))] == 4
    assert got[("mqttlb_forward_seconds_count", ())] == 4
    assert abs(got[("mqttlb_forward_seconds_sum", ())] - 4.0044) < 1e-9


def test_what_an_operator_needs_to_see_a_problem_coming() -> None:
    got = scrape(figures())
    w1 = (("pool", "default"), ("worker", "w1"))
    assert got[("mqttlb_worker_inflight", w1)] == 5
    assert got[("mqttlb_worker_weight", w1)] == 2.0
    assert got[("mqttlb_worker_heartbeat_age_seconds", w1)] == 1.0
    assert got[("mqttlb_worker_state", (("pool", "default"), ("state", "up"), ("worker", "w1")))] == 1
    assert got[("mqttlb_worker_state", (("pool", "default"), ("state", "draining"), ("worker", "w1")))] == 0
    assert got[("mqttlb_worker_state", (("pool", "default"), ("state", "down"), ("worker", "w2")))] == 1
    assert got[("mqttlb_stranded_messages_total", (("pool", "default"), ("worker", "w2")))] == 7
    assert got[("mqttlb_held_messages", ())] == 4
    assert got[("mqttlb_inbound_unacked", ())] == 12
    assert got[("mqttlb_inbound_unacked_peak", ())] == 20
    assert got[("mqttlb_inbound_unacked_max", ())] == 1000
    assert got[("mqttlb_forwards_in_flight", ())] == 8
    assert got[("mqttlb_reconnects_total", ())] == 2
    assert got[("mqttlb_bad_heartbeats_total", ())] == 3
    assert got[("mqttlb_forwards_refused_total", ())] == 1
    assert got[("mqttlb_lost_total", ())] == 0


def test_per_worker_series_only_while_the_fleet_is_listed() -> None:
    listed, unlisted = scrape(figures()), scrape(figures(listed=False))
    assert any(name.startswith("mqttlb_worker_") for name, _ in listed)
    assert not any(name.startswith("mqttlb_worker_") for name, _ in unlisted)
    assert unlisted[("mqttlb_workers", (("pool", "default"), ("state", "up")))] == 1  # the pools' counts stay
    assert unlisted[("mqttlb_forwarded_total", (("route", "telemetry"), ("worker", "w2")))] == 60


def test_refused_heartbeats_are_a_counter_by_pool_and_reason() -> None:
    got = scrape(figures())
    assert got[("mqttlb_heartbeats_refused_total", (("pool", "gpu"), ("reason", "max_workers")))] == 4
    assert scrape(stats_of([], refused={("+", "max_workers"): 1}))[
        ("mqttlb_heartbeats_refused_total", (("pool", "+"), ("reason", "max_workers")))] == 1


def pulse(*, connected: bool = True, stopping: bool = False, staffed: tuple[str, ...] = ("default",)) -> Pulse:
    return Pulse(connected, stopping, frozenset(staffed))


def test_healthy_when_connected_and_every_routed_pool_has_a_healthy_worker() -> None:
    verdict = health(pulse(), 0.1, ["default"])
    assert verdict.healthy and verdict.reason == "ok"


def test_a_pool_no_route_uses_does_not_count() -> None:
    assert health(pulse(), 0.1, ["default"]).healthy  # "spare" has no worker: no route needs one


def test_a_routed_pool_without_a_healthy_worker_is_named() -> None:
    verdict = health(pulse(staffed=("spare",)), 0.1, ["default", "gpu"])
    assert not verdict.healthy
    assert verdict.reason == "no healthy worker in pool default, gpu"


def test_every_problem_is_given() -> None:
    verdict = health(pulse(connected=False, staffed=()), STALLED + 1, ["default"])
    assert not verdict.healthy
    assert verdict.reason == ("the routing loop has not reported for 11s; not connected to the broker; "
                              "no healthy worker in pool default")


def test_starting_and_stopping_are_unhealthy() -> None:
    assert health(None, 0.0, ["default"]).reason == "starting"
    verdict = health(pulse(stopping=True), 0.1, ["default"])
    assert not verdict.healthy and verdict.reason == "stopping"


def test_healthz_is_answered_while_idle_clients_hold_every_slot() -> None:
    """32 connections that never send a request used to get every /healthz probe closed unanswered for as long
    as they stayed: an orchestrator then restarts a healthy router. The newest connection cuts the oldest off."""
    server = metrics.MetricsServer(("127.0.0.1", 0), ["default"])
    holders = [socket.create_connection(server.address, timeout=5) for _ in range(metrics.MAX_CLIENTS)]
    try:
        for holder in holders:
            holder.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        time.sleep(0.5)  # every holder has its slot
        server.beat(pulse())
        for _ in range(3):
            started = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{server.address[1]}/healthz", timeout=5) as answer:
                assert answer.status == 200
            assert time.monotonic() - started < metrics.CUT_WAIT + 1
        holders[0].settimeout(5)
        assert holders[0].recv(100) == b""  # the oldest was cut off to make room
    finally:
        for holder in holders:
            holder.close()
        server.close()


def test_clients_that_hold_connections_open_are_bounded_and_cut_off(monkeypatch: Any) -> None:
    """A slowloris on /metrics took every file descriptor the router had, one connection and thread each: then
    the broker's connection could not be made again, and accept() failing spun a core. At most MAX_CLIENTS are
    served at once, the rest closed at once, and each is cut off after its timeout."""
    monkeypatch.setattr(metrics._Quiet, "timeout", 1.0)
    server = metrics.MetricsServer(("127.0.0.1", 0), ["default"])
    holders: list[socket.socket] = []
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3 * metrics.MAX_CLIENTS):
            holder = socket.create_connection(server.address, timeout=5)
            holder.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            holders.append(holder)
        time.sleep(0.5)  # the server accepts them as they come

        def served() -> int:
            return len(os.listdir("/proc/self/fd")) - before - len(holders)

        # A connection cut off to make room holds its descriptor until its thread ends, which under load can
        # take a moment: the bound is what the count comes back to, not every instant of the burst.
        settle = time.monotonic() + 5
        while served() > metrics.MAX_CLIENTS + 2 and time.monotonic() < settle:
            time.sleep(0.05)
        assert served() <= metrics.MAX_CLIENTS + 2, served()
        deadline = time.monotonic() + 10
        for holder in holders:  # every one is closed by the server: at once, or after its timeout
            holder.settimeout(max(0.1, deadline - time.monotonic()))
            assert holder.recv(100) == b""
        with urllib.request.urlopen(f"http://127.0.0.1:{server.address[1]}/healthz", timeout=5) as answer:
            assert answer.status in (200, 503)
    except urllib.error.HTTPError as error:
        assert error.code == 503  # no pulse yet: unhealthy, but answered
    finally:
        for holder in holders:
            holder.close()
        server.close()
