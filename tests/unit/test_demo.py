"""The rules of ``mqttlb demo``'s summary, on made-up arrivals and stats: no broker, no processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mqttlb.commands.broker import mosquitto_dir
from mqttlb.commands.demo import VICTIM, Arrival, render, summarize
from mqttlb.core.config import parse

KILLED = 5.0
ROUTES = [{"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device"},
          {"name": "logs", "match": "devices/+/logs/#", "algorithm": "round_robin"}]


def arrivals(*spec: tuple[str, str, int, float]) -> list[Arrival]:
    """(worker, device, seq, at) on the sticky route."""
    return [Arrival(worker, "telemetry", device, seq, at) for worker, device, seq, at in spec]


def expected(*pairs: tuple[str, int]) -> set[tuple[str, str, int]]:
    return {("telemetry", device, seq) for device, count in pairs for seq in range(count)}


def stats(reclaimed: int | None, pending: str | None = None, stranded: int = 0) -> dict[str, Any]:
    """The parts of the router's stats snapshot the summary reads."""
    return {"reclaim": {"reclaimed": {"worker": {VICTIM: reclaimed}} if reclaimed is not None else {}, "returned": 0,
                        "pending": {f"worker/{VICTIM}": {"state": pending}} if pending else {}},
            "stranded": {"default": {VICTIM: stranded}} if stranded else {}}


def reclaimed_failover() -> list[Arrival]:
    """a was the victim's; its seq 1 and 2 were in the victim's session when it died, reclaimed to w3 at 7.0 s,
    before a's new messages, which waited for them."""
    return arrivals((VICTIM, "a", 0, 1.0), ("w2", "b", 0, 1.0), ("w3", "c", 0, 1.0),
                    (VICTIM, "a", 1, 4.5), (VICTIM, "a", 2, 5.01),  # held by the victim; one sent before the will
                    ("w3", "a", 1, 7.0), ("w3", "a", 2, 7.0),  # reclaimed
                    ("w3", "a", 3, 7.1), ("w2", "b", 1, 6.0), ("w3", "c", 1, 6.0))


def test_a_clean_failover_with_a_reclaim_has_no_problems() -> None:
    summary = summarize(reclaimed_failover(), expected(("a", 4), ("b", 2), ("c", 2)), {"telemetry"}, KILLED,
                        stats(2))
    assert summary.problems == []
    assert (summary.sent, summary.delivered, summary.lost, summary.duplicates) == (8, 8, 0, 0)
    assert (summary.reclaimed_seen, summary.reclaimed, summary.pending, summary.stranded) == (2, 2, None, 0)
    assert summary.inverted == 0
    assert summary.moved == summary.victim_devices == {"a"}
    assert summary.stayed == 2
    assert summary.failover == pytest.approx(2.0)
    rows = {row.worker: (row.devices_before, row.devices_after, row.messages) for row in summary.rows}
    assert rows == {"w1": (1, 0, 3), "w2": (1, 1, 2), "w3": (1, 2, 5)}


def test_a_reclaimed_message_that_arrives_twice_more_is_a_duplicate() -> None:
    got = [*reclaimed_failover(), *arrivals(("w3", "a", 1, 7.2))]
    summary = summarize(got, expected(("a", 4), ("b", 2), ("c", 2)), {"telemetry"}, KILLED, stats(2))
    assert (summary.duplicates, summary.reclaimed_seen, summary.inverted) == (1, 2, 0)


def test_a_session_not_reclaimed_or_stranded_messages_or_no_stats_are_problems() -> None:
    def problems(figures: dict[str, Any] | None) -> list[str]:
        return summarize(reclaimed_failover(), expected(("a", 4), ("b", 2), ("c", 2)), {"telemetry"}, KILLED,
                         figures).problems

    assert problems(stats(None, pending="reclaiming")) == [f"{VICTIM}'s session was not reclaimed by the end "
                                                           f"(its reclaim is reclaiming)"]
    assert problems(stats(None)) == [f"the router did not reclaim {VICTIM}'s session"]
    assert problems(stats(2, stranded=7)) == [f"the router counts 7 messages stranded in {VICTIM}'s session"]
    assert problems(None) == ["no stats from the router: what it reclaimed is unknown"]


