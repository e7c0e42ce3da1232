"""mosquitto/production.conf against devices that misbehave: a real Mosquitto, real TLS, real ACLs.

Each test starts the shipped production config with a throwaway CA, certificates
and users made by ``mqttlb credentials``. Every check is on delivery, never on a
SUBACK or PUBACK: Mosquitto grants any subscription and acknowledges a denied
publish, then silently delivers nothing. A denied message is shown absent by a
marker: a permitted QoS 1 message published after it was acknowledged reaches
the same reader, so the denied one, had it been let through, would be there
first. A reader that may read nothing gets a round trip on its own connection
instead (``Peer.marker``, a SUBACK). Only a will (sent when the broker notices
a dead socket) needs a settle.
"""

from __future__ import annotations

import datetime
import gc
import ipaddress
import logging
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqttlb import Delivery, Worker
from mqttlb.commands.broker import PrivateBroker, mosquitto_dir
from mqttlb.core.config import BrokerSettings, TlsSettings

from .conftest import ROOT, RouterProcess, wait_for

pytestmark = pytest.mark.integration

ROUTER, W1, W2, MONITOR = "mqttlb-router", "mqttlb-worker-w1", "mqttlb-worker-w2", "ops"
CLIENT_ID = "edge-router"
"""The router's client id: outside ``mqttlb-``, as an operator may choose it."""
DEVICES = ("d1", "d2")
DEVICES_LISTENER, BACKEND_LISTENER = 0, 1  # the order of the listener lines in production.conf
SETTLE = 0.5
"""Seconds to let the broker act on a dead socket (its will) before showing that nothing came of it."""


