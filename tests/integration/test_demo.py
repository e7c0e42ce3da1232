"""`mqttlb demo` end to end, its cleanup, and the rules of its summary."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mqttlb.commands import demo
from mqttlb.commands.demo import VICTIM, Arrival, summarize

from .conftest import ROOT

pytestmark = pytest.mark.integration

FILES = re.compile(r"files in (\S+)")


def assert_all_gone(out: str) -> None:
    """No process of the demo runs any more (each has the demo's directory on its command line); it is removed."""
    found = FILES.search(out)
    assert found is not None, out
    workdir = found.group(1)
    leftovers = subprocess.run(["pgrep", "-af", workdir], capture_output=True, text=True)
    assert leftovers.stdout == "", f"the demo left processes running:\n{leftovers.stdout}"
    assert not Path(workdir).exists()


def test_demo_runs_end_to_end_and_cleans_up() -> None:
    result = subprocess.run([sys.executable, "-m", "mqttlb", "demo"], capture_output=True, text=True, cwd=ROOT,
                            timeout=90)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    sent = re.search(r"^sent (\d+), delivered (\d+), lost 0, duplicates \d+$", out, re.M)
    assert sent is not None and sent.group(1) == sent.group(2) and int(sent.group(1)) > 1000, out
    assert re.search(r"^moved: [1-9]\d* devices, all of them w1's: yes$", out, re.M), out
    assert re.search(r"^stayed: yes \(\d+ devices", out, re.M), out
    assert re.search(r"^failover: \d+ ms$", out, re.M), out
    rows = re.findall(r"^(w[123]) +([\d.]+) +(\d+) +(\d+) +(\d+) +([\d.]+)%", out, re.M)
    assert [row[0] for row in rows] == ["w1", "w2", "w3"], out
    assert rows[0][3] == "0"  # the killed worker serves no device at the end
    assert sum(int(row[2]) for row in rows) == sum(int(row[3]) for row in rows) == 100
    assert "demo: ok" in out
    assert_all_gone(out)


def test_an_interrupted_demo_stops_everything_it_started() -> None:
    process = subprocess.Popen([sys.executable, "-m", "mqttlb", "demo"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:  # line-buffered: each step shows as it happens
        lines.append(line)
        if "devices publishing" in line:
            break
    process.send_signal(signal.SIGINT)  # to the demo alone: it must stop its children itself
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert_all_gone("".join(lines) + out)


def test_without_mosquitto_the_demo_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def missing() -> str:
        raise FileNotFoundError("Mosquitto is not installed: run 'apt-get install mosquitto'")

    monkeypatch.setattr(demo, "find_mosquitto", missing)
    assert demo.main(argparse.Namespace()) == 1
    assert capsys.readouterr().err.strip() == "Mosquitto is not installed: run 'apt-get install mosquitto'"


# -- the summary's rules, on made-up arrivals -------------------------------------------------


def arrivals(*spec: tuple[str, str, int, float]) -> list[Arrival]:
    """(worker, device, seq, at) on the sticky route."""
    return [Arrival(worker, "telemetry", device, seq, at) for worker, device, seq, at in spec]


def expected(*pairs: tuple[str, int]) -> set[tuple[str, str, int]]:
    return {("telemetry", device, seq) for device, count in pairs for seq in range(count)}


def test_a_clean_failover_has_no_problems() -> None:
    got = arrivals((VICTIM, "a", 0, 1.0), ("w2", "b", 0, 1.0), ("w3", "c", 0, 1.0),
                   (VICTIM, "a", 1, 5.01),  # routed to the victim before the router heard: waits in its session
                   ("w3", "a", 2, 5.05), ("w2", "b", 1, 6.0), ("w3", "c", 1, 6.0))
    summary = summarize(got, expected(("a", 3), ("b", 2), ("c", 2)), {"telemetry"}, killed=5.0)
    assert summary.problems == []
    assert (summary.sent, summary.delivered, summary.lost, summary.duplicates) == (7, 7, 0, 0)
    assert summary.moved == summary.victim_devices == {"a"}
    assert summary.stayed == 2 and summary.waiting == 1
    assert summary.failover == pytest.approx(0.05)
    rows = {row.worker: (row.devices_before, row.devices_after, row.messages) for row in summary.rows}
    assert rows == {"w1": (1, 0, 2), "w2": (1, 1, 2), "w3": (1, 2, 3)}


def test_loss_duplicates_and_a_device_that_wandered_are_reported() -> None:
    got = arrivals((VICTIM, "a", 0, 1.0), ("w2", "b", 0, 1.0), ("w2", "b", 0, 1.1),
                   ("w3", "a", 1, 6.0), ("w3", "b", 1, 6.0))
    summary = summarize(got, expected(("a", 3), ("b", 2)), {"telemetry"}, killed=5.0)
    assert (summary.lost, summary.duplicates) == (1, 1)
    assert summary.strays == {"b"} and summary.stayed == 0
    assert any("never reached a worker" in p for p in summary.problems)
    assert any("the devices that moved are not exactly" in p for p in summary.problems)
    assert any("more than one worker: b" in p for p in summary.problems)


def test_a_victim_without_devices_is_a_failed_demo() -> None:
    summary = summarize(arrivals(("w2", "b", 0, 1.0)), expected(("b", 1)), {"telemetry"}, killed=5.0)
    assert summary.problems == [f"{VICTIM} served no device before the kill"]
    assert summary.failover is None
