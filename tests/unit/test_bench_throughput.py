"""``mqttlb bench``, its pure part: the table, and the p99 each system adds to the broker's own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mqttlb.commands.bench_throughput import Result, medians, router_config, table
from mqttlb.commands.cli import _parser
from mqttlb.core.config import parse


def result(system: str, qos: int, rate: float, p99: float, cpu: float | None = 1.0) -> Result:
    return Result(system, qos, 1000, 1000, rate, 500.0, 0.2, p99, cpu, 40.0 if cpu else None, 41.0 if cpu else None)


def test_the_table_says_what_each_system_adds_to_shareds_p99() -> None:
    text = table([result("mqttlb", 0, 4000, 1.25), result("relay", 0, 1000, 9.0), result("shared", 0, 9000, 0.5, None),
                  result("mqttlb", 1, 2000, 0.75)])
    rows = {tuple(line.split()[:2]): line.split() for line in text.splitlines()[3:]}
    assert rows[("mqttlb", "0")][3:8] == ["4.00", "500", "0.20", "1.25", "0.75"]
    assert rows[("relay", "0")][7] == "8.50"
    assert rows[("shared", "0")][7] == "-"
    assert rows[("mqttlb", "1")][7] == "-"  # no shared run at QoS 1: nothing to compare with
    assert "+p99 ms" in text.splitlines()[2]


def test_rounds_are_summed_up_as_medians_per_system_and_qos() -> None:
    rounds = [replace(result("mqttlb", 0, rate, p99, cpu), round=n, delivered=delivered)
              for n, (rate, p99, cpu, delivered) in enumerate([(4000, 1.0, 1.2, 1000), (5000, 3.0, 1.0, 990),
                                                               (3000, 2.0, 1.1, 1000)])]
    shared = [replace(result("shared", 0, 9000, 0.5, None), round=n) for n in range(3)]
    summed = {r.system: r for r in medians(rounds + shared)}
    mqttlb = summed["mqttlb"]
    assert (mqttlb.msgs_per_second, mqttlb.p99_ms, mqttlb.cpu_seconds_per_100k) == (4000, 2.0, 1.1)
    assert mqttlb.delivered == 990  # the worst round's: a loss in any round shows
    assert summed["shared"].cpu_seconds_per_100k is None
    assert "medians of 3 rounds" in table(list(summed.values()), 3).splitlines()[0]


def test_the_bench_takes_a_number_of_rounds() -> None:
    assert _parser().parse_args(["bench", "--repeat", "3"]).repeat == 3
    assert _parser().parse_args(["bench"]).repeat == 1
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", "--repeat", "0"])


@pytest.mark.parametrize("qos", [0, 1])
def test_the_routers_config_is_one_the_router_takes(qos: int) -> None:
    broker: Any = SimpleNamespace(host="127.0.0.1", port=18830)
    config = parse(router_config(broker, qos), base_dir=Path("."), environ={})
    assert config.broker.session_expiry == 0 and config.routes[0].qos == qos
