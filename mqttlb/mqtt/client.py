"""A threaded MQTT client on ``Session``, for workers and tools: it connects, reconnects and resubscribes.

One network thread owns the socket: it connects (``net.open_socket``), reads, decodes, runs the
callbacks, writes, pings every keep-alive and reconnects with a backoff. Other threads publish,
subscribe and acknowledge by encoding under a short lock into an outbox that the network thread
writes: nothing waits on the network but ``start``, ``wait_for_publish`` and ``stop``, and no lock is
held while user code runs.

QoS 1 publishes are kept until the broker acknowledges them: those made while disconnected, and
those in flight when the connection dropped, are sent after the next connect (the latter again with
DUP), but for any over the Maximum Packet Size the broker names then: those are refused (``REFUSED``),
as the broker would drop the connection over them on every reconnect. QoS 0 publishes made while
disconnected are lost (``Publication.rc`` says so).

Callbacks (``on_message``, ``on_connect``) run on the network thread: keep them short and hand slow
work to a thread of your own; while one runs, nothing is read, written or pinged.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..core.config import BrokerSettings
from ..errors import TransportError
from .codec import MQTT_5, MQTT_311, encode_topic_name, user_properties
from .errors import LocalProtocolError, PacketTooLarge, ProtocolError, RemoteProtocolError
from .events import BadPublish, ConnAck, Disconnect, PubAck, Publish, Subscription, Will
from .net import open_socket
from .reasons import reason_name, refusal
from .session import Session

log = logging.getLogger("mqttlb.mqtt.client")

RECEIVE_MAXIMUM = 1000
"""Inbound QoS 1 messages a manual-ack client holds unacknowledged at most (its MQTT 5 Receive Maximum)."""
READ_SIZE = 65536
CONNECT_TIMEOUT = 10.0
"""Seconds to open the connection and to get the CONNACK."""
MAX_BACKOFF = 10.0

NOT_CONNECTED = 4
"""``Publication.rc`` of a QoS 0 publish made while disconnected, as paho's MQTT_ERR_NO_CONN."""
REFUSED = 0x80


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as a ``Client`` hands it to its callback."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    user_properties: tuple[tuple[str, str], ...]


