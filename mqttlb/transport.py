"""The only module that talks to paho: connections, sessions, acks, reconnects.

Two paho clients run in external-loop mode on one thread, so nothing else in
mqttlb needs a lock:

* the *routing link* keeps a persistent session (stable client id, clean start
  off), receives the devices' messages and acknowledges one only when ``ack``
  is called, which the service does once the broker has acknowledged its
  forward. It publishes nothing, so the router can stop reading it when it
  holds as many unacknowledged messages as it may (``poll``'s ``room``): TCP
  then holds the broker back. Mosquitto 2.0.11 does not keep to a client's
  Receive Maximum once acknowledgements flow, so the bound has to be ours.
* the *fleet link* is a clean session that receives heartbeats at QoS 0, so
  they never queue behind the messages the routing link holds unacknowledged,
  and publishes forwards, dead letters and stats, so their acknowledgements
  never wait behind a routing link the router is not reading.

The routing link connects only after the fleet link has received the retained
heartbeats (an UNSUBSCRIBE sent right after the SUBSCRIBE is answered only
once they are out), so messages queued at the broker during a restart meet a
fleet that is already known. Callbacks only hand data on to the ``Handler``.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Generic, Protocol, TypeVar, cast

import paho.mqtt.client as paho
import paho.mqtt.properties as paho_properties
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MalformedPacket, Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .config import BrokerSettings
from .errors import TransportError
from .limits import UserProperties
from .mqtt.reasons import refusal as mqtt_refusal

log = logging.getLogger("mqttlb.transport")

MAX_RECEIVE = 65535
"""MQTT 5's Receive Maximum when the broker names none."""

READ_BATCH = 16
"""Packets read from a link before what they caused is sent: a bigger batch saves system calls, a smaller one
keeps a message from waiting behind many others (16 packets take a few hundred microseconds)."""

SYNC_TOPIC = "mqttlb/router/sync"
"""Unsubscribed right after the heartbeat subscription: its UNSUBACK marks the end of the retained heartbeats."""


def _read_utf(buffer: bytes, maxlen: int) -> tuple[str, int]:
    """paho's ``readUTF`` without its refusal of U+FEFF.

    MQTT 5 (1.5.4) says a U+FEFF must not be skipped or stripped, not that it is
    malformed, and Mosquitto passes it on. paho-mqtt 2.x refuses it and drops
    the connection; the broker then delivers the same message again on the next
    one, for ever: one device's user property would stop the router, and a
    topic carried in ``mqttlb-topic`` would stop a worker. Every client in
    mqttlb (router, ``mqttlb.Worker``, tools) imports this module, so this
    replacement covers them all.
    """
    if maxlen < 2:
        raise MalformedPacket("Not enough data to read string length")
    length = int.from_bytes(buffer[:2], "big")
    if length > maxlen - 2:
        raise MalformedPacket("Length delimited string too long")
    try:
        text = bytes(buffer[2:2 + length]).decode("utf-8")
    except UnicodeDecodeError as error:
        raise MalformedPacket(f"invalid UTF-8: {error}") from None
    if "\x00" in text:
        raise MalformedPacket("[MQTT-1.5.4-2] Null found in UTF-8 data")
    return text, length + 2  # surrogates cannot come out of a strict UTF-8 decode


