"""``mqttlb bench balance`` on a few keys: the figures are there and say what the algorithms promise."""

from __future__ import annotations

import orjson
import pytest

from mqttlb.cli import main


def test_bench_balance_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "balance", "--keys", "3000", "--json"]) == 0
    figures = {f["algorithm"]: f for f in orjson.loads(capsys.readouterr().out)}
    assert {"consistent_hash", "ring"} <= set(figures)
    ours = figures["consistent_hash"]
    assert ours["add_moves_only_to_newcomer"] and ours["remove_moves_only_its_keys"]
    assert ours["moved_on_remove"] == 1.0
    assert ours["weight_error_points"] < 3
    assert ours["warm_picks_per_second_100"] > ours["cold_picks_per_second_100"]


def test_bench_balance_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "balance", "--keys", "500"]) == 0
    out = capsys.readouterr().out
    assert "peak/mean, 100 workers" in out and "consistent_hash" in out and "ring" in out