class Publication:
    """What ``Client.publish`` returns: whether, and when, the broker has the message."""

    def __init__(self, topic: bytes, payload: bytes, qos: int, retain: bool, properties: bytes) -> None:
        self.topic, self.payload, self.qos, self.retain, self.properties = topic, payload, qos, retain, properties
        self.mid = 0
        self.rc = 0
        """0, NOT_CONNECTED for a QoS 0 publish made while disconnected, REFUSED for one the broker refused
        or could not take after a reconnect (over its Maximum Packet Size)."""
        self._done = threading.Event()

    def is_published(self) -> bool:
        """QoS 1: the broker acknowledged it; QoS 0: it was handed to the connection."""
        return self._done.is_set() and self.rc == 0

    def wait_for_publish(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _published(self, rc: int = 0) -> None:
        self.rc = rc
        self._done.set()


def _backoff(attempt: int) -> float:
    return min(MAX_BACKOFF, 0.5 * 2.0 ** min(attempt, 5))


class Client:
    """See the module docstring. ``ack`` and everything but the callbacks may be called from any thread."""

    def __init__(self, broker: BrokerSettings, client_id: str, *, persistent: bool = False,
                 manual_ack: bool = False, will: Will | None = None,
                 on_message: Callable[[Inbound], None] | None = None,
                 on_connect: Callable[[], None] | None = None) -> None:
        self.broker, self.client_id = broker, client_id
        self.persistent, self.manual_ack, self.will = persistent, manual_ack, will
        self._on_message, self._on_connect = on_message, on_connect
        self._session = Session(MQTT_5 if broker.protocol == "5" else MQTT_311)
        self._lock = threading.Lock()
        """Guards the session, the outbox and the publications; never held around I/O or a callback."""
        self._outbox = bytearray()
        self._subscriptions: dict[str, int] = {}
        self._in_flight: dict[int, Publication] = {}
        """QoS 1 publishes sent and not acknowledged, by packet id, oldest first."""
        self._unsent: list[Publication] = []
        """QoS 1 publishes made while disconnected."""
        self._wake_r, self._wake_w = socket.socket(), socket.socket()  # a pair made by start(); closed by the thread
        self._wake_r.close()
        self._wake_w.close()
        self._stopping = threading.Event()
        self._killed = False
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{client_id}", daemon=True)
        self.problem: str | None = None
        """Why the client is not connected, when it tried and failed."""

    @property
    def connected(self) -> bool:
        return self._session.connected

    # -- any thread --------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Client:
        """Connect and start the network thread; raises TransportError if the broker cannot be reached
        or refuses the connection within ``timeout`` seconds."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.connected:
            if self.problem is not None or time.monotonic() > deadline:
                problem = self.problem or f"cannot connect to {self.broker.host}:{self.broker.port} within {timeout:g}s"
                self._stopping.set()
                self._wake()
                self._thread.join(timeout)
                raise TransportError(problem)
            time.sleep(0.01)
        return self

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic_filter] = qos
            if self._session.connected:
                self._outbox += self._session.subscribe([Subscription(topic_filter, qos)])[1]
        self._wake()

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: bytes = b"") -> Publication:
        """Publish at QoS 0 or 1; ``properties`` is an encoded MQTT 5 property block's content (see
        ``codec.encode_user_properties``). Raises LocalProtocolError for what MQTT forbids."""
        publication = Publication(encode_topic_name(topic), payload, qos, retain, properties)
        with self._lock:
            if self._session.connected:
                self._send(publication)
            elif qos:
                self._unsent.append(publication)
            else:
                publication.rc = NOT_CONNECTED
        self._wake()
        return publication

    def ack(self, message: Inbound) -> None:
        """Acknowledge a QoS 1 message (manual_ack); dropped when the connection it came on is gone."""
        if message.qos:
            with self._lock:
                if self._session.connected:
                    self._outbox += self._session.puback(message.mid)
            self._wake()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no will) and stop the network thread."""
        with self._lock:
            if self._session.connected:
                self._outbox += self._session.disconnect()
        self._stopping.set()
        self._wake()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def kill(self) -> None:
        """Drop the connection without DISCONNECT and without writing what is queued, and stop: what a crash
        does (the broker publishes the will). For tests."""
        self._killed = True
        self._stopping.set()
        self._wake()
        if self._thread.ident is not None:
            self._thread.join(5.0)

    def _send(self, publication: Publication) -> None:
        """Encode into the outbox; the lock is held and the session connected."""
        mid, data = self._session.publish(publication.topic, publication.payload, publication.qos,
                                          retain=publication.retain, properties=publication.properties)
        self._outbox += data
        publication.mid = mid
        if mid:
            self._in_flight[mid] = publication
        else:
            publication._published()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (the thread is awake anyway) or closed (stopped)
            pass

    # -- the network thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                sock = open_socket(self.broker, CONNECT_TIMEOUT)
            except OSError as error:
                self._report(f"cannot connect to {self.broker.host}:{self.broker.port}: {error}")
            else:
                try:
                    if self._serve(sock):
                        attempt = 0
                except (OSError, ProtocolError) as error:
                    log.warning("%s: connection lost: %s", self.client_id, error)
                finally:
                    with self._lock:
                        self._session.closed()
                        self._outbox.clear()
                    sock.close()
            if self._stopping.wait(_backoff(attempt)):
                break
            attempt += 1
        self._wake_r.close()
        self._wake_w.close()

    def _connect_packet(self) -> bytes:
        keepalive = self.broker.keepalive
        return self._session.connect(
            self.client_id, clean_start=not self.persistent, keepalive=keepalive,
            session_expiry=int(self.broker.session_expiry) if self.persistent else None,
            receive_maximum=RECEIVE_MAXIMUM if self.manual_ack else None,
            username=self.broker.username, password=self.broker.password, will=self.will)

    def _serve(self, sock: socket.socket) -> bool:
        """One connection, until it ends; returns whether it got as far as a successful CONNACK."""
        with self._lock:
            connect = self._connect_packet()
        sock.sendall(connect)
        keepalive = float(self.broker.keepalive)
        last_read = last_ping = time.monotonic()
        established = False
        while True:
            now = time.monotonic()
            if not established and now - last_read > CONNECT_TIMEOUT:
                raise RemoteProtocolError(f"no CONNACK within {CONNECT_TIMEOUT:g}s")
            if established and keepalive and now - last_ping >= keepalive:
                with self._lock:
                    self._outbox += self._session.ping()
                last_ping = now
            if keepalive and now - last_read > 2 * keepalive:
                raise RemoteProtocolError(f"nothing from the broker for {now - last_read:.0f}s")
            if self._killed:
                return established
            self._flush(sock)
            if self._stopping.is_set():
                return established
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                wait = min(keepalive or 1.0, 1.0)
                readable, _, _ = select.select([sock, self._wake_r], [], [], wait)
                if self._wake_r in readable:
                    self._wake_r.recv(4096)
                if sock not in readable:
                    continue
            data = sock.recv(READ_SIZE)
            if not data:
                raise RemoteProtocolError("the broker closed the connection")
            last_read = time.monotonic()
            with self._lock:
                self._session.receive_data(data)
                events = self._session.events()
            for event in events:
                if isinstance(event, Publish):
                    self._arrived(event)
                elif isinstance(event, PubAck):
                    self._acknowledged(event)
                elif isinstance(event, ConnAck):
                    if not event.success:
                        self._report(refusal(event.reason, self.client_id))
                        return False
                    established = True
                    if event.server_keepalive is not None:
                        keepalive = float(event.server_keepalive)
                    self._established()
                elif isinstance(event, BadPublish):
                    log.warning("%s: acknowledging and dropping a message with a bad topic (%s): %r",
                                self.client_id, event.detail, event.topic[:200])
                    self._ack_id(event.qos, event.packet_id)
                elif isinstance(event, Disconnect):
                    log.warning("%s: the broker disconnected: %s", self.client_id, reason_name(event.reason))
                    return True

    def _flush(self, sock: socket.socket) -> None:
        with self._lock:
            data = bytes(self._outbox)
            self._outbox.clear()
        if data:
            sock.sendall(data)

    def _established(self) -> None:
        """After a successful CONNACK: send again what was kept, resubscribe, then tell the owner."""
        self._report(None)
        with self._lock:
            session = self._session
            again, self._in_flight = self._in_flight, {}
            if self.persistent:  # the session kept their packet ids: the same messages, sent again
                for publication in again.values():
                    try:
                        self._outbox += session.republish(publication.mid, publication.topic, publication.payload,
                                                          retain=publication.retain,
                                                          properties=publication.properties)
                    except PacketTooLarge as error:
                        self._refuse(publication, error)
                    else:
                        self._in_flight[publication.mid] = publication
            else:  # a clean start freed their ids: new messages to the broker, before the later ones
                self._unsent[:0] = again.values()
            unsent, self._unsent = self._unsent, []
            for publication in unsent:
                try:
                    self._send(publication)
                except LocalProtocolError as error:
                    self._refuse(publication, error)
            if self._subscriptions:
                subscriptions = [Subscription(f, qos) for f, qos in self._subscriptions.items()]
                self._outbox += session.subscribe(subscriptions)[1]
        log.info("%s: connected to %s:%s", self.client_id, self.broker.host, self.broker.port)
        if self._on_connect is not None:
            self._on_connect()

    def _refuse(self, publication: Publication, error: LocalProtocolError) -> None:
        """A publish kept across a reconnect that the broker would not take now: over the Maximum Packet Size it
        names on this connection (sent, it would cost the connection again on every reconnect)."""
        log.warning("%s: cannot send a publish to %r: %s", self.client_id, publication.topic[:200], error)
        publication._published(REFUSED)

    def _arrived(self, event: Publish) -> None:
        try:
            user = user_properties(event.properties) if event.properties else ()
        except RemoteProtocolError as error:
            log.warning("%s: acknowledging and dropping a message with malformed properties (%s) on %s",
                        self.client_id, error, event.topic[:200])
            self._ack_id(event.qos, event.packet_id)
            return
        message = Inbound(event.topic, event.payload, event.qos, event.retain, event.packet_id, user)
        if self._on_message is not None:
            self._on_message(message)
        if not self.manual_ack:
            self._ack_id(event.qos, event.packet_id)

    def _ack_id(self, qos: int, packet_id: int) -> None:
        if qos:
            with self._lock:
                self._outbox += self._session.puback(packet_id)

    def _acknowledged(self, ack: PubAck) -> None:
        with self._lock:
            publication = self._in_flight.pop(ack.packet_id, None)
        if publication is not None:
            if ack.reason >= 0x80:
                log.warning("%s: the broker refused a publish to %r: %s", self.client_id, publication.topic[:200],
                            reason_name(ack.reason))
            publication._published(REFUSED if ack.reason >= 0x80 else 0)

    def _report(self, problem: str | None) -> None:
        """Note why the client is not connected; each new problem is logged once (it retries for ever)."""
        if problem is not None and problem != self.problem:
            log.error("%s: %s", self.client_id, problem)
        self.problem = problem
