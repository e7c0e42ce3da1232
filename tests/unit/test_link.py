"""A link against a scripted broker on a loopback socket: what Mosquitto never does, other brokers may.

Mosquitto 2.0 closes a connection without a DISCONNECT, and always answers a CONNECT. Brokers that say why
they drop a client (MQTT 5 DISCONNECT with a reason), and proxies in front of a broker that is down (a
connection taken, a CONNECT never answered), are played here packet by packet, with no thread and no sleep:
the listening socket's backlog completes the connection, and the test reads and writes the other end.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mqttlb.core.config import BrokerSettings
from mqttlb.mqtt import codec
from mqttlb.mqtt.events import ConnAck, Disconnect
from mqttlb.mqtt.link import CONNACK_TIMEOUT, Link, Lost


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    yield server
    server.close()


def opened(listener: socket.socket, now: float = 100.0) -> tuple[Link, socket.socket]:
    """A link that has sent its CONNECT, and the broker's end of its connection."""
    host, port = listener.getsockname()
    link = Link(BrokerSettings(host=host, port=port, client_id="probe"), "probe", persistent=True)
    link.enabled = True
    link.open(now)
    assert link.sock is not None
    peer, _ = listener.accept()
    peer.settimeout(5)
    assert peer.recv(65536)[0] == 0x10  # CONNECT
    return link, peer


def read_all(link: Link, now: float) -> list[object]:
    """What the link reads of what the broker end has written (loopback: there once written)."""
    assert link.sock is not None
    link.sock.setblocking(True)
    link.sock.settimeout(5)
    events = link.read(now)
    return list(events)


@pytest.mark.parametrize("reason", [0x8B, 0x98, 0x9C, 0x90])
def test_a_disconnect_from_the_broker_ends_the_connection_at_once(listener: socket.socket, reason: int) -> None:
    """The session stops at a DISCONNECT; the link stayed 'connected' until the socket closed, so the next publish,
    acknowledgement or ping raised in the session: a traceback, and exit 1."""
    link, peer = opened(listener)
    peer.sendall(codec.encode_connack(5, True) + codec.encode_disconnect(5, reason, reason_string="maintenance"))
    events = read_all(link, 101.0)
    assert [type(e) for e in events] == [ConnAck, Disconnect, Lost]
    lost = events[-1]
    assert isinstance(lost, Lost) and lost.reason == reason and not lost.taken_over
    assert "the broker disconnected us" in lost.detail and "maintenance" in lost.detail
    assert not link.connected and link.sock is None  # though the broker's end is still open
    assert link.keep_alive(200.0, reading=True) == []  # no ping on a session that is over
    peer.close()


def test_a_disconnect_that_says_taken_over_is_a_takeover(listener: socket.socket) -> None:
    link, peer = opened(listener)
    peer.sendall(codec.encode_connack(5, True) + codec.encode_disconnect(5, 0x8E))
    lost = read_all(link, 101.0)[-1]
    assert isinstance(lost, Lost) and lost.taken_over and lost.reason == 0x8E
    assert link.problem is not None and "the broker says so" in link.problem
    peer.close()


def test_quick_drops_the_broker_explains_are_not_called_a_takeover(listener: socket.socket) -> None:
    """Four drops right after connecting, each with a reason: the broker said why; it was no other client (unsaid
    quick drops, three in a row, are taken for a takeover)."""
    link, peer = opened(listener)
    for attempt in range(4):
        if attempt:
            link.next_attempt = 0.0
            link.open(100.0 + attempt)
            peer, _ = listener.accept()
            peer.settimeout(5)
            assert peer.recv(65536)[0] == 0x10
        peer.sendall(codec.encode_connack(5, True) + codec.encode_disconnect(5, 0x97))
        lost = read_all(link, 100.5 + attempt)[-1]
        assert isinstance(lost, Lost) and not lost.taken_over and "Quota exceeded" in lost.detail
        peer.close()
    assert link.problem is not None and "taken over" not in link.problem
    assert "drops this connection right after accepting it, 4 times in a row: Quota exceeded" in link.problem
    assert link.next_attempt >= 103.5 + 4  # backed off, doubling, as from a takeover


def test_a_connect_never_answered_is_given_up_and_said(listener: socket.socket) -> None:
    """A proxy that takes the connection and never answers: the link waited for ever, saying nothing."""
    link, peer = opened(listener)
    assert link.keep_alive(100.0 + CONNACK_TIMEOUT / 2, reading=True) == [] and link.sock is not None
    link.keep_alive(100.0 + CONNACK_TIMEOUT + 1, reading=True)
    assert link.sock is None and not link.connected
    assert link.problem is not None and "did not answer CONNECT" in link.problem
    assert link.due(link.next_attempt)  # and tries again, after its backoff
    peer.close()


def test_a_connect_not_read_is_not_given_up(listener: socket.socket) -> None:
    """The loop does not read a link whose window is full; its CONNACK may be waiting unread."""
    link, peer = opened(listener)
    link.keep_alive(100.0 + CONNACK_TIMEOUT + 1, reading=False)
    assert link.sock is not None
    link.close(0)
    peer.close()


@pytest.mark.parametrize(("expiry", "borrowed", "said"), [
    (7200.0, False, 7200), (0.0, False, 0), (60.0, True, 3600), (0.0, True, 3600), (7200.0, True, 7200)])
def test_a_reclaim_keeps_the_session_it_borrows_whatever_the_routers_own_expiry(
        listener: socket.socket, expiry: float, borrowed: bool, said: int) -> None:
    """A reclaim link took the configured expiry over a worker's session: with ``session_expiry: 0`` what was
    left in it would end with a dropped reclaim link."""
    host, port = listener.getsockname()
    link = Link(BrokerSettings(host=host, port=port, client_id="r", session_expiry=expiry), "w1", persistent=True,
                borrowed=borrowed)
    link.enabled = True
    link.open(100.0)
    peer, _ = listener.accept()
    peer.settimeout(5)
    connect = peer.recv(65536)
    assert connect[0] == 0x10 and b"\x11" + said.to_bytes(4, "big") in connect  # Session Expiry Interval
    peer.close()
    link.close(0.0)
