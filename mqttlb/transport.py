"""The router's three connections to the broker, driven by the service's loop: bytes in and out, events back.

* The *routing link* keeps a persistent session (stable client id, clean
  start off), receives the devices' messages and acknowledges one only when
  the service says so. It publishes nothing, so the loop can stop reading it
  when the router holds as many unacknowledged messages as it may (``poll``'s
  ``room``): TCP then holds the broker back. A message too long to forward
  is never held whole (``hold_at_most``).
* The *publishing link* (``<client_id>-fleet``) is a clean session that publishes
  forwards, dead letters and stats, and receives nothing else but their
  acknowledgements, so they never wait behind a routing link the loop is not
  reading, nor behind heartbeats. Those acknowledgements may wait up to
  ``ACK_LINGER`` to be read with the next device messages (see there).
* The *beats link* (``<client_id>-beats``) is a clean session that receives
  heartbeats (the workers', and the other routers') at QoS 0, so they never queue behind the messages the routing
  link holds. A storm of heartbeats costs little: of the heartbeats one read
  brings, only the last of each worker is handed on (a heartbeat is the
  worker's whole state).

* A *reclaim link* per session being reclaimed (``core.reclaim``) connects
  with a departed worker's or router's client id, clean start off, and
  receives what is queued there; like the routing link, it is read only while
  there is room, and acknowledges only when the service says so. Its owner
  may take it back at any time: that is no takeover to fight.

The routing link connects only after the beats link has received the retained
heartbeats (an UNSUBSCRIBE sent right after the SUBSCRIBE is answered only
once they are out), so messages queued at the broker during a restart meet a
fleet that is already known.

``poll`` returns what happened as events, in order; the service handles them
top to bottom. A publish carries a tag of the service's choosing, which comes
back in ``Settled`` (or in ``PublishesDropped`` when the publishing link went
with it in flight: it is never sent again by itself; see ``inflight``, rule 5).
The MQTT itself is ``mqttlb.mqtt``'s pure session; this module only moves its
bytes.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from .core.config import BrokerSettings
from .core.limits import UserProperties
from .core.topics import filter_matches
from .errors import TransportError
from .logs import RateLimited
from .mqtt.client import Client
from .mqtt.codec import KEPT_HEAD, MAX_REMAINING_LENGTH, encode_user_properties
from .mqtt.errors import PacketTooLarge
from .mqtt.events import BadPublish, ConnAck, Oversized, PubAck, Publish, SubAck, Subscription, UnsubAck, Will
from .mqtt.link import Link, Lost
from .mqtt.reasons import NO_MATCHING_SUBSCRIBERS, reason_name

log = logging.getLogger("mqttlb.transport")

MAX_RECEIVE = 65535
"""MQTT 5's Receive Maximum when the broker names none."""
ACK_LINGER = 0.001
"""Seconds the forwards' acknowledgements may wait unread after the last were read, while there is room.

At QoS 1 each forward's PUBACK comes some tens of microseconds after it. Read as it comes, it takes a turn of
its own: a ``select``, a read and a write of the device messages' acknowledgements, for two or three messages
(about four turns in ten of a bench run). Read at most once in this time, unless other sockets wake the loop
first, they share a turn with the next device messages: the router's CPU per message at QoS 1 fell by about a
quarter. No forward waits for it; only the device messages' acknowledgements to the broker do, by at most this, and
not at all once what awaits acknowledgement is as much as the room left to take messages in."""
RECLAIM_WINDOW = 500
"""The most messages a reclaim link holds unacknowledged (its Receive Maximum)."""
RECLAIM_BUFFER = 32768
"""Bytes of a reclaim link's kernel receive buffer. Mosquitto counts what waits there as delivered and sends
it to the owner again if it takes its session back: a small buffer keeps those duplicates few."""

PUBLISHING_SUFFIX = "-fleet"
"""The publishing link's client id is ``<client_id>-fleet``: broker ACLs and the README name it, so it stays."""
BEATS_SUFFIX = "-beats"
CHECK_SUFFIX = "-check"
"""``probe``'s client id: ``mqttlb check --connect`` must not take a running router's session."""

SYNC_TOPIC = "mqttlb/router/sync"
"""Unsubscribed right after the heartbeat subscription: its UNSUBACK marks the end of the retained heartbeats."""

Tag = TypeVar("Tag")


