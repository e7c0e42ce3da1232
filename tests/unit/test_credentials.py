"""``mqttlb credentials``: Mosquitto's password format, the ACL each identity gets, updates, refusals.

That Mosquitto itself accepts these files, and enforces them, is shown by
tests/integration/test_security.py; here the files are checked as text.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from mqttlb.commands.cli import main
from mqttlb.commands.credentials import hash_password

ROUTES = [{"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device"},
          {"name": "logs", "match": "devices/+/logs/#", "algorithm": "round_robin"}]
ROUTER_RULES = ["topic read devices/+/telemetry", "topic read devices/+/logs/#",
                "topic read mqttlb/workers/+/heartbeat", "topic read mqttlb/routers/+/heartbeat",
                "topic read mqttlb/router/sync",
                "topic read mqttlb/workers/+/in/#",  # reclaim: what a departed worker's session holds
                "topic write mqttlb/workers/+/in/#", "topic write mqttlb/deadletter/+/#", "topic write mqttlb/stats",
                "topic write mqttlb/stats/+",  # the instances' of run --processes: mqttlb/stats/<i>
                "topic write mqttlb/routers/+/heartbeat"]  # its own, its instances', its share group's
DEVICES = "Devices write under their own id and read nothing."

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A router config whose password and TLS files do not exist yet, as on the day the users are made."""
    (tmp_path / "router.yaml").write_text(yaml.safe_dump({
        "broker": {"username": "mqttlb-router", "password_file": "missing.secret", "tls": {"ca_certs": "no.crt"}},
        "routes": ROUTES}))
    return tmp_path


