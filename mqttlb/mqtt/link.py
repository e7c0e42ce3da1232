"""One MQTT connection driven by the caller's loop: its socket, its session, reconnects, keep-alive, takeovers.

The service's loop owns every link and waits on their sockets itself: it calls
``open`` when a link is ``due``, ``read`` when its socket is readable,
``send`` to queue bytes the session made and ``flush`` once per turn, so the
packets of a burst leave in one system call. Nothing here blocks but ``open``
(a TCP connect and TLS handshake, bounded by ``CONNECT_TIMEOUT``), and nothing
here decides what a message means: the events go back to the caller, with a
``Lost`` when the connection went.

What a link does decide is how to get and keep a connection: a backoff that
grows with failed attempts; a refusal said once per new reason, with the fix;
and a session taken over by another client with the same id (MQTT 5 says so
with reason 0x8E; MQTT 3.1.1 only drops us right after accepting us, so three
such drops in a row count) said as an error and answered with a backoff that
doubles up to ``MAX_TAKEOVER_BACKOFF``, instead of a fight several times a
second.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import time
from dataclasses import dataclass

from ..core.config import BrokerSettings
from .codec import MAX_REMAINING_LENGTH
from .errors import RemoteProtocolError
from .events import ConnAck, Disconnect, Event, PingResp, Will
from .net import open_socket
from .reasons import reason_name, refusal, said
from .session import Session

log = logging.getLogger("mqttlb.link")

CONNECT_TIMEOUT = 5.0
CONNACK_TIMEOUT = 10.0
"""Seconds a CONNECT waits for its CONNACK before the connection is given up (MQTT: "a reasonable amount of
time"). A proxy in front of a broker that is down, or a hung broker, takes the connection and says nothing."""
READ_SIZE = 65536
SESSION_TAKEN_OVER = 0x8E
QUICK_DROP = 2.0
"""Seconds: a connection dropped this soon after it was accepted, ``QUICK_DROPS`` times in a row, was taken."""
QUICK_DROPS = 3
STABLE = 10.0
"""Seconds a connection must last to clear the suspicion of a takeover."""
MAX_TAKEOVER_BACKOFF = 60.0
BORROWED_EXPIRY = 3600
"""Seconds: the least a reclaimed session is kept for if the reclaim's link drops (the default
``broker.session_expiry``)."""


def backoff(attempt: int) -> float:
    return float(min(30.0, 0.25 * 2 ** min(attempt, 7)))


@dataclass(frozen=True, slots=True)
class Lost:
    """The connection went (after CONNACK): ``reason`` is the broker's DISCONNECT reason code, if it sent one."""

    reason: int | None
    detail: str
    taken_over: bool


class Link:
    """One connection of one client id; see the module docstring."""

    def __init__(self, broker: BrokerSettings, client_id: str, *, persistent: bool,
                 receive_maximum: int | None = None, borrowed: bool = False,
                 receive_buffer: int | None = None, will: Will | None = None,
                 max_incoming: int = MAX_REMAINING_LENGTH) -> None:
        """``borrowed``: the session is another client's (a reclaim), which may take it back at any time; that
        is no takeover to fight or to report. ``max_incoming``: the session's (its rule 6)."""
        self.name = client_id
        self.broker = broker
        self.persistent = persistent
        self.borrowed = borrowed
        self.receive_buffer = receive_buffer
        self.will = will
        self.receive_maximum = receive_maximum
        self.session = Session(5 if broker.protocol == "5" else 4, max_incoming)
        self.sock: socket.socket | None = None
        self.enabled = False
        """Whether it should be connected: the loop opens an enabled link that has no socket when it is due."""
        self.connected = False
        """CONNACK said yes and the socket is still there."""
        self.generation = 0
        """Counts connections: what came in on an earlier one cannot be acknowledged on this one."""
        self.attempt = 0
        self.next_attempt = 0.0
        self.problem: str | None = None
        """Why it is not connected, or keeps being dropped (for /healthz and the stats topic)."""
        self.connected_at = 0.0
        self.keepalive = broker.keepalive
        """Seconds: ours, or the Server Keep Alive the broker's CONNACK set instead (MQTT 5; Mosquitto's
        max_keepalive), which the broker times the connection out by."""
        self.quick_drops = 0
        self.backoffs = 0
        """Drops answered with a backoff that doubles: takeovers, and quick drops the broker gives a reason for."""
        self._out = bytearray()
        self._connect_size = 0
        self._opened_at = 0.0
        self._last_sent = 0.0
        self._ping_sent: float | None = None
        self._disconnect_reason: int | None = None

    @property
    def mqtt5(self) -> bool:
        return self.session.protocol == 5

    def due(self, now: float) -> bool:
        return self.enabled and self.sock is None and now >= self.next_attempt

    def report(self, problem: str | None) -> None:
        """Note the link's problem; each new one is logged once (a broker that refuses us is retried for ever)."""
        if problem is not None and problem != self.problem:
            log.error("%s: %s", self.name, problem)
        self.problem = problem

    # -- connecting -------------------------------------------------------------------------

    def _session_expiry(self) -> int | None:
        """MQTT 5's Session Expiry Interval for CONNECT: the configured one; a borrowed session (a reclaim) at
        least ``BORROWED_EXPIRY``, so what is left in it outlives a dropped reclaim link even when the router
        keeps no session of its own (``session_expiry: 0``)."""
        if not self.persistent:
            return None
        expiry = int(self.broker.session_expiry)
        return max(expiry, BORROWED_EXPIRY) if self.borrowed else expiry

    def open(self, now: float) -> None:
        """Connect the socket and send CONNECT; on failure say why (once) and schedule the next try."""
        self.next_attempt = max(self.next_attempt, now + backoff(self.attempt))
        self.attempt += 1
        try:
            sock = open_socket(self.broker, CONNECT_TIMEOUT, self.receive_buffer)
        except (OSError, ssl.SSLError) as error:
            problem = f"cannot connect to {self.broker.host}:{self.broker.port}: {error}"
            if problem == self.problem:
                log.debug("%s: %s (next try in %.1fs)", self.name, problem, self.next_attempt - now)
            self.report(problem)
            return
        sock.setblocking(False)
        self.sock = sock
        self._disconnect_reason = None
        self._out = bytearray(self.session.connect(
            self.name, clean_start=not self.persistent, keepalive=self.broker.keepalive,
            session_expiry=self._session_expiry(), receive_maximum=self.receive_maximum,
            username=self.broker.username, password=self.broker.password,
            will=self.will))
        self._connect_size = len(self._out)
        self._opened_at = self._last_sent = now
        self._ping_sent = None
        self.flush()

    def _accepted(self, ack: ConnAck, now: float) -> None:
        if ack.reason:
            self.report(refusal(ack.reason, self.name))
            self._close()
            return
        self.connected = True
        self.attempt = 0
        self.generation += 1
        self.connected_at = now
        self.keepalive = self.broker.keepalive if ack.server_keepalive is None else ack.server_keepalive
        if not self.backoffs:
            self.report(None)

    # -- reading and writing ----------------------------------------------------------------

    def read(self, now: float) -> list[Event | Lost]:
        """What the socket has, as events; ``Lost`` last when the connection went meanwhile."""
        sock = self.sock
        if sock is None:
            return []
        chunks: list[bytes] = []
        try:
            while True:
                data = sock.recv(READ_SIZE)
                if not data:
                    return self._lost(now, "the broker closed the connection", chunks)
                chunks.append(data)
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    break
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError as error:
            return self._lost(now, str(error), chunks)
        return self._decode(now, chunks)

    def _decode(self, now: float, chunks: list[bytes]) -> list[Event | Lost]:
        if not chunks:
            return []
        self.session.receive_data(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        try:
            events: list[Event | Lost] = list(self.session.events())
        except RemoteProtocolError as error:
            log.error("%s: the broker sent a malformed packet (%s); reconnecting", self.name, error)
            return self._lost(now, f"malformed packet from the broker: {error}", [])
        disconnect: Disconnect | None = None
        for event in events:
            if type(event) is ConnAck:
                self._accepted(event, now)
            elif type(event) is PingResp:
                self._ping_sent = None
            elif type(event) is Disconnect:
                disconnect = event
        if disconnect is not None:  # the connection is over now, though the broker may close its socket later
            self._disconnect_reason = disconnect.reason
            why = reason_name(disconnect.reason) + (f": {disconnect.reason_string}" if disconnect.reason_string
                                                    else "")
            events += self._lost(now, f"the broker disconnected us: {why}", [])
        return events

    def _lost(self, now: float, detail: str, chunks: list[bytes], ours: bool = False) -> list[Event | Lost]:
        """The connection went: closed, and a ``Lost`` last if it had been accepted. ``ours``: we gave up on it."""
        events = self._decode(now, chunks) if chunks else []
        if self.sock is None:  # the last bytes were a DISCONNECT, which said it already
            return events
        was_connected = self.connected
        self._close()
        if not was_connected:  # as Mosquitto does with a CONNECT over its max_packet_size, saying nothing
            self.report(f"the broker closed the connection without answering CONNECT; is the CONNECT "
                        f"({self._connect_size} bytes: client id, credentials, will) over its max_packet_size?")
            return events
        reason = self._disconnect_reason
        events.append(Lost(reason, detail, self._taken_over(reason, now, explained=ours or reason is not None)))
        return events

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the next ``flush``."""
        self._out += data

    def wants_write(self) -> bool:
        return bool(self._out)

    def flush(self) -> None:
        """Send what is queued, as much as the socket takes now (the rest waits for the next turn)."""
        if not self._out or self.sock is None:
            return
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:  # the connection broke: the next read says so
            self._out.clear()
            return
        del self._out[:sent]
        if sent:
            self._last_sent = time.monotonic()

    def keep_alive(self, now: float, reading: bool) -> list[Lost]:
        """Ping when nothing went out for half the keep-alive; give up on a broker that does not answer a ping,
        or a CONNECT within ``CONNACK_TIMEOUT``.

        A link the loop is not ``reading`` (the router's window is full) cannot hear the answer, so it is not
        given up on: its pings still keep the broker from dropping it.
        """
        keepalive = self.keepalive
        if not self.connected:
            if self.sock is not None and reading and now - self._opened_at > CONNACK_TIMEOUT:
                self._close()
                self.report(f"the broker at {self.broker.host}:{self.broker.port} took the connection but did not "
                            f"answer CONNECT in {CONNACK_TIMEOUT:.0f}s (a proxy in front of a broker that is down, "
                            f"or a broker that hangs); trying again")
            return []
        if not keepalive:
            return []
        if self._ping_sent is not None and reading and now - self._ping_sent > keepalive:
            log.warning("%s: no answer from the broker for %ds; reconnecting", self.name, keepalive)
            return [event for event in self._lost(now, "the broker stopped answering", [], ours=True)
                    if isinstance(event, Lost)]
        if self._ping_sent is None and now - self._last_sent >= keepalive / 2:
            self.send(self.session.ping())
            self._ping_sent = self._last_sent = now
        if self.backoffs or self.quick_drops:
            self._settled(now)
        return []

    # -- closing ------------------------------------------------------------------------------

    def close(self, grace: float, session_expiry: int | None = None) -> None:
        """Send what is queued and a DISCONNECT (the will is not published), waiting up to ``grace`` seconds.
        ``session_expiry`` 0 (MQTT 5) ends the session with the connection."""
        self.enabled = False
        if self.sock is None:
            return
        if self.connected:
            self.send(self.session.disconnect(session_expiry=session_expiry if self.mqtt5 else None))
        deadline = time.monotonic() + grace
        while self._out and self.sock is not None and time.monotonic() < deadline:
            self.flush()
            if self._out:
                select.select([], [self.sock], [], max(0.0, deadline - time.monotonic()))
        self._close()

    def _close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.connected = False
        self._out.clear()

    # -- takeovers ----------------------------------------------------------------------------

    def _taken_over(self, reason: int | None, now: float, explained: bool) -> bool:
        """Whether a drop was a takeover, and when to connect again.

        A takeover: the broker says so, or (unsaid) the last of ``QUICK_DROPS`` drops right after connecting that
        nothing else ``explained``. Quick drops the broker gives another reason for (it refuses something the
        link sends as soon as it connects) are no takeover, but are said, with the fix, and backed off from alike.
        """
        said_taken = reason == SESSION_TAKEN_OVER
        if self.borrowed:
            return said_taken
        self.quick_drops = self.quick_drops + 1 if now - self.connected_at < QUICK_DROP else 0
        if not said_taken and self.quick_drops < QUICK_DROPS:
            self.next_attempt = now + backoff(0)
            return False
        self.backoffs += 1
        delay = min(MAX_TAKEOVER_BACKOFF, 2.0 ** self.backoffs)
        self.next_attempt = now + delay
        if explained and not said_taken:
            why = said(reason) if reason is not None else "it stopped answering"
            self.report(f"the broker drops this connection right after accepting it, {self.quick_drops} times in a "
                        f"row: {why}. Backing off {delay:.0f}s")
            return False
        why = "the broker says so" if said_taken else f"dropped {self.quick_drops} times right after connecting"
        unless = "" if said_taken else (
            " Or the broker drops us over a packet it will not take: one over its maximum packet size, which MQTT "
            "3.1.1 brokers do not say (set broker.max_packet_size), or a retained one where retain_available is "
            "false; its log says which.")
        self.report(f"session taken over: another client connected with client id {self.name!r} ({why}). Two "
                    f"routers with the same broker.client_id? Give each router its own client_id (a share group's "
                    f"members too).{unless} Backing off {delay:.0f}s before taking it back")
        return True

    def _settled(self, now: float) -> None:
        """A connection that has lasted: what made it look taken over is over."""
        if self.connected and now - self.connected_at >= STABLE:
            log.info("%s: connected for %.0fs; the session is ours again", self.name, STABLE)
            self.backoffs = self.quick_drops = 0
            self.problem = None