# -- a throwaway PKI ----------------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _issue(folder: Path, name: str, cn: str, issuer: Issuer | None, *, server: bool = False) -> Issuer:
    """Write ``name``.crt and ``name``.key: a CA when ``issuer`` is None, else a certificate it signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer is None:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                                  critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = folder / f"{name}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Issuer(cert, key)


def make_pki(folder: Path) -> None:
    """Three CAs: one signs the broker's certificate, one the devices', one the router's and workers'."""
    server_ca = _issue(folder, "server-ca", "test server CA", None)
    devices_ca = _issue(folder, "devices-ca", "test devices CA", None)
    backend_ca = _issue(folder, "backend-ca", "test backend CA", None)
    _issue(folder, "server", "localhost", server_ca, server=True)
    for user in (ROUTER, W1, W2, MONITOR):
        _issue(folder, user, user, backend_ca)
    _issue(folder, "d1", "d1", devices_ca)
    _issue(folder, "d1-by-backend-ca", "d1", backend_ca)  # a device certificate from the wrong CA


# -- the deployment -----------------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    folder: Path
    config: Path
    passwords: dict[str, str]


def credentials(config: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``mqttlb credentials`` on the password and ACL files in ``folder``."""
    return subprocess.run(
        [sys.executable, "-m", "mqttlb", "credentials", "-c", str(config), "--password-file", str(folder / "passwd"),
         "--acl-file", str(folder / "acl"), *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """PKI, router config and users, made once: each test starts its own broker on them."""
    folder = tmp_path_factory.mktemp("secure")
    make_pki(folder)
    config = folder / "router.yaml"
    config.write_text(yaml.safe_dump({
        "broker": {"host": "127.0.0.1", "port": 1, "client_id": CLIENT_ID, "username": ROUTER,
                   "password_file": "router.secret",
                   "tls": {"ca_certs": "server-ca.crt", "certfile": f"{ROUTER}.crt", "keyfile": f"{ROUTER}.key"}},
        "heartbeat": {"timeout": "2s"},
        "metrics": {"listen": None},
        "routes": [
            {"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device"},
            {"name": "events", "match": "devices/+/events", "key": "payload.meta.id"},
            {"name": "logs", "match": "devices/+/logs/#", "algorithm": "round_robin"},
        ],
    }, sort_keys=False))
    made = credentials(config, folder, "--router", "--worker", "w1", "--worker", "w2", "--monitor", MONITOR,
                       *[arg for device in DEVICES for arg in ("--device", device)])
    assert made.returncode == 0, made.stderr  # the router's password file does not exist yet: that must not matter
    passwords = dict(line.split(":", 1) for line in made.stdout.splitlines())
    assert set(passwords) == {ROUTER, W1, W2, MONITOR, *DEVICES}
    assert not any(password in made.stderr for password in passwords.values())
    (folder / "router.secret").write_text(passwords[ROUTER] + "\n")
    return Files(folder, config, passwords)


class Peer:
    """A paho client that logs in on one listener of the broker and records what happens to it."""

    def __init__(self, port: int, files: Files, username: str | None, *, password: str | None = None,
                 cert: str | None = None, client_id: str = "", will: tuple[str, bytes] | None = None,
                 session_expiry: int = 0) -> None:
        self.port = port
        self.session_expiry = session_expiry
        """Seconds; above 0 the client asks for a persistent session, with clean start off."""
        self.session_present: bool | None = None
        self.events: list[str] = []
        self.received: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subacks: set[int] = set()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        folder = files.folder
        self.client.tls_set(ca_certs=str(folder / "server-ca.crt"),
                            certfile=str(folder / f"{cert}.crt") if cert else None,
                            keyfile=str(folder / f"{cert}.key") if cert else None)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._connected
        self.client.on_disconnect = lambda c, u, flags, reason, p: self._event(f"disconnected: {reason}")
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self._subacks.add(mid)
        self.client.on_message = self._message

    def _connected(self, client: Any, userdata: Any, flags: paho.ConnectFlags, reason: Any, properties: Any) -> None:
        self.session_present = flags.session_present
        self._event(f"refused: {reason}" if reason.is_failure else "connected")

    def _event(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    def _message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append(message)

    def start(self) -> str:
        """Connect; returns ``connected`` or why not (a CONNACK refusal, a TLS failure, a dropped socket)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # paho leaves the socket of a failed handshake open
            try:
                if self.session_expiry > 0:
                    properties = Properties(PacketTypes.CONNECT)
                    properties.SessionExpiryInterval = self.session_expiry
                    self.client.connect("127.0.0.1", self.port, 30, clean_start=False, properties=properties)
                else:
                    self.client.connect("127.0.0.1", self.port, 30)
                failure = None
            except (OSError, ssl.SSLError) as error:
                failure = f"tls: {error}"
            gc.collect()
        if failure is not None:
            return failure
        self.client.loop_start()
        wait_for(lambda: self.events, what="a CONNACK or a disconnect")
        return self.events[0]

    def subscribe(self, *filters: str) -> None:
        """Subscribe and wait for the SUBACK (whatever it says: only delivery counts)."""
        mids = [self.client.subscribe(f, 1)[1] for f in filters]
        wait_for(lambda: self._subacks.issuperset(mids), what=f"SUBACK for {filters}")

    def marker(self) -> None:
        """A round trip on this connection (a SUBACK): what the broker gave it before, it has received by now.

        For a reader that may read nothing: Mosquitto queues a message for its subscribers before it
        acknowledges the publish, and sends a connection's packets in order."""
        self.subscribe("marker/of/this/connection")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK: the broker has decided on it by then."""
        self.client.publish(topic, payload, 1, retain=retain).wait_for_publish(10)

    def got(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(m.topic, bytes(m.payload)) for m in self.received]

    def kill(self) -> None:
        """Drop the connection without a DISCONNECT, so the broker sends the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Deployment:
    broker: PrivateBroker
    files: Files
    peers: list[Peer] = field(default_factory=list)

    def attempt(self, username: str | None, listener: int = DEVICES_LISTENER, **options: Any) -> tuple[Peer, str]:
        """A client's login attempt: the client and its outcome. The user's own password unless one is given."""
        options.setdefault("password", self.files.passwords.get(username or ""))
        peer = Peer(self.broker.ports[listener], self.files, username, **options)
        self.peers.append(peer)
        return peer, peer.start()

    def device(self, name: str, **options: Any) -> Peer:
        peer, outcome = self.attempt(name, DEVICES_LISTENER, **options)
        assert outcome == "connected", f"{name}: {outcome}"
        return peer

    def backend(self, username: str, **options: Any) -> Peer:
        """The router's, a worker's or the monitor's identity, with its certificate."""
        options.setdefault("cert", username)
        options.setdefault("client_id", f"{username}-test")
        peer, outcome = self.attempt(username, BACKEND_LISTENER, **options)
        assert outcome == "connected", f"{username}: {outcome}"
        return peer


def start_broker(tmp_path: Path, files: Files, **edits: str) -> PrivateBroker:
    """mosquitto/production.conf with the test's files, on free ports; ``edits`` replace more of its lines."""
    certs, folder = "/etc/mosquitto/certs", files.folder
    replaced = {"password_file /etc/mosquitto/passwd": f"password_file {folder / 'passwd'}",
                "acl_file /etc/mosquitto/acl": f"acl_file {folder / 'acl'}",
                f"certfile {certs}/server.crt": f"certfile {folder / 'server.crt'}",
                f"keyfile {certs}/server.key": f"keyfile {folder / 'server.key'}",
                f"cafile {certs}/devices-ca.crt": f"cafile {folder / 'devices-ca.crt'}",
                f"cafile {certs}/backend-ca.crt": f"cafile {folder / 'backend-ca.crt'}", **edits}
    workdir = tmp_path / "broker"
    workdir.mkdir()
    return PrivateBroker(mosquitto_dir() / "production.conf", workdir=workdir, edits=replaced).start()


@pytest.fixture
def deployment(tmp_path: Path, files: Files) -> Iterator[Deployment]:
    made = Deployment(start_broker(tmp_path, files), files)
    yield made
    for peer in made.peers:
        peer.close()
    made.broker.close()


def heartbeat(worker: str, state: str = "up", **fields: Any) -> bytes:
    return orjson.dumps({"worker": worker, "state": state, **fields})


# -- logging in ---------------------------------------------------------------------------


def test_anonymous_unknown_and_wrong_passwords_are_refused(deployment: Deployment) -> None:
    for listener in (DEVICES_LISTENER, BACKEND_LISTENER):
        cert = ROUTER if listener == BACKEND_LISTENER else None
        for username, password in ((None, None), ("d1", "wrong"), ("stranger", "whatever"), ("d1", "")):
            _, outcome = deployment.attempt(username, listener, password=password, cert=cert)
            assert outcome != "connected", (listener, username, password)
    deployment.device("d1")  # the same listener lets the right password in


def test_backend_listener_needs_a_certificate_from_the_backend_ca(deployment: Deployment) -> None:
    for cert in (None, "d1"):  # no certificate; a device's, from the devices' CA
        _, outcome = deployment.attempt(ROUTER, BACKEND_LISTENER, cert=cert)
        assert outcome != "connected", cert
    _, outcome = deployment.attempt(ROUTER, BACKEND_LISTENER, cert=ROUTER, password="wrong")
    assert outcome != "connected"  # the certificate alone is not enough either
    deployment.backend(ROUTER)


def test_device_certificates_as_identity_when_required(tmp_path: Path, files: Files) -> None:
    broker = start_broker(tmp_path, files, **{"require_certificate false": "require_certificate true",
                                              "use_identity_as_username false": "use_identity_as_username true"})
    made = Deployment(broker, files)
    try:
        for cert in (None, "d1-by-backend-ca"):  # no certificate; the right name from the wrong CA
            _, outcome = made.attempt(None, DEVICES_LISTENER, cert=cert)
            assert outcome != "connected", cert
        reader = made.backend(ROUTER)
        reader.subscribe("devices/+/telemetry")
        device = made.device(None, cert="d1")  # no user name, no password: the certificate says d1
        device.publish("devices/d2/telemetry", b"forged")
        device.publish("devices/d1/telemetry", b"marker")
        wait_for(lambda: ("devices/d1/telemetry", b"marker") in reader.got(), what="d1's own message")
        assert reader.got() == [("devices/d1/telemetry", b"marker")]
    finally:
        for peer in made.peers:
            peer.close()
        broker.close()


def test_a_device_cannot_take_over_a_workers_session(deployment: Deployment) -> None:
    worker = deployment.backend(W1, client_id=W1)
    for client_id in (W1, CLIENT_ID, f"{CLIENT_ID}-fleet"):
        deployment.device("d1", client_id=client_id)
    time.sleep(SETTLE)
    assert worker.events == ["connected"]
    deployment.backend(W1, client_id=W1)  # on the backend listener a client id is taken over, as MQTT says
    wait_for(lambda: len(worker.events) > 1, what="the first connection dropped")


def own_copy(files: Files, tmp_path: Path) -> Path:
    """A folder with copies of the module's password and ACL files, for a test that adds users."""
    folder = tmp_path / "users"
    folder.mkdir()
    for name in ("passwd", "acl"):
        (folder / name).write_bytes((files.folder / name).read_bytes())
        (folder / name).chmod(0o640)
    return folder


def test_credentials_refuse_devices_named_as_a_router_instance_or_a_worker(files: Files, tmp_path: Path) -> None:
    folder = own_copy(files, tmp_path)
    made = credentials(files.config, folder, "--device", f"{CLIENT_ID}-0", "--device", f"{CLIENT_ID}-7-fleet",
                       "--device", "w1", "--device", "d3")
    assert (made.returncode, made.stdout) == (2, "")
    for device, clash in ((f"{CLIENT_ID}-0", "the client id of router instance 0's session"),
                          (f"{CLIENT_ID}-7-fleet", "the client id of router instance 7's publishing connection"),
                          ("w1", "a worker's id")):
        assert f"--device {device!r}: reserved: {clash}" in made.stderr
    assert "'d3'" not in made.stderr  # a name outside the reserved space is no problem: it waits for the others
    for name in ("passwd", "acl"):
        assert (folder / name).read_bytes() == (files.folder / name).read_bytes()


def test_a_device_cannot_take_over_a_router_instances_session(files: Files, tmp_path: Path) -> None:
    """Two halves: the broker makes a device's client id its user name, and the credentials refuse a device
    named as one of the router's client ids. Each half gets its chance here; a round trip on each of the
    instance's connections, after the devices' CONNACKs, shows them never dropped."""
    folder = own_copy(files, tmp_path)
    sessions = (f"{CLIENT_ID}-0", f"{CLIENT_ID}-0-fleet")
    attempts = {name: credentials(files.config, folder, "--device", name) for name in sessions}
    created = {name: run.stdout.strip().split(":", 1)[1] for name, run in attempts.items() if run.returncode == 0}
    broker = start_broker(tmp_path, files, **{
        "password_file /etc/mosquitto/passwd": f"password_file {folder / 'passwd'}",
        "acl_file /etc/mosquitto/acl": f"acl_file {folder / 'acl'}"})
    made = Deployment(broker, files)
    try:
        instance = [made.backend(ROUTER, client_id=session) for session in sessions]
        made.device("d1", client_id=sessions[0])  # replaced by its user name, d1
        for name, password in created.items():  # a device the credentials let in under the instance's name
            made.device(name, password=password)
        for link in instance:
            link.publish("mqttlb/stats", b"marker")
        assert [link.events for link in instance] == [["connected"], ["connected"]]
    finally:
        for peer in made.peers:
            peer.close()
        broker.close()
    assert created == {}
    assert all("reserved: the client id of router instance 0's" in run.stderr for run in attempts.values())


# -- reclaim: who may take over what a departed worker or router left queued -----------------


SESSION = 3600
"""Session expiry (seconds) of the persistent sessions below."""


def departed_worker(deployment: Deployment) -> list[tuple[str, bytes]]:
    """Worker w1's persistent session, its inbox subscription, and forwards the router queued there once w1 left."""
    w1 = deployment.backend(W1, client_id=W1, session_expiry=SESSION)
    w1.subscribe("mqttlb/workers/w1/in/#")
    w1.close()  # a clean DISCONNECT: the session stays, for SESSION seconds
    router = deployment.backend(ROUTER)
    forwards = [(f"mqttlb/workers/w1/in/devices/d{i}/telemetry", f"queued {i}".encode()) for i in range(5)]
    for topic, payload in forwards:
        router.publish(topic, payload)
    return forwards


def test_the_router_user_reclaims_a_departed_workers_queue(deployment: Deployment) -> None:
    """Mosquitto checks the read ACL when it delivers a queued message to whoever holds the session now:
    without read on the inboxes, the router's takeover would get nothing, and the broker drop the queue."""
    forwards = departed_worker(deployment)
    reclaimer = deployment.backend(ROUTER, client_id=W1, session_expiry=SESSION)
    wait_for(lambda: len(reclaimer.got()) == len(forwards), what="w1's queued forwards")
    assert reclaimer.session_present
    assert reclaimer.got() == forwards


def test_the_router_user_reclaims_a_departed_routers_queue(deployment: Deployment) -> None:
    dead = f"{CLIENT_ID}-1"  # instance 1 of run --processes, in the share group
    router = deployment.backend(ROUTER, client_id=dead, session_expiry=SESSION)
    router.subscribe("$share/mqttlb/devices/+/telemetry", "$share/mqttlb/devices/+/logs/#")
    router.close()
    device = deployment.device("d1")
    sent = [("devices/d1/telemetry", b"t1"), ("devices/d1/logs/boot", b"l1"), ("devices/d1/telemetry", b"t2")]
    for topic, payload in sent:
        device.publish(topic, payload)
    reclaimer = deployment.backend(ROUTER, client_id=dead, session_expiry=SESSION)
    wait_for(lambda: len(reclaimer.got()) == len(sent), what="the dead router's queued messages")
    assert reclaimer.session_present
    assert reclaimer.got() == sent


def test_a_device_cannot_reclaim_a_departed_workers_queue_nor_read_an_inbox(deployment: Deployment) -> None:
    forwards = departed_worker(deployment)
    thief = deployment.device("d1", client_id=W1, session_expiry=SESSION)  # its client id becomes d1
    assert not thief.session_present
    thief.subscribe("mqttlb/workers/+/in/#", "mqttlb/workers/w1/in/#")
    late = ("mqttlb/workers/w1/in/devices/d2/telemetry", b"after the thief came")
    deployment.backend(ROUTER).publish(*late)
    thief.marker()
    assert thief.got() == []
    w1 = deployment.backend(W1, client_id=W1, session_expiry=SESSION)
    wait_for(lambda: len(w1.got()) == len(forwards) + 1, what="w1's queued forwards")
    assert w1.session_present
    assert w1.got() == [*forwards, late]
    thief.marker()
    assert thief.got() == []


def test_routers_announce_themselves_to_routers_and_monitors_and_no_one_else_can(deployment: Deployment) -> None:
    """A forged router heartbeat could name any session for a live router to take over, a worker's among them."""
    topic = f"mqttlb/routers/{CLIENT_ID}-0/heartbeat"
    beat = orjson.dumps({"router": f"{CLIENT_ID}-0", "state": "up", "session": f"{CLIENT_ID}-0"})
    down = orjson.dumps({"router": f"{CLIENT_ID}-0", "state": "down"})
    peer, monitor = deployment.backend(ROUTER, client_id=f"{CLIENT_ID}-1"), deployment.backend(MONITOR)
    for reader in (peer, monitor):
        reader.subscribe("mqttlb/routers/+/heartbeat")
    forged = orjson.dumps({"router": "evil", "state": "up", "session": W1})
    deployment.device("d1").publish("mqttlb/routers/evil/heartbeat", forged, retain=True)
    deployment.backend(W1).publish("mqttlb/routers/evil/heartbeat", forged, retain=True)
    router = deployment.backend(ROUTER, client_id=f"{CLIENT_ID}-0", will=(topic, down))
    router.publish(topic, beat, retain=True)
    router.kill()  # the broker publishes its will, as the router's user
    for reader in (peer, monitor):
        wait_for(lambda: len(reader.got()) == 2, what="the router's heartbeat and will")  # noqa: B023
        assert reader.got() == [(topic, beat), (topic, down)]


# -- what devices and workers can do --------------------------------------------------------


def test_a_device_cannot_publish_another_devices_topic(deployment: Deployment) -> None:
    reader = deployment.backend(ROUTER)
    reader.subscribe("devices/+/telemetry", "devices/+/logs/#")
    device = deployment.device("d1")
    for topic in ("devices/d2/telemetry", "devices/d2/logs/x", "devices/mqttlb-router/logs"):
        device.publish(topic, b"forged")
    device.publish("devices/d1/telemetry", b"marker")
    wait_for(lambda: reader.got(), what="d1's own message")
    assert reader.got() == [("devices/d1/telemetry", b"marker")]


def test_a_device_cannot_forge_clear_or_will_a_heartbeat_nor_write_router_topics(deployment: Deployment) -> None:
    worker = deployment.backend(W1)
    worker.subscribe("mqttlb/workers/w1/in/#")
    worker.publish("mqttlb/workers/w1/heartbeat", heartbeat("w1"), retain=True)
    monitor = deployment.backend(MONITOR)
    monitor.subscribe("mqttlb/workers/+/heartbeat", "mqttlb/deadletter/+/#", "mqttlb/stats")
    wait_for(lambda: monitor.got(), what="w1's retained heartbeat")
    device = deployment.device("d1", will=("mqttlb/workers/w1/heartbeat", heartbeat("w1", "down")))
    forged = [("mqttlb/workers/w1/heartbeat", heartbeat("w1", "down"), True),
              ("mqttlb/workers/w1/heartbeat", b"", True),  # clearing the retained heartbeat means down
              ("mqttlb/workers/evil/heartbeat", heartbeat("evil"), True),  # joining the pool
              ("mqttlb/workers/w1/in/devices/d2/telemetry", b"forged", False),  # posing as another device
              ("mqttlb/deadletter/bad_key/devices/d2/telemetry", b"forged", False),
              ("mqttlb/stats", b"{}", True)]
    for topic, payload, retain in forged:
        device.publish(topic, payload, retain)
    device.kill()  # its will, on w1's heartbeat topic, must not be sent either
    time.sleep(SETTLE)
    worker.publish("mqttlb/workers/w1/heartbeat", heartbeat("w1", inflight=1), retain=True)
    wait_for(lambda: len(monitor.got()) == 2, what="w1's marker heartbeat")
    assert monitor.got() == [("mqttlb/workers/w1/heartbeat", heartbeat("w1")),
                             ("mqttlb/workers/w1/heartbeat", heartbeat("w1", inflight=1))]
    assert worker.got() == []
    late = deployment.backend(MONITOR)  # and nothing retained but the genuine heartbeat
    late.subscribe("mqttlb/workers/+/heartbeat", "mqttlb/stats")
    wait_for(lambda: late.got(), what="the retained heartbeat")
    time.sleep(SETTLE)
    assert late.got() == [("mqttlb/workers/w1/heartbeat", heartbeat("w1", inflight=1))]


def test_a_device_reads_nothing(deployment: Deployment) -> None:
    spy = deployment.device("d1")
    spy.subscribe("#", "mqttlb/#", "mqttlb/workers/w1/in/#", "mqttlb/deadletter/#", "mqttlb/stats", "$SYS/#",
                  "devices/d2/#", "$share/spies/devices/#")
    router, worker, monitor = deployment.backend(ROUTER), deployment.backend(W1), deployment.backend(MONITOR)
    worker.subscribe("mqttlb/workers/w1/in/#")
    monitor.subscribe("mqttlb/deadletter/+/#", "mqttlb/stats", "mqttlb/workers/+/heartbeat")
    router.subscribe("devices/+/telemetry")
    router.publish("mqttlb/workers/w1/in/devices/d2/telemetry", b"forward")
    router.publish("mqttlb/deadletter/bad_key/devices/d2/telemetry", b"dead letter")
    router.publish("mqttlb/stats", b"{}", retain=True)
    worker.publish("mqttlb/workers/w1/heartbeat", heartbeat("w1"), retain=True)
    deployment.device("d2").publish("devices/d2/telemetry", b"d2's own")
    wait_for(lambda: len(worker.got()) == 1 and len(monitor.got()) == 3 and router.got(), what="every reader served")
    time.sleep(SETTLE)  # the spy is another connection: give its copies, if any, time to come
    assert spy.got() == []
    late = deployment.device("d1", client_id="again")
    late.subscribe("mqttlb/#")
    time.sleep(SETTLE)
    assert late.got() == []  # nor the retained stats and heartbeat


def test_a_worker_reads_only_its_own_inbox_and_writes_only_its_heartbeat(deployment: Deployment) -> None:
    router, w1, monitor = deployment.backend(ROUTER), deployment.backend(W1), deployment.backend(MONITOR)
    w2 = deployment.backend(W2)
    w1.subscribe("mqttlb/workers/w1/in/#")
    w2.subscribe("mqttlb/workers/w1/in/#", "mqttlb/workers/+/in/#", "mqttlb/deadletter/#", "devices/#",
                 "mqttlb/workers/w2/in/#")
    monitor.subscribe("mqttlb/workers/+/heartbeat")
    router.publish("mqttlb/workers/w1/in/devices/d1/telemetry", b"for w1")
    router.publish("mqttlb/deadletter/no_worker/devices/d1/telemetry", b"dead")
    router.publish("mqttlb/workers/w2/in/devices/d2/telemetry", b"for w2")
    wait_for(lambda: w1.got() and w2.got(), what="both forwards")
    assert {message for message in w2.got()} == {("mqttlb/workers/w2/in/devices/d2/telemetry", b"for w2")}
    w2.publish("mqttlb/workers/w1/heartbeat", heartbeat("w1", "down"), retain=True)
    w2.publish("mqttlb/workers/w1/in/devices/d1/telemetry", b"forged forward")
    router.publish("mqttlb/workers/w1/in/devices/d1/telemetry", b"marker")
    w2.publish("mqttlb/workers/w2/heartbeat", heartbeat("w2"), retain=True)
    wait_for(lambda: len(w1.got()) == 2 and monitor.got(), what="the router's marker and w2's heartbeat")
    assert [payload for _, payload in w1.got()] == [b"for w1", b"marker"]
    assert monitor.got() == [("mqttlb/workers/w2/heartbeat", heartbeat("w2"))]


def test_the_stats_of_router_instances_reach_a_monitor(deployment: Deployment, files: Files) -> None:
    monitor = deployment.backend(MONITOR)
    monitor.subscribe("mqttlb/stats/+")
    config = router_config(deployment, files, router={"share_group": "mqttlb"}, stats={"interval": "200ms"})
    parent = RouterProcess(config, "--processes", "2")
    try:
        wait_for(lambda: {topic for topic, _ in monitor.got()} == {"mqttlb/stats/0", "mqttlb/stats/1"},
                 timeout=20, what="the stats of both instances")
    finally:
        assert parent.stop() == 0
    assert {topic: orjson.loads(payload)["router"] for topic, payload in monitor.got()} == {
        "mqttlb/stats/0": f"{CLIENT_ID}-0", "mqttlb/stats/1": f"{CLIENT_ID}-1"}
    assert "refused" not in parent.log() and "reconnecting" not in parent.log()


# -- the router and a worker over TLS, and the worst a device can send ---------------------------


class Recorder:
    def __init__(self) -> None:
        self.got: list[Delivery] = []

    def __call__(self, delivery: Delivery) -> None:
        self.got.append(delivery)


@dataclass
class Live:
    """``mqttlb run`` and an ``mqttlb.Worker`` over TLS with passwords, a device, and a dead-letter reader."""

    router: RouterProcess
    worker: Worker
    recorder: Recorder
    device: Peer
    monitor: Peer

    def stop(self) -> None:
        self.worker.stop()
        self.router.stop()


def router_config(deployment: Deployment, files: Files, **sections: dict[str, Any]) -> Path:
    """The module's router config for this broker's backend listener, with ``sections`` changed."""
    port = deployment.broker.ports[BACKEND_LISTENER]
    config = yaml.safe_load(files.config.read_text())
    config["broker"]["port"] = port
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = files.folder / f"router-{port}.yaml"  # beside the files it names
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def live(deployment: Deployment, files: Files) -> Iterator[Live]:
    broker, folder = deployment.broker, files.folder
    config_path = router_config(deployment, files)
    monitor = deployment.backend(MONITOR)
    monitor.subscribe("mqttlb/deadletter/+/#")
    recorder = Recorder()
    tls = TlsSettings(str(folder / "server-ca.crt"), str(folder / f"{W1}.crt"), str(folder / f"{W1}.key"))
    worker = Worker("w1", recorder, interval=0.3, broker=BrokerSettings(
        host=broker.host, port=broker.ports[BACKEND_LISTENER], username=W1, password=files.passwords[W1], tls=tls))
    made = Live(RouterProcess(config_path), worker, recorder, deployment.device("d1"), monitor)
    try:
        made.router.wait_ready()
        worker.start()
        made.device.publish("devices/d1/telemetry", b"hello")  # held, if need be, until the router has seen w1
        wait_for(lambda: recorder.got, what="the first forward")
        yield made
    finally:
        made.stop()


def worst(device: str) -> list[tuple[str, bytes, str]]:
    """What a hostile device can publish on its own topics: (topic, payload, the dead letter's reason)."""
    events = f"devices/{device}/events"
    return [
        (events, orjson.dumps({"meta": {"id": "k" * 65536}}), "bad_key"),  # a 64 KiB key
        (events, b'{"meta": {"id": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}", "too_large"),
        (events, b'{"meta": {"id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "bad_key"),  # deep nesting
        (events, b"\xff\xfe{\"meta\": \x00", "bad_key"),  # not UTF-8
        (events, orjson.dumps({"meta": {"id": "a/+/#\u0000\u0085"}}), "bad_key"),  # wildcards, NUL, C1
        (events, orjson.dumps({f"k{i}": list(range(20)) for i in range(3000)}), "bad_key"),  # big, and no key
        (f"devices/{device}/telemetry", b"\x00" * 300_000, "too_large"),
        (f"devices/{device}/logs/" + "x" * 65_514, b"long topic", "bad_topic"),  # the forward would be too long
    ]


def test_router_and_worker_over_tls_forward_and_dead_letter_the_worst(
        live: Live, files: Files, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert (live.recorder.got[0].device, live.recorder.got[0].payload) == ("d1", b"hello")
    samples = worst("d1")
    for topic, payload, _ in samples:
        live.device.publish(topic, payload)
    live.device.publish("devices/d1/logs/$SYS/\u2028\u00a0\U0001f600", b"odd but valid")
    live.device.publish("devices/d1/telemetry", b"still routing")
    wait_for(lambda: len(live.recorder.got) == 3, what="the forwards after the worst")
    assert [d.payload for d in live.recorder.got] == [b"hello", b"odd but valid", b"still routing"]
    reasons = lambda: Counter(topic.split("/")[2] for topic, _ in live.monitor.got())  # noqa: E731
    wait_for(lambda: reasons().total() == len(samples), what="every sample dead-lettered")
    assert reasons() == Counter(reason for _, _, reason in samples)
    live.stop()
    assert "reconnecting" not in live.router.log() and "refused" not in live.router.log()
    logged = live.router.log() + "\n".join(record.getMessage() for record in caplog.records)
    assert "dead letter (bad_key)" in logged and "worker w1 down" in logged  # both logs were captured
    assert not any(files.passwords[user] in logged for user in (ROUTER, W1))


def test_a_zero_width_no_break_space_stalls_neither_router_nor_worker(live: Live) -> None:
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("note", "\ufeff")]  # Mosquitto passes it on to the router's routing link
    live.device.client.publish("devices/d1/telemetry", b"property", 1, properties=properties).wait_for_publish(5)
    live.device.publish("devices/d1/logs/\ufeff", b"topic")  # the forward's mqttlb-topic property carries it
    live.device.publish("devices/d1/telemetry", b"after")
    wait_for(lambda: b"after" in [d.payload for d in live.recorder.got], timeout=5, what="the message after")
    assert "reconnecting" not in live.router.log()