@pytest.fixture
def run(folder: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    """``mqttlb credentials`` on the folder's files: exit status, stdout, stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def credentials(*args: str, config: str = "router.yaml") -> tuple[int, str, str]:
        code = main(["credentials", "-c", str(folder / config), "--password-file", str(folder / "passwd"),
                     "--acl-file", str(folder / "acl"), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield credentials
    root.handlers[:], root.level = handlers, level  # the command sets up logging for itself


def users(folder: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in (folder / "passwd").read_text().splitlines())


def verifies(hashed: str, password: str) -> bool:
    """What Mosquitto does with a ``$7$`` entry."""
    _, kind, iterations, salt, digest = hashed.split("$")
    computed = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    return kind == "7" and base64.b64encode(computed).decode() == digest


def acl_blocks(folder: Path) -> dict[str, list[str]]:
    """The ACL's blocks (between blank lines) by their comment line, without the file's header."""
    blocks: dict[str, list[str]] = {}
    for block in (folder / "acl").read_text().split("\n\n")[1:]:
        comment, *lines = block.strip().splitlines()
        blocks[comment.removeprefix("# ")] = lines
    return blocks


def test_the_hash_is_the_one_mosquitto_passwd_writes() -> None:
    # mosquitto_passwd 2.0.11: mosquitto_passwd -c -b file alice s3cret
    written = ("$7$101$8J60bf31TjoCadYB$LL+DF62Tae5SbN1U658E6cARCoPFziV56lSkPIiLWe63S3z2nBeEsjFOEh"
               "Q1mGZGteiGDa8uqgfsRWCrV1TNYw==")
    salt = base64.b64decode(written.split("$")[3])
    assert hash_password("s3cret", salt) == written
    fresh = hash_password("s3cret")
    assert fresh != written and verifies(fresh, "s3cret") and not verifies(fresh, "s3cre7")


def test_first_run_makes_both_files_and_prints_each_new_password_once(run: Run, folder: Path) -> None:
    code, out, err = run("--router", "--worker", "w1", "--device", "d1", "--monitor", "ops")
    assert code == 0, err
    printed = dict(line.split(":", 1) for line in out.splitlines())
    assert list(printed) == ["mqttlb-router", "mqttlb-worker-w1", "d1", "ops"]
    assert len(set(printed.values())) == 4 and all(len(p) >= 32 for p in printed.values())
    stored = users(folder)
    assert all(verifies(stored[user], password) for user, password in printed.items())
    assert not any(password in err for password in printed.values())
    for name in ("passwd", "acl"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o640
    assert acl_blocks(folder) == {
        DEVICES: ["pattern write devices/%u/#"],
        "router mqttlb-router": ["user mqttlb-router", *ROUTER_RULES],
        "worker w1": ["user mqttlb-worker-w1", "topic read mqttlb/workers/w1/in/#",
                      "topic write mqttlb/workers/w1/heartbeat"],
        "monitor ops": ["user ops", "topic read mqttlb/deadletter/+/#", "topic read mqttlb/stats",
                        "topic read mqttlb/stats/+", "topic read mqttlb/workers/+/heartbeat",
                        "topic read mqttlb/routers/+/heartbeat"],
    }


def test_a_later_run_keeps_what_is_there_and_follows_the_config(run: Run, folder: Path) -> None:
    assert run("--router", "--worker", "w1", "--device", "d1", "--device-topic", "sensors/%u/#")[0] == 0
    before = users(folder)
    (folder / "passwd").chmod(0o600)
    config = yaml.safe_load((folder / "router.yaml").read_text())
    config["routes"].append({"name": "jobs", "match": "jobs/{job}", "key": "job",
                             "forward": "mqttlb/pools/{pool}/{worker}/{topic}"})
    (folder / "router.yaml").write_text(yaml.safe_dump(config))
    code, out, _ = run("--worker", "w2", "--device", "d2")
    assert code == 0 and [line.split(":")[0] for line in out.splitlines()] == ["mqttlb-worker-w2", "d2"]
    after = users(folder)
    assert {user: after[user] for user in before} == before  # the others keep their passwords
    assert stat.S_IMODE((folder / "passwd").stat().st_mode) == 0o600
    blocks = acl_blocks(folder)
    assert blocks[DEVICES] == ["pattern write sensors/%u/#"]  # kept, though not given again
    assert "topic read jobs/+" in blocks["router mqttlb-router"]
    assert "topic read mqttlb/pools/+/+/#" in blocks["router mqttlb-router"]  # every worker's inbox, for reclaim
    assert "topic write mqttlb/pools/+/+/#" in blocks["router mqttlb-router"]
    assert blocks["worker w2"] == ["user mqttlb-worker-w2", "topic read mqttlb/workers/w2/in/#",
                                   "topic read mqttlb/pools/+/w2/#", "topic write mqttlb/workers/w2/heartbeat"]
    assert "worker w1" in blocks


def test_naming_a_user_again_resets_its_password_and_remove_revokes(run: Run, folder: Path) -> None:
    assert run("--worker", "w1", "--device", "d1", "--device", "d2")[0] == 0
    first = users(folder)
    code, out, _ = run("--device", "d1", "--remove", "d2", "--remove", "mqttlb-worker-w1")
    assert code == 0
    assert set(users(folder)) == {"d1"} and users(folder)["d1"] != first["d1"]
    assert verifies(users(folder)["d1"], out.strip().split(":", 1)[1])
    assert "worker w1" not in acl_blocks(folder)


def test_passwords_from_a_secrets_file_are_not_printed(run: Run, folder: Path) -> None:
    (folder / "secrets").write_text("# given by the fleet's provisioning\nd1:pass:with:colons\nops:opspass\n")
    code, out, err = run("--device", "d1", "--monitor", "ops", "--secrets", str(folder / "secrets"))
    assert code == 0 and out == "" and "pass:with:colons" not in err
    assert verifies(users(folder)["d1"], "pass:with:colons") and verifies(users(folder)["ops"], "opspass")
    code, _, err = run("--device", "d3", "--secrets", str(folder / "secrets"))
    assert code == 2 and f"--secrets {folder / 'secrets'}: no password for d3" in err
    assert "d3" not in users(folder)


def test_reclaim_rules_follow_the_configured_topics(run: Run, folder: Path) -> None:
    """The router reads every inbox (a departed worker's session is delivered to it) and reads and writes the
    routers' heartbeats; monitors read those too; a worker gets nothing for reclaim."""
    config = yaml.safe_load((folder / "router.yaml").read_text())
    config["router"] = {"heartbeat_topic": "fleet/routers/+/hb"}
    config["routes"][1]["forward"] = "out/{pool}/{worker}/{topic}"
    (folder / "router.yaml").write_text(yaml.safe_dump(config))
    assert run("--router", "--worker", "w1", "--monitor", "ops")[0] == 0
    blocks = acl_blocks(folder)
    router = blocks["router mqttlb-router"]
    assert [rule for rule in router if "/in/" in rule or "out/" in rule or "routers" in rule] == [
        "topic read fleet/routers/+/hb", "topic read mqttlb/workers/+/in/#", "topic read out/+/+/#",
        "topic write mqttlb/workers/+/in/#", "topic write out/+/+/#", "topic write fleet/routers/+/hb"]
    assert "topic read fleet/routers/+/hb" in blocks["monitor ops"]
    assert blocks["worker w1"] == ["user mqttlb-worker-w1", "topic read mqttlb/workers/w1/in/#",
                                   "topic read out/+/w1/#", "topic write mqttlb/workers/w1/heartbeat"]
    code, _, err = run("--device-topic", "fleet/routers/%u/hb")
    assert code == 2 and "devices could write the routers' heartbeats (fleet/routers/+/hb)" in err


@pytest.mark.parametrize("args, problem", [
    (["--device", "a/b"], "--device 'a/b': name holds forbidden character U+002F"),
    (["--device", "d+"], "--device 'd+': name holds forbidden character U+002B"),
    (["--worker", "w#"], "--worker 'w#': name holds forbidden character U+0023"),
    (["--device", "a\x00b"], "--device 'a\\x00b': name holds forbidden character U+0000"),
    (["--device", "a b"], "--device 'a b': name holds ':' or a space"),
    (["--monitor", "a:b"], "--monitor 'a:b': name holds ':' or a space"),
    (["--device", ""], "--device '': empty name"),
    (["--device", "x" * 257], "name longer than 256 bytes"),
    (["--device", "mqttlb-worker-w1"], "reserved: device ids may not start with 'mqttlb-'"),
    (["--device", "mqttlb-router-fleet"], "reserved"),
    (["--device-topic", "%u/#"], "devices could write the workers' heartbeats (mqttlb/workers/+/heartbeat)"),
    (["--device-topic", "mqttlb/stats/%u"], "devices could write the stats (mqttlb/stats/+)"),
    (["--device-topic", "mqttlb/routers/%u/heartbeat"],  # a device d1 would announce a router d1, and its session
     "devices could write the routers' heartbeats (mqttlb/routers/+/heartbeat)"),
    (["--device-topic", "devices/+/#"], "needs %u as one whole level, and no other %"),
    (["--device-topic", "devices/%c/#"], "needs %u as one whole level"),
    (["--device-topic", "devices/%u/#/x"], "'#' may only be the last level"),
    (["--remove", "nobody"], "--remove 'nobody': no such user"),
])
def test_refusals_name_the_place_and_write_nothing(run: Run, folder: Path, args: list[str], problem: str) -> None:
    code, out, err = run(*args)
    assert (code, out) == (2, "") and problem in err
    assert not (folder / "passwd").exists() and not (folder / "acl").exists()


def edge_router(folder: Path) -> str:
    """A config whose router client id, ``edge-router``, lies outside the ``mqttlb-`` prefix."""
    (folder / "edge.yaml").write_text(yaml.safe_dump({"broker": {"client_id": "edge-router"}, "routes": ROUTES}))
    return "edge.yaml"


@pytest.mark.parametrize("device, clash", [
    ("edge-router", "the client id of the router's session"),
    ("edge-router-fleet", "the client id of the router's publishing connection"),
    ("edge-router-0", "the client id of router instance 0's session (mqttlb run --processes)"),
    ("edge-router-7-fleet", "the client id of router instance 7's publishing connection (mqttlb run --processes)"),
    ("edge-router-beats", "the client id of the router's heartbeat connection"),
    ("edge-router-check", "it starts with 'edge-router-'"),  # mqttlb check --connect, and connections to come
    ("edge-router-", "it starts with 'edge-router-'"),
    ("mqttlb-worker-w1", "device ids may not start with 'mqttlb-'"),
])
def test_a_device_may_not_take_a_client_id_of_the_router(run: Run, folder: Path, device: str, clash: str) -> None:
    code, out, err = run("--device", "d1", "--device", device, config=edge_router(folder))
    assert (code, out) == (2, "")
    assert f"--device {device!r}: reserved: {clash}" in err
    if device.startswith("edge-router"):
        assert "the router keeps 'edge-router' and every 'edge-router-...' for its own connections" in err
    assert not (folder / "passwd").exists() and not (folder / "acl").exists()


def test_names_beside_the_router_prefix_are_devices_like_any(run: Run, folder: Path) -> None:
    code, out, err = run("--device", "edge-router2", "--device", "edge", "--device", "router-0",
                         config=edge_router(folder))
    assert code == 0, err
    assert set(users(folder)) == {"edge-router2", "edge", "router-0"}


def test_a_device_and_a_worker_may_not_share_an_id(run: Run, folder: Path) -> None:
    assert run("--worker", "w1", "--device", "d1")[0] == 0
    code, _, err = run("--device", "w1")
    assert code == 2 and "--device 'w1': reserved: a worker's id" in err
    code, _, err = run("--worker", "d1")
    assert code == 2 and "--worker 'd1': reserved: a device has this name" in err
    code, _, err = run("--worker", "w2", "--device", "w2")
    assert code == 2 and "--device 'w2': reserved" in err and "--worker 'w2': reserved" in err
    assert set(users(folder)) == {"mqttlb-worker-w1", "d1"}


def test_a_device_made_before_the_rule_is_pointed_out(run: Run, folder: Path) -> None:
    (folder / "passwd").write_text(f"edge-router-0:{hash_password('old')}\n")  # as the command once allowed
    code, _, err = run("--device", "d1", config=edge_router(folder))
    assert code == 0
    assert "device edge-router-0, already in" in err and "router instance 0's session" in err
    assert "remove it (--remove edge-router-0)" in err
    code, _, err = run("--remove", "edge-router-0", config=edge_router(folder))
    assert code == 0 and "edge-router-0" not in err and set(users(folder)) == {"d1"}


def test_a_user_keeps_its_role(run: Run, folder: Path) -> None:
    assert run("--device", "d1", "--monitor", "ops")[0] == 0
    code, _, err = run("--monitor", "d1")
    assert code == 2 and "--monitor 'd1': user d1 is a device already" in err
    code, _, err = run("--device", "ops")
    assert code == 2 and "--device 'ops': user ops is a monitor already" in err


def test_an_acl_file_written_by_hand_is_not_overwritten(run: Run, folder: Path) -> None:
    (folder / "acl").write_text("user admin\ntopic readwrite #\n")
    code, _, err = run("--device", "d1")
    assert code == 2 and "not written by mqttlb credentials" in err
    assert (folder / "acl").read_text() == "user admin\ntopic readwrite #\n"


def test_the_router_needs_a_user_name_and_the_config_must_be_valid(run: Run, folder: Path) -> None:
    (folder / "anonymous.yaml").write_text(yaml.safe_dump({"routes": ROUTES}))
    code, _, err = run("--router", config="anonymous.yaml")
    assert code == 2 and "--router: set broker.username in the config first" in err
    (folder / "bad.yaml").write_text(yaml.safe_dump({"routes": [{"match": "#", "algorithm": "round_robin"}]}))
    code, _, err = run("--device", "d1", config="bad.yaml")
    assert code == 2 and "routes[0]" in err