paho_properties.readUTF = _read_utf  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class _Encoded:
    """PUBLISH properties encoded once by us: paho only ever calls ``pack()`` on the object publish() gets,
    and building paho's own Properties cost more than the rest of a forward."""

    data: bytes

    def pack(self) -> bytes:
        return self.data


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _variable_int(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_variable_int(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``at``: (its value, where what follows it starts)."""
    value = 0
    for shift in range(0, 28, 7):
        if at >= len(data):
            break
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise MalformedPacket("bad variable byte integer")


def _encoded(inbound: bytes, user: UserProperties) -> Properties:
    """The device's own properties as they came, then ``user``.

    A PUBLISH from Mosquitto carries only properties worth passing on (payload format, expiry, content
    type, response topic, correlation data, user properties): no topic alias or subscription identifier,
    as the router asks for neither. So they go on untouched, never decoded.
    """
    body = inbound + b"".join(b"\x26" + _utf8(name) + _utf8(value) for name, value in user)
    return cast(Properties, _Encoded(_variable_int(len(body)) + body))


@dataclass(frozen=True, slots=True)
class Receipt:
    """What acknowledging an inbound message takes, tied to its connection."""

    generation: int
    mid: int
    qos: int
    properties: bytes
    """The message's MQTT 5 properties as they came, encoded (empty with MQTT 3.1.1)."""


class Handler(Protocol):
    def on_message(self, topic: str, payload: bytes, receipt: Receipt) -> None: ...
    def on_heartbeat(self, topic: str, payload: bytes) -> None: ...
    def on_routing_connected(self, connected: bool) -> None: ...
    def on_publishing_connected(self, max_packet_size: int | None) -> None: ...
    def on_publishes_dropped(self, dropped: list[Dropped], suspect: bool) -> None: ...


class Outcome(Enum):
    """How a publish ended."""

    ACKED = "acked"        # the broker has it
    REFUSED = "refused"    # the broker or the client library refused it: sending again will not help
    LOST = "lost"          # a QoS 0 publish made while its connection was down
    DROPPED = "dropped"    # in flight when the broker dropped the connection: not sent, to be made again
    POISON = "poison"      # the same, and the poison guard named it the culprit: quarantine it


Done = Callable[[Outcome], None]


@dataclass(frozen=True, slots=True)
class Dropped:
    """A QoS 1 publish that was in flight when the broker dropped the connection. It is not sent again by
    itself: a publish that broke a limit of the broker would be dropped again, for ever."""

    done: Done
    receipt: Receipt | None
    """The inbound message it was for."""


@dataclass(frozen=True, slots=True)
class Subscription:
    filter: str
    qos: int


def _backoff(attempt: int) -> float:
    return float(min(30.0, 0.25 * 2 ** min(attempt, 7)))


SESSION_TAKEN_OVER = 0x8E
"""MQTT 5's DISCONNECT reason when another client connected with the same client id."""

QUICK_DROP = 2.0
"""Seconds: a connection the broker drops this soon after accepting it, three times in a row, is taken over
(MQTT 3.1.1 says no reason); one that lasts ``STABLE`` seconds clears the suspicion."""
QUICK_DROPS = 3
STABLE = 10.0
MAX_TAKEOVER_BACKOFF = 60.0

def refusal(reason: ReasonCode, name: str) -> str:
    """Why the broker refused a connection, and what to do about it, in one line."""
    return mqtt_refusal(reason.value, name)


class _BatchingClient(paho.Client):
    """paho's client with its socket I/O batched, for the router's two links.

    paho reads a packet with at least three ``recv`` calls and writes each
    packet with a ``send`` of its own; the router moves thousands of small
    packets a second. All of paho's socket I/O goes through two private
    methods, ``_sock_recv`` and ``_sock_send`` (paho-mqtt 2.0 to 2.2, the
    versions pyproject allows): here reads are served from one large ``recv``,
    and writes collect until ``flush_output`` sends them in one call.
    Acknowledgements of QoS 1 publishes come through ``_do_on_publish``. The
    tests of the transport run through this class, so a paho release that
    changes those methods fails them rather than the router.
    """

    READ_SIZE = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox = b""
        self._inbox_at = 0
        self._outbox = bytearray()
        self.on_acknowledged: Callable[[int, bool], None] | None = None
        """Called with (mid, refused) when the broker answers a QoS 1 publish. Unlike paho's on_publish it
        costs nothing for QoS 0 publishes, for which paho builds a reason code and properties each time."""
        self.on_publish_packet: Callable[[bytes, bytes, int, int, bytes], None] | None = None
        """Called with (topic, payload, qos, mid, encoded properties) for each PUBLISH at QoS 0 or 1, in place
        of on_message: no MQTTMessage and no Properties object are built, and the properties go on as they
        came. With manual_ack, a QoS 1 message is acknowledged only by ack()."""

    def _handle_publish(self) -> paho.MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if self.on_publish_packet is None or qos > 1:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        end = 2 + int.from_bytes(packet[:2], "big")
        topic = bytes(packet[2:end])
        mid = 0
        if qos:
            mid, end = int.from_bytes(packet[end:end + 2], "big"), end + 2
        properties = b""
        if self._protocol == paho.MQTTv5:
            length, start = _read_variable_int(packet, end)
            properties, end = bytes(packet[start:start + length]), start + length
        if end > len(packet):
            raise MalformedPacket("PUBLISH shorter than its own lengths")
        self.on_publish_packet(topic, bytes(packet[end:]), qos, mid, properties)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return paho.MQTT_ERR_SUCCESS

    def send_publish_qos0(self, topic: bytes, payload: bytes, properties: bytes | None) -> bool:
        """A QoS 0 PUBLISH written straight to the outgoing buffer; False when not connected.

        paho's publish() would build a message-info object, encode, queue and write the packet one
        step at a time; a QoS 0 packet needs none of paho's bookkeeping.
        """
        if self._sock is None or not self.is_connected():
            return False
        body = len(topic).to_bytes(2, "big") + topic + (properties if properties is not None else b"") + payload
        self._outbox += b"\x30" + _variable_int(len(body)) + body
        return True

    def _do_on_publish(self, mid: int, reason_code: ReasonCode, properties: Properties) -> paho.MQTTErrorCode:
        rc = super()._do_on_publish(mid, reason_code, properties)
        if self.on_acknowledged is not None:
            self.on_acknowledged(mid, reason_code.is_failure)
        return rc

    def buffered_input(self) -> bool:
        """Bytes were read from the socket that paho has not taken yet."""
        return self._inbox_at < len(self._inbox)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._inbox_at >= len(self._inbox):
            data = super()._sock_recv(self.READ_SIZE)  # BlockingIOError when there is nothing
            if not data:
                return data  # the broker closed the connection
            self._inbox, self._inbox_at = data, 0
        chunk = self._inbox[self._inbox_at:self._inbox_at + bufsize]
        self._inbox_at += len(chunk)
        return chunk

    def _sock_send(self, buf: bytes | bytearray) -> int:
        self._outbox += buf
        return len(buf)

    def want_write(self) -> bool:
        return bool(self._outbox) or super().want_write()

    def flush_output(self) -> None:
        """Send what collected, as much as the socket takes now."""
        if not self._outbox or self._sock is None:
            return
        try:
            sent = self._sock.send(self._outbox)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:  # the connection broke: the next read tells paho, which reconnects
            self._outbox.clear()
            return
        del self._outbox[:sent]

    def _sock_close(self) -> None:
        if self._sock is not None and self._outbox:  # a DISCONNECT paho wrote just before closing, say
            try:
                self._sock.send(self._outbox)
            except OSError:
                pass
        self._outbox.clear()
        self._inbox, self._inbox_at = b"", 0
        super()._sock_close()


def _has_data(sock: Any) -> bool:
    """Whether a read would find something now (TLS may hold decrypted bytes the kernel no longer has)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


PahoClient = TypeVar("PahoClient", bound=paho.Client)


class _Link(Generic[PahoClient]):
    """One paho client, connected and reconnected by the transport's loop."""

    def __init__(self, broker: BrokerSettings, client_id: str, persistent: bool, manual_ack: bool,
                 max_inflight: int, client_class: type[PahoClient]) -> None:
        self.name = client_id
        self.broker = broker
        self.persistent = persistent
        self.protocol = paho.MQTTv5 if broker.protocol == "5" else paho.MQTTv311
        self.client = client_class(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   clean_session=None if self.protocol == paho.MQTTv5 else not persistent,
                                   protocol=self.protocol, manual_ack=manual_ack)
        self.client.max_inflight_messages_set(max_inflight)
        self.receive_maximum = max_inflight if manual_ack else None
        self.client.max_queued_messages_set(0)
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls is not None:
            self.client.tls_set(ca_certs=broker.tls.ca_certs, certfile=broker.tls.certfile,
                                keyfile=broker.tls.keyfile, cert_reqs=ssl.CERT_REQUIRED)
        self.connected = False
        self.generation = 0
        self.attempt = 0
        self.next_attempt = 0.0
        self.enabled = False
        self.problem: str | None = None
        """Why the link is not connected, or keeps being dropped (for /healthz and the stats topic)."""
        self.connected_at = 0.0
        self.quick_drops = 0
        self.takeovers = 0

    def report(self, problem: str | None) -> None:
        """Note the link's problem; each new one is logged once (a broker that refuses us is retried for ever)."""
        if problem is not None and problem != self.problem:
            log.error("%s: %s", self.name, problem)
        self.problem = problem

    @property
    def mqtt5(self) -> bool:
        return self.protocol == paho.MQTTv5

    def prepare(self) -> None:
        """Give paho the CONNECT options: the session is persistent or clean, never in between."""
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            if self.persistent:
                properties.SessionExpiryInterval = int(self.broker.session_expiry)
            if self.receive_maximum is not None:  # what we hold unacknowledged: the broker sends no more
                properties.ReceiveMaximum = self.receive_maximum
            self.client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive,
                                      clean_start=not self.persistent, properties=properties)
        else:
            self.client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive)

    def connect(self, now: float) -> None:
        """Open the socket and send CONNECT; on failure schedule the next try."""
        self.next_attempt = now + _backoff(self.attempt)
        self.attempt += 1
        try:
            self.prepare()
            self.client.reconnect()
            self.no_delay()
        except (OSError, ssl.SSLError) as error:
            problem = f"cannot connect to {self.broker.host}:{self.broker.port}: {error}"
            if problem == self.problem:
                log.debug("%s: %s (next try in %.1fs)", self.name, problem, self.next_attempt - now)
            self.report(problem)

    def taken_over(self, reason: ReasonCode | int, now: float) -> bool:
        """After a drop: whether another client took the session, and if so back off longer each time."""
        said = isinstance(reason, ReasonCode) and reason.value == SESSION_TAKEN_OVER
        self.quick_drops = self.quick_drops + 1 if now - self.connected_at < QUICK_DROP else 0
        if not said and self.quick_drops < QUICK_DROPS:
            return False
        self.takeovers += 1
        delay = min(MAX_TAKEOVER_BACKOFF, 2.0 ** self.takeovers)
        self.next_attempt = now + delay
        self.report(f"session taken over: another client connected with client id {self.name!r} "
                    f"({'the broker says so' if said else f'dropped {self.quick_drops} times right after connecting'})"
                    f". Two routers with the same broker.client_id? Give each router its own client_id (a share "
                    f"group's members too). Backing off {delay:.0f}s before taking it back")
        return True

    def settled(self, now: float) -> None:
        """A connection that has lasted: what made it look taken over is over."""
        if self.connected and (self.takeovers or self.quick_drops) and now - self.connected_at >= STABLE:
            log.info("%s: connected for %.0fs; the session is ours again", self.name, STABLE)
            self.takeovers = self.quick_drops = 0
            self.problem = None

    def socket(self) -> Any:
        return self.client.socket()

    def no_delay(self) -> None:
        """Turn Nagle's algorithm off: paho leaves it on, and a small packet would wait for the last one's ACK."""
        sock: Any = self.client.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not TCP (a test double) or already closed: nothing to tune
                pass


