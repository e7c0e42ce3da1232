"""``mqttlb bench``, its pure part: the table, and the p99 each system adds to the broker's own."""

from __future__ import annotations

from mqttlb.commands.bench_throughput import Result, table


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