class Outcome(Enum):
    """How a publish ended."""

    ACKED = "acked"        # the broker has it (a QoS 0 one: it is written)
    REFUSED = "refused"    # the broker answered with a failure reason code, or took it for no subscriber
    LOST = "lost"          # a QoS 0 publish made while its connection was down
    TOO_LARGE = "too_large"  # over the Maximum Packet Size the broker named (MQTT 5): not sent, never will be


ACKED, REFUSED, LOST, TOO_LARGE = Outcome.ACKED, Outcome.REFUSED, Outcome.LOST, Outcome.TOO_LARGE
"""The outcomes as module names, for the hot path: ``Outcome.ACKED`` is looked up through the Enum class, at
~100 ns on Python 3.11, three times for every message."""


@dataclass(frozen=True, slots=True)
class DeviceMessages:
    """Messages from the routing link's subscriptions, in order, all from its connection ``generation``
    (one event for a read's worth: the router forwards tens of thousands a second)."""

    generation: int
    messages: list[Publish]


@dataclass(frozen=True, slots=True)
class OversizedMessage:
    """A device message from the routing link too long to hold (``hold_at_most``): only its head was kept."""

    generation: int
    message: Oversized


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """A heartbeat (or a will, or a cleared retained heartbeat) from the beats link."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedBeat:
    """A heartbeat (a worker's or a router's) too long to be one: read past, never held (``codec.KEPT_HEAD``)."""

    topic: str
    payload_size: int


@dataclass(frozen=True, slots=True)
class RouterHeartbeat:
    """Another router's heartbeat (or will), or this one's own, from the beats link."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Settled(Generic[Tag]):
    """The broker acknowledged the QoS 1 publishes made with ``acked``, in order, and refused ``refused`` (with
    its reason code: a failure, or 0x10, No matching subscribers: taken, and then thrown away); ``too_large``:
    publishes made while the publishing link was down, over the Maximum Packet Size the broker named when it
    came back (they were not sent)."""

    acked: list[Tag]
    refused: list[tuple[Tag, int]]
    too_large: Sequence[Tag] = ()


@dataclass(frozen=True, slots=True)
class PublishesDropped(Generic[Tag]):
    """The publishing link went with these publishes unacknowledged, in the order they were made. ``suspect``:
    the drop may have been the broker refusing one of them (not a takeover; the routing link stayed up)."""

    tags: list[Tag]
    suspect: bool


@dataclass(frozen=True, slots=True)
class PublishingConnected:
    """The publishing link is up: the broker's Maximum Packet Size and Receive Maximum (MQTT 5), if it said them."""

    max_packet_size: int | None
    receive_maximum: int


@dataclass(frozen=True, slots=True)
class RoutingConnected:
    connected: bool
    generation: int


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """Messages taken from the session reclaim ``reclaim`` is emptying, in order, from its connection
    ``generation``."""

    reclaim: int
    generation: int
    messages: list[Publish | Oversized]
    """``Oversized``: too long to hold (``hold_at_most``); rare, so in their place among the others."""


@dataclass(frozen=True, slots=True)
class ReclaimConnected:
    reclaim: int
    generation: int
    session_present: bool


@dataclass(frozen=True, slots=True)
class ReclaimLost:
    """A reclaim link went; ``taken_back``: the session's owner said it took it (MQTT 5)."""

    reclaim: int
    taken_back: bool


Event = (DeviceMessages | OversizedMessage | WorkerBeat | RouterHeartbeat | OversizedBeat | Settled[Tag]
         | PublishesDropped[Tag] | PublishingConnected | RoutingConnected | Reclaimed | ReclaimConnected | ReclaimLost)


