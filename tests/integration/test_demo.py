"""`mqttlb demo` end to end and its cleanup; the rules of its summary are in tests/unit/test_demo.py."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mqttlb.commands import demo

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
    reclaimed = re.search(r"^reclaimed: (\d+) of w1's messages by the router's count, (\d+) seen arriving at other "
                          r"workers$", out, re.M)
    assert reclaimed is not None and reclaimed.group(1) == reclaimed.group(2) and int(reclaimed.group(1)) > 0, out
    assert re.search(r"^stranded: 0$", out, re.M), out
    assert re.search(r"^in order: yes$", out, re.M), out
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