def test_a_moved_device_whose_new_messages_overtook_what_was_reclaimed_is_out_of_order() -> None:
    got = arrivals((VICTIM, "a", 0, 1.0), (VICTIM, "a", 1, 4.5), ("w2", "b", 0, 1.0),
                   ("w3", "a", 2, 5.1),  # did not wait for the reclaim
                   ("w3", "a", 1, 7.0))
    summary = summarize(got, expected(("a", 3), ("b", 1)), {"telemetry"}, KILLED, stats(1))
    assert summary.inverted == 1
    assert summary.problems == [f"1 messages of {VICTIM}'s devices overtook older ones"]


def test_loss_duplicates_and_a_device_that_wandered_are_reported() -> None:
    got = arrivals((VICTIM, "a", 0, 1.0), ("w2", "b", 0, 1.0), ("w2", "b", 0, 1.1),
                   ("w3", "a", 1, 6.0), ("w3", "b", 1, 6.0))
    summary = summarize(got, expected(("a", 3), ("b", 2)), {"telemetry"}, KILLED, stats(0))
    assert (summary.lost, summary.duplicates) == (1, 1)
    assert summary.strays == {"b"} and summary.stayed == 0
    assert any("never reached a worker" in p for p in summary.problems)
    assert any("the devices that moved are not exactly" in p for p in summary.problems)
    assert any("more than one worker: b" in p for p in summary.problems)


def test_a_victim_without_devices_is_a_failed_demo() -> None:
    summary = summarize(arrivals(("w2", "b", 0, 1.0)), expected(("b", 1)), {"telemetry"}, KILLED, stats(0))
    assert summary.problems == [f"{VICTIM} served no device before the kill"]
    assert summary.failover is None


def test_the_text_says_how_many_were_reclaimed_that_none_is_stranded_and_the_order_held(tmp_path: Path) -> None:
    config = parse({"routes": ROUTES, "reclaim": {"after": "2s"}}, base_dir=tmp_path, environ={})
    summary = summarize(reclaimed_failover(), expected(("a", 4), ("b", 2), ("c", 2)), {"telemetry"}, KILLED,
                        stats(2))
    lines = render(summary, config, took=12.0, killed_at=7.0)
    assert "  At 6.0 s w1 hung (SIGSTOP) with messages in hand; at 7.0 s it was killed with SIGKILL:" in lines
    assert next(line for line in lines if line.startswith("w1 ")).endswith("(killed; 2 of them reclaimed)")
    assert "failover: 2000 ms" in lines
    assert any("reclaim.after (2 s) to come back" in line for line in lines)
    reclaimed = lines.index("reclaimed: 2 of w1's messages by the router's count, 2 seen arriving at other workers")
    assert lines[reclaimed + 1].startswith("  w1 died holding them in its session at the broker.")
    stranded = lines.index("stranded: 0")
    assert lines[stranded + 1].startswith("  messages left in w1's session")
    assert lines[stranded + 2] == "in order: yes"
    assert max(map(len, lines)) <= 110


def test_the_text_says_when_the_reclaim_was_not_over() -> None:
    summary = summarize(reclaimed_failover(), expected(("a", 4), ("b", 2), ("c", 2)), {"telemetry"}, KILLED,
                        stats(None, pending="waiting"))
    config = parse({"routes": ROUTES}, base_dir=Path("."), environ={})
    lines = render(summary, config, took=12.0, killed_at=7.0)
    assert "reclaimed: none of w1's messages by the router's count, 2 seen arriving at other workers" in lines
    assert "stranded: not yet known: the reclaim of w1's session is waiting" in lines


def test_the_broker_configs_are_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make demo`` and ``mqttlb bench`` start Mosquitto from the checkout's config wherever they are run from."""
    monkeypatch.chdir(tmp_path)
    assert (mosquitto_dir() / "dev.conf").is_file()
    assert (mosquitto_dir().parent / "config" / "mqttlb.yaml").is_file()
