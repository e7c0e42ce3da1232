"""The deployment files, checked as far as this machine can without Docker: they parse, name files that
exist, and run the commands, config and health check that the tests run."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mqttlb.commands import cli
from mqttlb.core.config import load
from mqttlb.service import SHUTDOWN_GRACE

ROOT = Path(__file__).resolve().parents[2]
CONFIG_IN_IMAGE = "/etc/mqttlb/mqttlb.yaml"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) in order, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def instruction(name: str) -> list[str]:
    return [arguments for found, arguments in dockerfile() if found == name]


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_the_image_is_slim_python_and_runs_as_a_user_that_is_not_root() -> None:
    (base,) = instruction("FROM")
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base)
    (user,) = instruction("USER")
    assert user not in ("root", "0")


def test_the_image_runs_the_command_the_tests_run_with_the_deploy_config() -> None:
    (entrypoint,), (command,) = instruction("ENTRYPOINT"), instruction("CMD")
    assert json.loads(entrypoint) == ["python", "-m", "mqttlb"]  # as RouterProcess runs it, sys.executable aside
    assert json.loads(command) == ["run", "-c", CONFIG_IN_IMAGE]
    assert f"deploy/mqttlb.yaml {CONFIG_IN_IMAGE}" in instruction("COPY")


def test_what_the_image_copies_exists_and_is_not_docker_ignored() -> None:
    ignored = {line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"}
    for arguments in instruction("COPY"):
        for source in arguments.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert source.split("/")[0] not in ignored, source
    assert {".venv", ".git", "tests"} <= ignored


def test_the_deploy_config_is_valid_and_serves_metrics_on_the_exposed_port() -> None:
    config = load(ROOT / "deploy" / "mqttlb.yaml")
    assert config.broker.host == "mosquitto"  # the compose service
    assert config.metrics.listen == ("0.0.0.0", 9108)
    assert instruction("EXPOSE") == ["9108"]
    (healthcheck,) = instruction("HEALTHCHECK")
    assert "http://127.0.0.1:9108/healthz" in healthcheck


def test_compose_runs_mosquitto_the_router_and_two_workers_from_files_that_exist() -> None:
    services = compose()["services"]
    assert set(services) == {"mosquitto", "router", "worker-1", "worker-2"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name}: {source}"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file()
    parser = cli._parser()
    router = parser.parse_args(services["router"]["command"])
    assert (router.command, router.config) == ("run", CONFIG_IN_IMAGE)
    workers = [parser.parse_args(services[name]["command"]) for name in ("worker-1", "worker-2")]
    assert {(w.command, w.id, w.config) for w in workers} == {("worker", "w1", CONFIG_IN_IMAGE),
                                                              ("worker", "w2", CONFIG_IN_IMAGE)}
    assert all(f"{CONFIG_IN_IMAGE}:ro" in " ".join(s["volumes"]) for s in (services["router"], *[
        services[name] for name in ("worker-1", "worker-2")]))
    assert services["router"]["stop_grace_period"] == "20s"  # longer than the router's own grace


def test_compose_mounts_our_mosquitto_config() -> None:
    volumes = compose()["services"]["mosquitto"]["volumes"]
    assert "./deploy/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in volumes


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(ROOT / "deploy" / "mqttlb.service")
    return parser


def test_the_systemd_unit_runs_the_router_as_its_own_user_and_waits_for_its_grace() -> None:
    service = unit()["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/mqttlb")
    arguments = cli._parser().parse_args(command[1:])
    assert (arguments.command, arguments.config) == ("run", CONFIG_IN_IMAGE)
    assert service["User"] not in ("root", "0")
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > SHUTDOWN_GRACE
    assert service["RestartPreventExitStatus"] == "2"  # a bad config file: restarting will not help


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    executable = shutil.which("mqttlb") or shutil.which("python3")
    assert executable is not None
    text = (ROOT / "deploy" / "mqttlb.service").read_text().replace("/opt/mqttlb/bin/mqttlb", executable)
    (tmp_path / "mqttlb.service").write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "mqttlb.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
