"""``mqttlb run --processes``: how many routers pay on a machine, the warning when there are more, and how soon
one that crashed starts again."""

from __future__ import annotations

import argparse

import pytest

from mqttlb.commands.cli import _parser
from mqttlb.processes import AUTO, auto_count, broker_is_local, count_option, restart_delay, too_many


@pytest.mark.parametrize(("host", "local"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                             ("127.0.1.1", True), ("10.0.0.5", False), ("mqtt.example.com", False)])
def test_broker_is_local_when_its_address_is_loopback(host: str, local: bool) -> None:
    assert broker_is_local(host) is local


def test_auto_leaves_the_broker_a_core_when_it_runs_here() -> None:
    assert auto_count("127.0.0.1", 2) == 1
    assert auto_count("127.0.0.1", 8) == 7
    assert auto_count("127.0.0.1", 1) == 1
    assert auto_count("mqtt.example.com", 2) == 2
    assert auto_count("mqtt.example.com", 1) == 1


def test_too_many_routers_for_the_cores_are_warned_about() -> None:
    warning = too_many(2, "127.0.0.1", 2)
    assert warning is not None
    assert "2 routers and the broker on 2 cores" in warning and "--processes auto" in warning
    assert too_many(2, "127.0.0.1", 4) is None
    assert too_many(2, "mqtt.example.com", 2) is None
    assert too_many(3, "mqtt.example.com", 2) == ("3 routers on 2 cores: the routers past 2 have no core of their "
                                                  "own and may make the whole slower "
                                                  "(--processes auto picks the count)")


def test_processes_option_takes_a_count_or_auto() -> None:
    assert _parser().parse_args(["run", "--processes", "auto"]).processes == AUTO
    assert _parser().parse_args(["run", "--processes", "3"]).processes == 3
    assert _parser().parse_args(["run"]).processes == 1
    for bad in ("0", "-1", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            count_option(bad)


def test_a_router_that_keeps_crashing_waits_longer_each_time_up_to_a_minute() -> None:
    assert [restart_delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert restart_delay(10_000) == 60  # no overflow, however long the loop