class Transport(Generic[Tag]):
    """Drives both links on the calling thread; see the module docstring."""

    def __init__(self, broker: BrokerSettings, *, heartbeat_filter: str, routes: list[Subscription],
                 max_inflight: int = 1000, routers_filter: str | None = None, will: Will | None = None,
                 max_payload: int = MAX_REMAINING_LENGTH) -> None:
        """``routers_filter``: the routers' heartbeats, also read on the beats link; ``will``: the routing
        link's (its session is what a dead router leaves behind); ``max_payload``: see ``hold_at_most``."""
        self._broker = broker
        self._max_incoming = max_payload + KEPT_HEAD
        self._heartbeat_filter = heartbeat_filter
        self._routers_filter = routers_filter
        self._routes = routes
        self._held: list[Subscription] = []
        """The route subscriptions the routing link's broker session holds, as far as this process knows: what it
        subscribed since the session was last new. A reconnect that finds the session present subscribes only
        what is missing; subscribing again would, with MQTT 3.1.1, make the broker send every retained device
        message again, to be routed again."""
        self._routing = Link(broker, broker.client_id, persistent=broker.session_expiry > 0,
                             receive_maximum=max_inflight, will=will, max_incoming=self._max_incoming)
        # Acknowledgements and heartbeats are small: a longer packet is never held whole (a retained heartbeat
        # of 200 MiB would cost every router that starts three times that).
        self._publishing = Link(broker, broker.client_id + PUBLISHING_SUFFIX, persistent=False,
                                max_incoming=KEPT_HEAD)
        self._beats = Link(broker, broker.client_id + BEATS_SUFFIX, persistent=False, max_incoming=KEPT_HEAD)
        self._links = (self._publishing, self._beats, self._routing)
        self._reclaiming: dict[int, Link] = {}
        """Reclaim links by reclaim id."""
        self._unsubscribing: dict[int, list[str]] = {}
        """The filters a reclaim link drops from its session once connected, by reclaim id."""
        self._ending: list[Link] = []
        """MQTT 3.1.1 clean connections that end a reclaimed session (it has no session expiry to set)."""
        self._pending: dict[int, Tag] = {}
        """QoS 1 publishes in flight on the publishing link, by packet id, in the order they were made."""
        self._unsent: list[tuple[str, bytes, bytes, Tag]] = []
        """QoS 1 publishes made while the publishing link was down: sent, in order, once it is back."""
        self._dropped: tuple[list[Tag], bool] | None = None
        self._waiting: list[Publish | BadPublish | Oversized] = []
        """Device messages read but not yet handed on: the window had no room for them."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sync_id: int | None = None
        self._bad_topics = RateLimited(log)
        self._asked: dict[tuple[str, int], list[Subscription]] = {}
        """SUBSCRIBEs awaiting their SUBACK, by link name and packet id."""
        self._read_acks_at = 0.0
        """When the publishing link's acknowledgements are next read even if nothing else wakes the loop."""
        self.reconnects = 0
        self.publish_window = MAX_RECEIVE
        """The most QoS 1 publishes the broker takes unacknowledged (its MQTT 5 Receive Maximum)."""
        self.mqtt5 = broker.protocol == "5"

    # -- public API ----------------------------------------------------------

    @property
    def wake_fd(self) -> int:
        """Writing a byte here interrupts ``poll`` (for signal.set_wakeup_fd)."""
        return self._wake_w.fileno()

    @property
    def connected(self) -> bool:
        """All three links are up: messages and heartbeats come in, forwards and acknowledgements go out."""
        return self._routing.connected and self._publishing.connected and self._beats.connected

    @property
    def problem(self) -> str | None:
        """Why the router is not (or not steadily) connected: refused, taken over, unreachable; None if fine."""
        return self._publishing.problem or self._beats.problem or self._routing.problem

    @property
    def pending(self) -> int:
        """Publishes made and not yet acknowledged by the broker."""
        return len(self._pending) + len(self._unsent)

    def start(self) -> None:
        self._publishing.enabled = self._beats.enabled = True

    def hold_at_most(self, max_payload: int) -> None:
        """Device messages whose body is longer than ``max_payload`` and a topic's and properties' worth come
        as ``OversizedMessage``, their payload never held (the session's rule 6): the router could not forward
        them."""
        self._max_incoming = max_payload + KEPT_HEAD
        for link in (self._routing, *self._reclaiming.values()):
            link.session.max_incoming = self._max_incoming

    def update_routes(self, routes: list[Subscription]) -> None:
        """Subscribe to the filters a reloaded config adds and unsubscribe from those it drops, now if
        the routing link is up, else when it connects. Messages already held are not affected."""
        self._routes = routes
        if self._routing.connected:
            self._subscribe()

    def _subscribe(self) -> None:
        """Bring the session's subscriptions from ``_held`` to ``_routes``. With MQTT 5, retain handling 1 also
        keeps retained device messages from coming again for a subscription the session had."""
        routes, session = self._routes, self._routing.session
        dropped = [s.filter for s in self._held if s.filter not in {r.filter for r in routes}]
        added = [s for s in routes if s not in self._held]
        if dropped:
            self._routing.send(session.unsubscribe(dropped)[1])
        if added:
            self._subscribe_on(self._routing, added)
        self._held = list(routes)

    def _subscribe_on(self, link: Link, subscriptions: list[Subscription]) -> None:
        packet_id, data = link.session.subscribe(subscriptions)
        self._asked[(link.name, packet_id)] = subscriptions
        link.send(data)

    def _granted(self, link: Link, ack: SubAck, what: str) -> bool:
        """Say what the broker did not grant of a SUBSCRIBE: refused filters as the link's problem (logged, and
        in /healthz), filters granted a lower QoS than asked as a warning. Whether all were granted."""
        refused, lowered = ungranted(self._asked.pop((link.name, ack.packet_id), []), ack.reasons)
        if lowered:
            log.warning("%s: the broker granted %s: less than asked, so what comes there may be lost (the broker's "
                        "max_qos?)", link.name, ", ".join(lowered))
        if refused:
            link.report(f"the broker refused the {what} subscription to {', '.join(refused)}; the broker's log (or "
                        f"its ACL) says why")
        return not refused

    def poll(self, timeout: float, room: int, reclaim_room: int = 0) -> list[Event[Tag]]:
        """One turn: connect what needs it, wait for the sockets (at most ``timeout``), read, keep alive.

        Hands on at most ``room`` device messages; with no room the routing link is not read at all, and
        with no ``reclaim_room`` the reclaim links are not.
        """
        now = time.monotonic()
        events: list[Event[Tag]] = []
        links = [*self._links, *self._reclaiming.values(), *self._ending]
        for link in links:
            if link.sock is None and link.due(now):
                link.open(now)
        if self._waiting and room > 0:
            room -= self._hand_on(events, room)
            timeout = 0.0
        reading = room > 0 and not self._waiting
        reclaiming = {link.sock: (reclaim_id, link) for reclaim_id, link in self._reclaiming.items()
                      if link.sock is not None} if self._reclaiming else {}
        acks_wait = 0 < len(self._pending) < room and now < self._read_acks_at
        if acks_wait:
            timeout = min(timeout, self._read_acks_at - now)
        readers: list[Any] = [self._wake_r]
        writers: list[Any] = []
        for link in links:
            sock = link.sock
            if sock is None:
                if link.enabled:
                    timeout = min(timeout, link.next_attempt - now)
                continue
            if link is self._routing:
                if reading:
                    readers.append(sock)
            elif link is self._publishing:
                if not acks_wait:
                    readers.append(sock)
            elif reclaim_room > 0 or sock not in reclaiming:
                readers.append(sock)
            if link.wants_write():
                writers.append(sock)
        timeout = max(0.0, timeout)
        try:
            readable, _, _ = select.select(readers, writers, [], timeout)
        except (OSError, ValueError):  # a socket closed under us: the next turn reconnects
            readable = []
        now = time.monotonic()
        if self._wake_r in readable:
            self._drain_wake()
        publishing = self._publishing.sock
        if publishing is not None and (publishing in readable or acks_wait and readable):  # woken anyway: read them
            self._from_publishing(self._publishing.read(now), events)
            self._read_acks_at = now + ACK_LINGER
        if self._beats.sock is not None and self._beats.sock in readable:
            self._from_beats(self._beats.read(now), events)
        if self._routing.sock is not None and self._routing.sock in readable:
            self._from_routing(self._routing.read(now), events, room)
        for sock, (reclaim_id, link) in reclaiming.items():
            if sock in readable:
                self._from_reclaim(reclaim_id, link, link.read(now), events)
            self._from_reclaim(reclaim_id, link, link.keep_alive(now, reading=reclaim_room > 0), events)
        for link in list(self._ending):
            if link.sock is not None and link.sock in readable and any(
                    type(event) is ConnAck for event in link.read(now)) or not link.enabled:
                link.close(0.5)  # a clean start has ended the old session: nothing more to do
                self._ending.remove(link)
        lost = self._publishing.keep_alive(now, reading=True)
        if lost:
            self._from_publishing(lost, events)
        lost = self._beats.keep_alive(now, reading=True)
        if lost:
            self._from_beats(lost, events)
        lost = self._routing.keep_alive(now, reading=reading)
        if lost:
            self._from_routing(lost, events, 0)
        if self._dropped is not None:  # said once the routing link was read too: if it went as well, no refusal
            (tags, taken_over), self._dropped = self._dropped, None
            events.append(PublishesDropped(tags, suspect=not taken_over and self._routing.connected))
        self.flush()
        return events

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _from_publishing(self, events_in: list[Any], events: list[Event[Tag]]) -> None:
        pending = self._pending
        acked: list[Tag] = []
        refused: list[tuple[Tag, int]] = []
        for event in events_in:
            kind = type(event)
            if kind is PubAck:
                tag = pending.pop(event.packet_id, None)
                if tag is not None:
                    if event.reason >= 0x80 or event.reason == NO_MATCHING_SUBSCRIBERS:
                        refused.append((tag, event.reason))
                    else:
                        acked.append(tag)
                continue
            if acked or refused:  # what was settled before, in order
                events.append(Settled(acked, refused))
                acked, refused = [], []
            if kind is ConnAck:
                if self._publishing.connected:
                    self._publishing_up(event, events)
            elif kind is Lost:
                self._publishing_lost(event)
        if acked or refused:
            events.append(Settled(acked, refused))

    def _from_beats(self, events_in: list[Any], events: list[Event[Tag]]) -> None:
        latest: dict[str, bytes] = {}
        for event in events_in:
            kind = type(event)
            if kind is Publish:
                latest.pop(event.topic, None)  # the last of each worker's, in the order they came
                latest[event.topic] = event.payload
            elif kind is Oversized:
                events.append(OversizedBeat(event.topic, event.payload_size))
            elif kind is ConnAck:
                if self._beats.connected:
                    link = self._beats
                    filters = [Subscription(self._heartbeat_filter, 0)]
                    if self._routers_filter is not None:
                        filters.append(Subscription(self._routers_filter, 0))
                    self._subscribe_on(link, filters)
                    self._sync_id, data = link.session.unsubscribe([SYNC_TOPIC])
                    link.send(data)
            elif kind is SubAck:
                self._granted(self._beats, event, "heartbeat")
            elif kind is UnsubAck:
                if event.packet_id == self._sync_id and not self._routing.enabled:
                    log.info("fleet known; connecting the routing link")
                    self._routing.enabled = True
                    self._routing.next_attempt = 0.0
            elif kind is Lost:
                self._count_lost(self._beats, event)
        routers = self._routers_filter
        events.extend(RouterHeartbeat(topic, payload) if routers is not None and filter_matches(routers, topic)
                      else WorkerBeat(topic, payload) for topic, payload in latest.items())

    def _publishing_up(self, ack: ConnAck, events: list[Event[Tag]]) -> None:
        self.publish_window = ack.receive_maximum if self.mqtt5 else MAX_RECEIVE
        events.append(PublishingConnected(ack.maximum_packet_size, self.publish_window))  # the limits first
        unsent, self._unsent = self._unsent, []
        too_large = [tag for topic, payload, properties, tag in unsent
                     if self._send(topic, payload, 1, properties, tag) is TOO_LARGE]
        if too_large:
            events.append(Settled([], [], too_large))

    def _publishing_lost(self, lost: Lost) -> None:
        self._count_lost(self._publishing, lost)
        dropped, self._pending = list(self._pending.values()), {}
        if dropped:
            self._dropped = (dropped, lost.taken_over)

    def _from_routing(self, events_in: list[Any], events: list[Event[Tag]], room: int) -> None:
        for event in events_in:
            kind = type(event)
            if kind is Publish or kind is BadPublish or kind is Oversized:
                self._waiting.append(event)
            elif kind is ConnAck:
                if self._routing.connected:
                    log.info("routing link connected (session present: %s)", event.session_present)
                    if not event.session_present:
                        if self._held and self._routing.persistent:  # this process had one: the broker lost it
                            log.warning("%s: the broker kept no session for the router (a broker restarted without "
                                        "persistence, or past broker.session_expiry): device messages that came "
                                        "while it was away are lost", self._routing.name)
                        self._held = []
                    self._subscribe()
                    events.append(RoutingConnected(True, self._routing.generation))
            elif kind is Lost:
                self._count_lost(self._routing, event)
                self._waiting.clear()  # unacknowledged: the broker sends them again
                events.append(RoutingConnected(False, self._routing.generation))
            elif kind is SubAck and not self._granted(self._routing, event, "route"):
                self._held = []  # asked again on the next connection
        if self._waiting:
            self._hand_on(events, room)

    def _from_reclaim(self, reclaim_id: int, link: Link, events_in: list[Any], events: list[Event[Tag]]) -> None:
        messages: list[Publish | Oversized] = []
        for event in events_in:
            kind = type(event)
            if kind is Publish or kind is Oversized:
                messages.append(event)
            elif kind is BadPublish:
                self._drop(link, event)
            elif kind is ConnAck and link.connected:
                filters = self._unsubscribing.get(reclaim_id)
                if filters:  # before anything else: no new message is to join what the session holds
                    link.send(link.session.unsubscribe(filters)[1])
                events.append(ReclaimConnected(reclaim_id, link.generation, event.session_present))
            elif kind is Lost:
                if messages:
                    events.append(Reclaimed(reclaim_id, link.generation, messages))
                    messages = []
                link.enabled = False
                self._reclaiming.pop(reclaim_id, None)
                self._unsubscribing.pop(reclaim_id, None)
                events.append(ReclaimLost(reclaim_id, event.taken_over))
        if messages:
            events.append(Reclaimed(reclaim_id, link.generation, messages))

    def reclaim(self, reclaim_id: int, client_id: str, unsubscribe: list[str] | None = None) -> None:
        """Take over the session of ``client_id`` (a departed worker or router) on a link of its own; once
        connected, drop the session's subscriptions to ``unsubscribe`` (a router's share of the stream would
        never stop coming, and the session would never be empty)."""
        if unsubscribe:
            self._unsubscribing[reclaim_id] = unsubscribe
        link = Link(self._broker, client_id, persistent=True, receive_maximum=RECLAIM_WINDOW, borrowed=True,
                    receive_buffer=RECLAIM_BUFFER, max_incoming=self._max_incoming)
        link.enabled = True
        self._reclaiming[reclaim_id] = link

    def end_reclaim(self, reclaim_id: int, *, end_session: bool) -> None:
        """Close reclaim ``reclaim_id``'s link; with ``end_session``, the session it emptied ends too."""
        link = self._reclaiming.pop(reclaim_id, None)
        self._unsubscribing.pop(reclaim_id, None)
        if link is None:
            return
        ending = end_session and link.connected
        link.close(0.5, session_expiry=0 if ending else None)  # MQTT 3.1.1 has no expiry: a clean connect ends it
        if ending and not link.mqtt5:
            cleaner = Link(self._broker, link.name, persistent=False, borrowed=True)
            cleaner.enabled = True
            self._ending.append(cleaner)

    def _count_lost(self, link: Link, lost: Lost) -> None:
        if link.enabled:
            self.reconnects += 1
            if not lost.taken_over:
                log.warning("%s: disconnected (%s); reconnecting", link.name, lost.detail)

    def _hand_on(self, events: list[Event[Tag]], room: int) -> int:
        """Up to ``room`` of the device messages read, in order; how many."""
        waiting = self._waiting
        count = min(room, len(waiting))
        generation = self._routing.generation
        messages: list[Publish] = []
        for event in waiting[:count]:
            if type(event) is Publish:
                messages.append(event)
            elif isinstance(event, BadPublish):
                self._drop(self._routing, event)
            elif isinstance(event, Oversized):  # in its place among the others
                if messages:
                    events.append(DeviceMessages(generation, messages))
                    messages = []
                events.append(OversizedMessage(generation, event))
        del waiting[:count]
        if messages:
            events.append(DeviceMessages(generation, messages))
        return count

    def _drop(self, link: Link, bad: BadPublish) -> None:
        """A broker passing a topic that is not a valid topic name: acknowledge it, for it cannot be routed (nor
        dead-lettered under its topic), and say so, rate-limited."""
        self._bad_topics.warning("topic", time.monotonic(), "%s: dropping a message whose topic is not a valid "
                                 "topic name (%s): %r", link.name, bad.detail, bad.topic[:200])
        if bad.qos:
            link.send(link.session.puback(bad.packet_id))

    def flush(self) -> None:
        """Send what is queued, without waiting for the sockets."""
        for link in self._links:
            link.flush()
        for link in self._reclaiming.values():
            link.flush()

    def flush_publishing(self) -> None:
        """Write the forwards queued so far, without waiting for the socket."""
        self._publishing.flush()

    def publish(self, topic: str, payload: bytes, qos: int, properties: bytes, tag: Tag) -> Outcome | None:
        """Publish on the publishing link. None: ``Settled`` (or ``PublishesDropped``) comes later; a QoS 1 publish
        made while the link is down is sent when it is back. A QoS 0 one is settled at once: ACKED once
        queued, LOST without a connection. TOO_LARGE: over the broker's Maximum Packet Size, not sent."""
        if not self._publishing.connected:
            if qos == 0:
                return LOST
            self._unsent.append((topic, payload, properties, tag))
            return None
        return self._send(topic, payload, qos, properties, tag)

    def _send(self, topic: str, payload: bytes, qos: int, properties: bytes, tag: Tag) -> Outcome | None:
        link = self._publishing
        try:
            packet_id, data = link.session.publish(topic.encode("utf-8"), payload, qos, properties=properties)
        except PacketTooLarge:
            return TOO_LARGE
        link.send(data)
        if qos == 0:
            return ACKED
        self._pending[packet_id] = tag
        return None

    def properties(self, inbound: bytes, user: UserProperties) -> bytes:
        """MQTT 5 properties of a forward or dead letter: ``inbound`` (a message's own, encoded), then ``user``."""
        if not self.mqtt5:
            return b""
        return inbound + encode_user_properties(user)

    def announce(self, topic: str, payload: bytes) -> None:
        """Publish retained, fire-and-forget (stats, heartbeats): the next one takes its place anyway. The caller
        checked it against the broker's limits; one over them is not sent."""
        link = self._publishing
        if link.connected:
            try:
                link.send(link.session.publish(topic.encode("utf-8"), payload, 0, retain=True)[1])
            except PacketTooLarge as error:
                log.warning("not published on %s: %s", topic[:200], error)

    def ack(self, packet_ids: list[int], source: int = 0) -> None:
        """Acknowledge inbound messages, in order and in one write, on the routing link, or (``source``) on that
        reclaim's link; the service checked that they came on this connection."""
        link = self._reclaiming.get(source) if source else self._routing
        if packet_ids and link is not None and link.connected:
            link.send(link.session.pubacks(packet_ids))

    def close(self, grace: float = 2.0) -> None:
        """Send what is queued (acknowledgements above all), then disconnect both links cleanly.

        Waits up to ``grace`` seconds for a socket the broker is slow to empty: an acknowledgement
        left behind would bring its message back, as a duplicate, to the next router.
        """
        self._routing.close(grace)  # its acknowledgements first
        for link in [*self._reclaiming.values(), *self._ending]:
            link.close(grace)  # a reclaim unfinished: the session keeps the rest, for the owner or the next router
        self._reclaiming.clear()
        self._ending.clear()
        self._publishing.close(grace)
        self._beats.close(grace)
        self._wake_r.close()
        self._wake_w.close()


