"""The command line: a bad config is refused with every problem, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

BAD = """\
broker:
  port: 99999
heartbeat:
  timeout: soon
routes:
  - name: a
    match: devices/{device}/telemetry
    algorithm: roundrobin
  - name: b
    match: "#"
    algorithm: round_robin
  - name: c
    match: devices/+/x
    algorithm: consistent_hash
"""


def mqttlb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mqttlb", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=30)


@pytest.mark.parametrize("command", ["check", "run"])
def test_bad_config_lists_every_problem_and_exits_2(tmp_path: Path, command: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = mqttlb(command, "-c", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert any("broker.port:" in line for line in lines)
    assert any("heartbeat.timeout:" in line for line in lines)
    assert any(line.endswith("routes[0].algorithm: unknown algorithm 'roundrobin'; expected one of consistent_hash, "
                             "least_connections, random, ring, round_robin, weighted_round_robin") for line in lines)
    assert any("routes[1].match:" in line and "loop" in line for line in lines)
    assert any("routes[2]" in line and "key" in line for line in lines)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("routes:\n  - match: [unclosed\n")
    result = mqttlb("check", "-c", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert ":2:" in result.stderr or ":3:" in result.stderr


def test_missing_file_is_a_config_problem(tmp_path: Path) -> None:
    result = mqttlb("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_the_default_config_is_valid() -> None:
    result = mqttlb("check")
    assert result.returncode == 0, result.stderr
