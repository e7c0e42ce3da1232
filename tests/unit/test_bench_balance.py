"""``mqttlb bench balance`` on a few keys: the figures are there and say what the algorithms promise."""

from __future__ import annotations

import orjson
import pytest

from mqttlb.commands.bench_balance import UHashRing, assign, pool
from mqttlb.commands.cli import main


def test_bench_balance_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "balance", "--keys", "3000", "--workers", "10,200", "--json"]) == 0
    figures = {f["algorithm"]: f for f in orjson.loads(capsys.readouterr().out)}
    assert {"consistent_hash", "ring"} <= set(figures)
    ours = figures["consistent_hash"]
    assert ours["add_moves_only_to_newcomer"] and ours["remove_moves_only_its_keys"]
    assert ours["moved_on_remove"] == 1.0
    assert ours["weight_error_points"] < 3
    assert [s["workers"] for s in ours["scales"]] == [10, 200]
    for scale in ours["scales"]:
        assert scale["warm_picks_per_second"] > scale["cold_picks_per_second"]
        assert scale["after_join_picks_per_second"] > scale["cold_picks_per_second"]  # the cache was kept
        assert scale["after_leave_picks_per_second"] > scale["cold_picks_per_second"]
        assert scale["after_weight_picks_per_second"] > scale["cold_picks_per_second"]


def test_bench_balance_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "balance", "--keys", "500", "--workers", "10,100"]) == 0
    out = capsys.readouterr().out
    assert "100 workers" in out and "consistent_hash" in out and "ring" in out
    assert "peak/mean (a fair die: " in out and "picks/s, after a leave" in out


def test_uhashring_adapter_follows_updates() -> None:
    hash_ring = pytest.importorskip("uhashring").HashRing
    ring = UHashRing(hash_ring)
    ring.update(pool(3))
    keys = [f"device-{i}" for i in range(300)]
    assert set(assign(ring, keys).values()) == set(pool(3))
    ring.update({**pool(2), "worker-9": 2.0})
    assert set(assign(ring, keys).values()) == {"worker-0", "worker-1", "worker-9"}
