"""A broker that refuses the router, and two routers that take each other's session: said once, plainly, with
the fix, in the log, /healthz, the stats topic and ``mqttlb status``; and ``mqttlb check --connect``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from mqttlb.commands.broker import PrivateBroker, free_port
from mqttlb.commands.credentials import hash_password

from .conftest import ROOT, Client, RouterProcess, TestWorker, wait_for, write_config
from .test_metrics import endpoint, get

pytestmark = pytest.mark.integration


@pytest.fixture
def locked_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """dev.conf with a password file: user ``router``, password ``right``."""
    workdir = tmp_path / "locked"
    workdir.mkdir()
    passwords = workdir / "passwd"
    passwords.write_text(f"router:{hash_password('right')}\n")
    passwords.chmod(0o600)
    with PrivateBroker(workdir=workdir, edits={"allow_anonymous true": f"allow_anonymous false\n"
                                                                        f"password_file {passwords}"}) as b:
        yield b


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mqttlb", "check", "--connect", "-c", str(config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_check_connect_says_why_the_broker_refuses(locked_broker, tmp_path):
    wrong = write_config(tmp_path / "wrong.yaml", locked_broker, broker={"username": "router", "password": "wrong"})
    result = check(wrong)
    assert result.returncode == 1, result
    assert "refused the connection" in result.stderr and "broker.username" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr

    right = write_config(tmp_path / "right.yaml", locked_broker, broker={"username": "router", "password": "right"})
    result = check(right)
    assert result.returncode == 0, result
    assert "accepts it" in result.stdout

    nobody = write_config(tmp_path / "nobody.yaml", locked_broker, broker={"port": free_port()})
    result = check(nobody)
    assert result.returncode == 1 and "cannot connect to 127.0.0.1:" in result.stderr, result


def test_a_refusing_broker_is_retried_and_said_once(locked_broker, tmp_path):
    config = write_config(tmp_path / "router.yaml", locked_broker, metrics={"listen": "127.0.0.1:0"},
                          broker={"username": "router", "password": "wrong"})
    router = RouterProcess(config)
    try:
        base = endpoint(router)
        router.wait_log("refused the connection")
        status, reason = wait_for(lambda: (found := get(base + "/healthz"))[0] == 503 and "refused" in found[1]
                                  and found, what="/healthz saying why")
        assert "Not authorized" in reason and "broker.username" in reason
        wait_for(lambda: locked_broker.log().count("not authorised") >= 3, timeout=20, what="three attempts")
        assert router.process.poll() is None  # keeps trying: password files change
        refusals = [line.split("refused the connection as ")[1].split(":")[0] for line in router.lines
                    if "refused the connection" in line and "ERROR" in line]
        assert sorted(refusals) == ["mqttlb-test-router-beats", "mqttlb-test-router-fleet"], refusals  # once each,
        # not once per try (the routing connection waits for the heartbeats' connection)
    finally:
        router.stop()


def test_two_routers_with_one_client_id_are_told_and_back_off(broker, tmp_path, clients):
    clients(TestWorker, "w1")
    status = clients(Client, "stats-watch")
    status.subscribe("mqttlb/stats")
    first = RouterProcess(write_config(tmp_path / "first.yaml", broker, metrics={"listen": "127.0.0.1:0"},
                                       broker={"client_id": "twin"}, stats={"interval": "1s"}))
    first.wait_ready()
    second = RouterProcess(write_config(tmp_path / "second.yaml", broker, broker={"client_id": "twin"}))
    try:
        wait_for(lambda: any("session taken over" in line for line in first.lines + second.lines), timeout=20,
                 what="a takeover named")
        line = next(line for line in first.lines + second.lines if "session taken over" in line)
        assert "ERROR" in line and "'twin" in line and "own client_id" in line

        def said(figures: dict) -> bool:
            return "session taken over" in (figures.get("problem") or "")
        wait_for(lambda: any(said(orjson.loads(m.payload)) for m in status.messages()), timeout=20,
                 what="the stats topic saying so")
        if any("session taken over" in line for line in first.lines):
            base = endpoint(first)
            wait_for(lambda: "session taken over" in get(base + "/healthz")[1], timeout=20, what="/healthz")

        # Backing off: far fewer connections than the several a second of the fight without it.
        before = broker.log().count("New client connected from")
        time.sleep(10)
        during = broker.log().count("New client connected from") - before
        assert during <= 12, during
        assert first.process.poll() is None and second.process.poll() is None
    finally:
        first.stop()
        second.stop()


def test_a_broker_whose_packet_limit_is_below_the_routers_connect_is_said_not_crashed_on(tmp_path):
    """Mosquitto closes a connection whose CONNECT is over its max_packet_size without a word. The router's
    routing CONNECT carries its will, so its other connections get in and the broker's CONNACK names a
    limit that its own heartbeat and stats are over too: before, the first heartbeat was a traceback and
    exit 1, at every restart. Now each is held back and the unanswered CONNECT is said, in the log and in
    /healthz, with the CONNECT's size."""
    workdir = tmp_path / "tiny"
    workdir.mkdir()
    with PrivateBroker(workdir=workdir, edits={"set_tcp_nodelay true": "set_tcp_nodelay true\n"
                                                                       "max_packet_size 120"}) as broker:
        router = RouterProcess(write_config(tmp_path / "router.yaml", broker, metrics={"listen": "127.0.0.1:0"}))
        try:
            base = endpoint(router)
            router.wait_log("router heartbeat not published: larger than the broker's maximum packet size "
                            "(120 bytes)")
            router.wait_log("the broker closed the connection without answering CONNECT")
            line = next(line for line in router.lines if "without answering CONNECT" in line)
            assert "ERROR" in line and "max_packet_size" in line and "bytes: client id, credentials, will" in line
            wait_for(lambda: "without answering CONNECT" in get(base + "/healthz")[1], what="/healthz saying why")
            wait_for(lambda: broker.log().count("oversize packet") >= 3, timeout=20, what="three attempts")
            assert router.process.poll() is None
            assert router.stop() == 0
            assert "Traceback" not in router.log()
        finally:
            router.stop()