class Transport:
    """Drives both links on the calling thread; see the module docstring."""

    def __init__(self, broker: BrokerSettings, handler: Handler, *, heartbeat_filter: str,
                 routes: list[Subscription], max_inflight: int = 1000) -> None:
        self._handler = handler
        self._heartbeat_filter = heartbeat_filter
        self._routes = routes
        self._broker = broker
        self._routing = _Link(broker, broker.client_id, persistent=True, manual_ack=True,
                              max_inflight=max_inflight, client_class=_BatchingClient)
        self._fleet = self._new_fleet_link()
        self._pending: dict[int, Dropped] = {}
        """QoS 1 publishes in flight on the fleet link, in the order they were made."""
        self._dropped: tuple[list[Dropped], bool] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sync_mid: int | None = None
        self._routing_read = 0.0
        self.reconnects = 0
        self._wire(self._routing, self._on_routing_connect)
        self._routing.client.on_publish_packet = self._on_routing_message
        self.publish_window = MAX_RECEIVE
        """The most QoS 1 publishes the broker takes unacknowledged (its MQTT 5 Receive Maximum)."""
        self.max_packet_size: int | None = None
        """The broker's Maximum Packet Size, when its MQTT 5 CONNACK names one."""

    def _new_fleet_link(self) -> _Link[_BatchingClient]:
        """The publishing link with a client of its own: a clean session, so a new client loses nothing at the
        broker, and it holds none of the publishes of an earlier connection, which paho would send again."""
        # What the fleet link has in flight is bounded by the service's window (see publish_window); paho's
        # own limit (0: none) would scan every message it holds on each PUBACK, a cost growing with the window.
        link = _Link(self._broker, self._broker.client_id + "-fleet", persistent=False, manual_ack=False,
                     max_inflight=0, client_class=_BatchingClient)
        self._wire(link, self._on_fleet_connect)
        link.client.on_message = self._on_heartbeat
        link.client.on_unsubscribe = self._on_fleet_unsubscribe
        link.client.on_acknowledged = self._on_acknowledged
        return link

    def _wire(self, link: _Link[_BatchingClient], on_connect: Callable[..., None]) -> None:
        link.client.on_connect = on_connect
        link.client.on_disconnect = lambda client, userdata, flags, reason, properties: \
            self._on_disconnect(link, reason)

    # -- public API ----------------------------------------------------------

    @property
    def wake_fd(self) -> int:
        """Writing a byte here interrupts ``poll`` (for signal.set_wakeup_fd)."""
        return self._wake_w.fileno()

    @property
    def problem(self) -> str | None:
        """Why the router is not (or not steadily) connected: refused, taken over, unreachable; None if fine."""
        return self._fleet.problem or self._routing.problem

    @property
    def connected(self) -> bool:
        """Both links are up: messages come in and their forwards and acknowledgements can go out."""
        return self._routing.connected and self._fleet.connected

    @property
    def pending(self) -> int:
        """Publishes sent and not yet acknowledged by the broker."""
        return len(self._pending)

    def start(self) -> None:
        self._fleet.enabled = True

    def update_routes(self, routes: list[Subscription]) -> None:
        """Subscribe to the filters a reloaded config adds and unsubscribe from those it drops, now if
        the routing link is up, else when it connects. Messages already held are not affected."""
        added = [s for s in routes if s not in self._routes]
        dropped = [s.filter for s in self._routes if s.filter not in {r.filter for r in routes}]
        self._routes = routes
        if self._routing.connected:
            if dropped:
                self._routing.client.unsubscribe(dropped)
            self._subscribe(added)

    def _subscribe(self, routes: list[Subscription]) -> None:
        if not routes:
            return
        if self._routing.mqtt5:  # retain handling 1: retained device messages are not routed again
            self._routing.client.subscribe([(s.filter, SubscribeOptions(qos=s.qos, retainHandling=1))
                                            for s in routes])
        else:
            self._routing.client.subscribe([(s.filter, s.qos) for s in routes])

    def poll(self, timeout: float, room: int) -> None:
        """One turn: connect what needs it, wait for the sockets, read, write, keep alive.

        Reads at most ``room`` packets from the routing link; with no room it is not read at all,
        except one packet every half keepalive, so the broker's PINGRESP keeps the link alive.
        """
        now = time.monotonic()
        for link in (self._fleet, self._routing):
            if link.enabled and link.socket() is None and now >= link.next_attempt:
                link.connect(now)
        links = [link for link in (self._fleet, self._routing) if link.socket() is not None]
        overdue = now - self._routing_read >= self._routing.broker.keepalive / 2
        routing_room = room if room > 0 else (1 if overdue else 0)
        readers: list[Any] = [self._wake_r] + [link.socket() for link in links
                                               if link is not self._routing or routing_room]
        writers = [link.socket() for link in links if link.client.want_write()]
        waits = [link.next_attempt - now for link in (self._fleet, self._routing)
                 if link.enabled and link.socket() is None]
        buffered = [link for link in links if link.client.buffered_input() and (link is self._fleet or routing_room)]
        timeout = 0.0 if buffered else max(0.0, min([timeout, *waits]))
        try:
            readable, _, _ = select.select(readers, writers, [], timeout)
        except (OSError, ValueError):  # a socket closed under us: the next turn reconnects
            readable = []
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        for link in links:
            sock = link.socket()
            if sock is not None and (sock in readable or link in buffered):
                self._read(link, sock, min(routing_room, READ_BATCH) if link is self._routing else READ_BATCH)
            if link.socket() is not None:
                link.client.loop_misc()
            link.settled(now)
        if self._dropped is not None:  # told once every link was read: was the routing link dropped too?
            (dropped, takeover), self._dropped = self._dropped, None
            self._handler.on_publishes_dropped(dropped, suspect=not takeover and self._routing.connected)
        self.flush()

    def _read(self, link: _Link[_BatchingClient], sock: Any, limit: int) -> None:
        """Packets while there are any, up to ``limit`` (paho's loop_read may take just one)."""
        if link is self._routing:
            self._routing_read = time.monotonic()
        client, count = link.client, 0
        while True:
            client.loop_read()
            count += 1
            if count >= limit or link.socket() is not sock:
                return
            if not client.buffered_input() and not _has_data(sock):
                return

    def flush(self) -> None:
        """Send what paho and the callbacks queued, without waiting for the sockets."""
        for link in (self._routing, self._fleet):
            if link.socket() is not None:
                if link.client.want_write():
                    link.client.loop_write()
                link.client.flush_output()

    def publish(self, topic: str, payload: bytes, qos: int, properties: Properties | None, done: Done,
                receipt: Receipt | None = None) -> None:
        """Publish on the fleet link (for the inbound message ``receipt``); ``done`` runs once with the outcome.

        A QoS 1 publish made while the link is down goes out when it is back (paho keeps it); one in
        flight when the broker drops the link is handed back to ``on_publishes_dropped``. A QoS 0
        one is done as soon as it is in the outgoing buffer (ACKED), or at once when there is no
        connection (LOST): nothing more will be heard of it.
        """
        if qos == 0:
            packed = properties.pack() if properties is not None else (b"\x00" if self._fleet.mqtt5 else None)
            sent = self._fleet.client.send_publish_qos0(topic.encode("utf-8"), payload, packed)
            done(Outcome.ACKED if sent else Outcome.LOST)
            return
        try:
            info = self._fleet.client.publish(topic, payload, qos, retain=False, properties=properties)
        except ValueError as error:  # a topic or payload paho refuses: never let it reach the socket
            log.error("publish to %r refused by the client library: %s", topic[:200], error)
            done(Outcome.REFUSED)
            return
        self._pending[info.mid] = Dropped(done, receipt)

    def announce(self, topic: str, payload: bytes) -> bool:
        """Publish retained, fire-and-forget (stats): the next one takes its place anyway. False when the
        broker's Maximum Packet Size would not take it (the broker would drop the connection)."""
        if not self._fleet.connected:
            return True
        if self.max_packet_size is not None and 64 + len(topic.encode("utf-8")) + len(payload) > self.max_packet_size:
            return False
        self._fleet.client.publish(topic, payload, 0, retain=True)
        return True

    def ack(self, receipt: Receipt) -> None:
        """Acknowledge an inbound message, unless its connection has gone (the broker sends it again)."""
        if receipt.qos > 0 and receipt.generation == self._routing.generation and self._routing.connected:
            self._routing.client.ack(receipt.mid, receipt.qos)

    def properties(self, inbound: bytes, user: UserProperties) -> Properties | None:
        """MQTT 5 properties of a forward or dead letter: ``inbound`` (a message's own, encoded), then ``user``."""
        if not self._fleet.mqtt5:
            return None
        return _encoded(inbound, user)

    def close(self, grace: float = 2.0) -> None:
        """Send what is queued (acknowledgements above all), then disconnect both links cleanly.

        Waits up to ``grace`` seconds for a socket the broker is slow to empty: an acknowledgement
        left behind would bring its message back, as a duplicate, to the next router.
        """
        give_up = time.monotonic() + grace
        for link in (self._routing, self._fleet):
            link.enabled = False
            while (sock := link.socket()) is not None and link.client.want_write() and time.monotonic() < give_up:
                link.client.loop_write()
                link.client.flush_output()
                if link.client.want_write():
                    select.select([], [sock], [], max(0.0, give_up - time.monotonic()))
            if link.socket() is not None:
                link.client.disconnect()
        self._wake_r.close()
        self._wake_w.close()

    # -- paho callbacks: short, they hand on ----------------------------------

    def _on_fleet_connect(self, client: paho.Client, userdata: object, flags: Any, reason: ReasonCode,
                          properties: Properties | None) -> None:
        if reason.is_failure:
            self._fleet.report(refusal(reason, self._fleet.name))
            return
        self._connected(self._fleet)
        self.publish_window = getattr(properties, "ReceiveMaximum", MAX_RECEIVE) if self._fleet.mqtt5 else MAX_RECEIVE
        self.max_packet_size = getattr(properties, "MaximumPacketSize", None) if self._fleet.mqtt5 else None
        self._handler.on_publishing_connected(self.max_packet_size)
        client.subscribe(self._heartbeat_filter, qos=0)
        _, self._sync_mid = client.unsubscribe(SYNC_TOPIC)

    def _on_fleet_unsubscribe(self, client: paho.Client, userdata: object, mid: int, reasons: Any,
                              properties: Any) -> None:
        if mid == self._sync_mid and not self._routing.enabled:
            log.info("fleet known; connecting the routing link")
            self._routing.enabled = True
            self._routing.next_attempt = 0.0

    def _on_routing_connect(self, client: paho.Client, userdata: object, flags: Any, reason: ReasonCode,
                            properties: Properties | None) -> None:
        if reason.is_failure:
            self._routing.report(refusal(reason, self._routing.name))
            return
        self._connected(self._routing)
        log.info("routing link connected (session present: %s)", bool(flags.session_present))
        self._subscribe(self._routes)
        self._handler.on_routing_connected(True)

    def _connected(self, link: _Link) -> None:
        link.connected = True
        link.attempt = 0
        link.generation += 1
        link.connected_at = time.monotonic()
        if not link.takeovers:
            link.report(None)

    def _on_disconnect(self, link: _Link, reason: ReasonCode | int) -> None:
        if not link.connected:
            return
        link.connected = False
        if not link.enabled:  # close() asked for it: nothing to reconnect or count
            log.info("%s: disconnected", link.name)
            return
        self.reconnects += 1
        now = time.monotonic()
        link.next_attempt = now + _backoff(0)
        takeover = link.taken_over(reason, now)
        if not takeover:
            log.warning("%s: disconnected (%s); reconnecting", link.name, reason)
        if link is self._routing:
            self._handler.on_routing_connected(False)
            return
        # What the old client held would be sent again as it was; the service decides what to send again.
        dropped, self._pending = list(self._pending.values()), {}
        fresh = self._new_fleet_link()
        fresh.enabled, fresh.next_attempt, fresh.problem = True, link.next_attempt, link.problem
        fresh.quick_drops, fresh.takeovers, fresh.connected_at = link.quick_drops, link.takeovers, link.connected_at
        self._fleet = fresh
        self._dropped = (dropped, takeover)

    def _on_routing_message(self, topic: bytes, payload: bytes, qos: int, mid: int, properties: bytes) -> None:
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:  # a broker passing invalid UTF-8: acknowledge, it cannot be routed
            log.warning("dropping a message whose topic is not UTF-8: %r", topic[:200])
            self._routing.client.ack(mid, qos)
            return
        self._handler.on_message(text, payload, Receipt(self._routing.generation, mid, qos, properties))

    def _on_heartbeat(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            return
        self._handler.on_heartbeat(topic, bytes(message.payload))

    def _on_acknowledged(self, mid: int, refused: bool) -> None:
        pending = self._pending.pop(mid, None)
        if pending is not None:
            pending.done(Outcome.REFUSED if refused else Outcome.ACKED)


# -- a plain client for workers, the simulator and tools ------------------------------


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as a ``Client`` hands it to its callback."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    user_properties: tuple[tuple[str, str], ...]


class Client:
    """A paho client on its own network thread that reconnects and resubscribes by itself.

    Callbacks run on that thread: keep them short and hand slow work to another
    thread. With ``manual_ack`` an inbound QoS 1 message is acknowledged only by
    ``ack``, which any thread may call.
    """

    def __init__(self, broker: BrokerSettings, client_id: str, *, persistent: bool = False,
                 manual_ack: bool = False, will: tuple[str, bytes] | None = None,
                 on_message: Callable[[Inbound], None] | None = None,
                 on_connect: Callable[[], None] | None = None) -> None:
        self._link = _Link(broker, client_id, persistent=persistent, manual_ack=manual_ack, max_inflight=1000,
                           client_class=paho.Client)
        self.client = self._link.client
        self._subscriptions: dict[str, int] = {}
        self._on_message = on_message
        self._on_connect = on_connect
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.reconnect_delay_set(1, 10)

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected())

    def start(self, timeout: float = 10.0) -> Client:
        """Connect and start the network thread; raises TransportError if the broker cannot be reached."""
        link = self._link
        link.prepare()
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.connected:
            if link.problem is not None or time.monotonic() > deadline:
                self.client.loop_stop()
                raise TransportError(link.problem or f"cannot connect to {link.broker.host}:{link.broker.port} "
                                     f"within {timeout:g}s")
            time.sleep(0.01)
        return self

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now and again after every reconnect."""
        self._subscriptions[topic_filter] = qos
        self.client.subscribe(topic_filter, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos, retain=retain, properties=properties)

    def ack(self, message: Inbound) -> None:
        if message.qos > 0:
            self.client.ack(message.mid, message.qos)

    def stop(self) -> None:
        """Disconnect cleanly (no will) and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def _connected(self, client: paho.Client, userdata: object, flags: Any, reason: ReasonCode,
                   properties: Properties | None) -> None:
        if reason.is_failure:
            self._link.report(refusal(reason, self._link.name))
            return
        self._link.report(None)
        self._link.no_delay()
        for topic_filter, qos in self._subscriptions.items():
            client.subscribe(topic_filter, qos)
        if self._on_connect is not None:
            self._on_connect()

    def _message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        properties = getattr(message, "properties", None)
        user = tuple(getattr(properties, "UserProperty", ()) or ())
        self._on_message(Inbound(message.topic, bytes(message.payload), message.qos, bool(message.retain), message.mid,
                                 user))


def probe(broker: BrokerSettings, timeout: float = 10.0) -> str | None:
    """Connect once with ``broker``'s settings (as ``<client_id>-check``, so a running router keeps its session)
    and disconnect: None if the broker accepts them, else why not."""
    try:  # the operating system's reason, which paho would not pass on
        socket.create_connection((broker.host, broker.port), timeout).close()
    except OSError as error:
        return f"cannot connect to {broker.host}:{broker.port}: {error}"
    client = Client(broker, f"{broker.client_id}-check")
    client.client.reconnect_delay_set(int(timeout) + 1, int(timeout) + 1)  # one try: a refusal is answered at once
    level = log.level
    log.setLevel(logging.CRITICAL)  # the caller says what is wrong, once
    try:
        client.start(timeout)
    except TransportError as error:
        return str(error)
    finally:
        log.setLevel(level)
    client.stop()
    return None
