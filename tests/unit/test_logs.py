"""Rate-limited logging: a flood of remote input, or a worker that flaps, cannot flood the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mqttlb.core.config import parse
from mqttlb.core.pool import Departure, Health
from mqttlb.logs import RateLimited
from mqttlb.service import Service

log = logging.getLogger("test.logs")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == log.name]


def test_one_line_per_key_per_interval_with_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimited(log, interval=10.0)
    with caplog.at_level(logging.INFO):
        for second in range(25):
            limited.info("a", float(second), "a happened")
    assert lines(caplog) == ["a happened", "a happened (9 more like it suppressed)",
                             "a happened (9 more like it suppressed)"]


def test_a_flood_of_new_keys_is_bounded_and_its_table_too(caplog: pytest.LogCaptureFixture) -> None:
    """Forgetting every key at 1,000 let a flood of more ids than that log a line for each."""
    limited = RateLimited(log, interval=10.0)
    with caplog.at_level(logging.INFO):
        for i in range(20_000):
            limited.warning(f"worker-{i}", i / 2_000, "bad heartbeat from worker-%d", i)  # 2,000 new ids a second
    logged = lines(caplog)
    assert len(logged) <= RateLimited.MAX_KEYS + 1, len(logged)
    assert len(limited._last) <= RateLimited.MAX_KEYS + 1
    with caplog.at_level(logging.INFO):
        caplog.clear()
        limited.warning("late", 30.0, "after a quiet interval")  # the old keys are forgotten: room again
    assert lines(caplog) == ["after a quiet interval"]


def test_a_flapping_worker_logs_a_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    config = parse({"routes": [{"match": "devices/{device}/telemetry", "key": "device"}],
                    "metrics": {"listen": None}}, base_dir=Path("."), environ={})
    service = Service(config, clock=lambda: now[0])
    try:
        with caplog.at_level(logging.INFO, logger="mqttlb"):
            for _ in range(20):  # down every second, as a worker whose process restarts in a loop
                service._departed(Departure("w1", "default", Health.DOWN, 0))
                service._departed(Departure("w2", "default", Health.DOWN, 0))
                now[0] += 1.0
        said = [record.getMessage() for record in caplog.records if "of pool default is down" in record.getMessage()]
        assert len([line for line in said if line.startswith("worker w1 ")]) == 2, said
        assert len([line for line in said if line.startswith("worker w2 ")]) == 2, said
        assert said[-1].endswith("(9 more like it suppressed)")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mqttlb"):  # within the interval, but it stranded messages
            service._departed(Departure("w1", "default", Health.DOWN, 5))
        assert [record.levelname for record in caplog.records if "It held about 5" in record.getMessage()] == [
            "WARNING"]
    finally:
        service.transport.close(0)