def test_a_brokers_shorter_keep_alive_is_kept_to(tmp_path):
    """Mosquitto's max_keepalive under the router's broker.keepalive: the broker says its own in CONNACK (MQTT
    5's Server Keep Alive) and drops a connection quiet for one and a half of it. The router pings by the
    broker's; before, by its own, so its quiet connections (heartbeats in, device messages in) were dropped and
    made again, here every 15 s."""
    workdir = tmp_path / "brisk"
    workdir.mkdir()
    with PrivateBroker(workdir=workdir, edits={"set_tcp_nodelay true": "set_tcp_nodelay true\nmax_keepalive 10",
                                               "log_type notice": "log_type notice\nlog_type debug"}) as broker:
        router = RouterProcess(write_config(tmp_path / "router.yaml", broker, broker={"keepalive": 60}))
        try:
            router.wait_ready()
            for client in ("mqttlb-test-router", "mqttlb-test-router-beats"):  # nothing else goes out on these
                line = f"Received PINGREQ from {client}\n"
                wait_for(lambda line=line: line in broker.log(), timeout=9,
                         what=f"{client} pinging within the broker's 10 s, not its own 60 s")
            assert router.stop() == 0
            assert "exceeded timeout" not in broker.log()
        finally:
            router.stop()


def test_a_broker_without_retained_messages_is_said_as_such(tmp_path):
    """Mosquitto with retain_available false refuses the routing connection, whose will is retained (0x9A), and
    drops the publishing connection over the retained stats right after it connects, with a DISCONNECT that says
    0x9A too. Both errors name the setting, and the drops are backed off from, not taken for a takeover."""
    workdir = tmp_path / "unretained"
    workdir.mkdir()
    with PrivateBroker(workdir=workdir, edits={"set_tcp_nodelay true": "set_tcp_nodelay true\n"
                                                                       "retain_available false"}) as broker:
        router = RouterProcess(write_config(tmp_path / "router.yaml", broker))
        try:
            router.wait_log("refused the connection as mqttlb-test-router: Retain not supported (0x9A)")
            router.wait_log("drops this connection right after accepting it, 3 times in a row: Retain not "
                            "supported (0x9A)", timeout=20)
            assert all("retain_available" in line for line in router.lines if "0x9A" in line)
            assert not any("session taken over" in line for line in router.lines)
            assert router.process.poll() is None
        finally:
            router.stop()


def test_a_broker_that_forgot_the_routers_session_is_said_to_have(tmp_path):
    """A broker restarted without persistence answers the router's reconnect with no session: what came while
    it was away is gone. That was an INFO line ('session present: False') like any first connection."""
    workdir = tmp_path / "forgetful"
    workdir.mkdir()
    with PrivateBroker(workdir=workdir, edits={"persistence true": "persistence false"}) as broker:
        router = RouterProcess(write_config(tmp_path / "router.yaml", broker))
        try:
            router.wait_ready()
            assert "kept no session" not in router.log()  # a first connection has none to keep
            broker.restart()
            router.wait_log("the broker kept no session for the router", timeout=20)
        finally:
            router.stop()