def ungranted(asked: list[Subscription], reasons: Sequence[int]) -> tuple[list[str], list[str]]:
    """Of the filters ``asked`` in a SUBSCRIBE, and its SUBACK's ``reasons``: those refused, and those granted a
    lower QoS than asked, each with what the broker said."""
    answered = list(zip(asked, reasons, strict=False))
    refused = [f"{s.filter} ({reason_name(reason)}, 0x{reason:02X})" for s, reason in answered if reason >= 0x80]
    refused += [f"{s.filter} (not answered: the SUBACK has {len(reasons)} codes for {len(asked)} filters)"
                for s in asked[len(answered):]]
    lowered = [f"{s.filter} QoS {reason} (asked {s.qos})" for s, reason in answered if reason < s.qos]
    return refused, lowered


def own_client_ids(client_id: str) -> set[str]:
    """The client ids of a router's own connections: never reclaimed, whatever a heartbeat says."""
    return {client_id, *(client_id + suffix for suffix in (PUBLISHING_SUFFIX, BEATS_SUFFIX, CHECK_SUFFIX))}


def probe(broker: BrokerSettings, timeout: float = 10.0) -> str | None:
    """Connect once with ``broker``'s settings (as ``<client_id>-check``, so a running router keeps its session)
    and disconnect: None if the broker accepts them, else why not."""
    try:  # the operating system's reason, which a refused connect would not pass on
        socket.create_connection((broker.host, broker.port), timeout).close()
    except OSError as error:
        return f"cannot connect to {broker.host}:{broker.port}: {error}"
    client = Client(broker, broker.client_id + CHECK_SUFFIX)
    quiet = logging.getLogger("mqttlb.mqtt.client")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the caller says what is wrong, once
    try:
        client.start(timeout)
    except TransportError as error:
        return str(error)
    finally:
        quiet.setLevel(level)
    client.stop()
    return None
