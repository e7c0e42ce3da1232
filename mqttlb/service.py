"""The running router: config, routing core and transport wired on one thread, in one loop.

A message's whole life reads top to bottom in ``_turn``: the transport's
``poll`` returns what happened as events; a device's message goes to the pure
``Router``, which answers with actions (forward, dead letter, hold); each
becomes a publish on the publishing link tagged with its action; when the broker
settles that publish, the inbound message is acknowledged, by the rules of
``inflight``. What a departed worker left in its broker session comes in on
a reclaim link and takes the same path (``core.reclaim``). This module also
owns the clock, the signals, the counters, the
stats topic and the metrics endpoint, which it hands a pulse every tick and
a snapshot when asked.
"""

from __future__ import annotations

import gc
import logging
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace

import orjson

from .core import config as config_module
from .core.config import Config
from .core.inflight import InFlight, Receipt, receipt_of
from .core.pool import Departure, Fleet, FleetFull, Health
from .core.reclaim import Ended, Owner, Reclaim, Reclaims
from .core.router import Action, DeadLetter, Forward, Message, Reason, Router, message_of
from .core.routers import BEAT as ROUTER_BEAT
from .core.routers import RouterBeat, Routers
from .core.stats import Backlog, Counters, Moment, snapshot
from .core.topics import inbox_filter, original_topic
from .errors import BadHeartbeat, ConfigError
from .logs import RateLimited
from .metrics import MetricsServer, Pulse
from .mqtt.codec import user_properties, without_user_properties
from .mqtt.errors import ProtocolError
from .mqtt.events import Oversized, Publish, Subscription, Will
from .mqtt.reasons import NO_MATCHING_SUBSCRIBERS, coded
from .transport import (
    ACKED,
    RECLAIM_WINDOW,
    REFUSED,
    TOO_LARGE,
    DeviceMessages,
    Outcome,
    OversizedBeat,
    OversizedMessage,
    PublishesDropped,
    PublishingConnected,
    ReclaimConnected,
    Reclaimed,
    ReclaimLost,
    RouterHeartbeat,
    RoutingConnected,
    Settled,
    Transport,
    WorkerBeat,
    own_client_ids,
)

Publishable = Forward[Receipt] | DeadLetter[Receipt]
"""What the router publishes for a message: the tag its publish carries until the broker settles it."""

log = logging.getLogger("mqttlb.router")

FLUSH_EVERY = 64
"""Device messages of one read routed before their forwards are written: a read of 64 KiB holds hundreds."""

SHUTDOWN_GRACE = 10.0
"""Seconds a stopping router waits for its forwards to be acknowledged."""

TICK = 0.25
"""How often heartbeat timeouts and hold deadlines are applied (their resolution)."""

LINGER_FROM = 8
LINGER = 0.0002
"""Seconds the loop waits after a turn that took in ``LINGER_FROM`` device messages or more, before it looks again.

Under load, a router faster than its broker wakes for every few messages the broker sends, and pays a turn's
fixed costs (a ``select``, reads, the acknowledgements' writes, and on a busy machine the wake-up itself) for
each few. Waiting a fifth of a millisecond, the next turn finds more. ``mqttlb bench``'s mqttlb with and without
it, alternated, four rounds each, in two runs: router CPU a message at QoS 1 36.0 -> 26.2 and 28.2 -> 24.2 us
(msg/s 15,700 -> 18,000 and 18,800 -> 19,400), at QoS 0 15.5 -> 15.0 and 12.9 -> 11.5 us. A turn of fewer
messages, as under light load, never waits, so latency there is what it was (p50 at 7,000 msg/s, QoS 1: 0.33 ->
0.36 and 0.24 -> 0.29 ms; at 15,000 msg/s, QoS 0: 0.37 -> 0.41 and 0.36 -> 0.23 ms). Waiting after every turn
instead saved as much but added a quarter of a millisecond to every message."""


def subscriptions(config: Config) -> list[Subscription]:
    """The route filters to subscribe, once each, with the shared-subscription prefix if any. With MQTT 5,
    retain handling 1: retained device messages are not routed again on every reconnect."""
    prefix = f"$share/{config.router.share_group}/" if config.router.share_group else ""
    qos: dict[str, int] = {}
    for route in config.routes:
        qos[route.match.mqtt] = max(qos.get(route.match.mqtt, 0), route.qos)
    retain_handling = 1 if config.broker.protocol == "5" else 0
    return [Subscription(prefix + f, q, retain_handling=retain_handling) for f, q in qos.items()]


def settle_heap() -> None:
    """Put every object alive now out of the cyclic garbage collector's reach (``gc.freeze``), after a last full
    collection that includes what an earlier call put there (a reload's old router, say).

    A full collection walks every object the collector tracks, and no message moves meanwhile. With the
    modules, numpy and the config loaded, that took 9-30 ms; messages in flight when the younger collections
    run reach the oldest generation, so steady traffic brings full collections on again and again (at 20,000
    msg/s: three in 40 s, up to 12 ms each). With the start-up's objects frozen, the same run had this call's
    own (17 ms, before the first message) and ten more of 0.1 ms on average. What is made later is still
    collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _route_pools(config: Config) -> set[str]:
    """The pools some route uses: those /healthz needs a healthy worker in."""
    return {route.pool for route in config.routes}


class Service:
    """Runs a router until asked to stop."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, adapt: Callable[[Config], Config] | None = None) -> None:
        """``adapt`` is applied to the file's config, at start and on every reload (an instance's own names)."""
        self._adapt = adapt or (lambda loaded: loaded)
        config = self._adapt(config)
        self.config = config
        self.clock = clock
        self.counters = Counters()
        fleet = Fleet(config.heartbeat.timeout, config.heartbeat.expire, config.pools)
        self._rng = rng or random.Random()
        self.router: Router[Receipt] = Router(config, fleet, self._rng)
        self.transport = self._transport_for(config)
        self._bad_input = RateLimited(log)
        self._comings_and_goings = RateLimited(log)
        """A worker's departures and returns: one line each per worker every 10 s, however it flaps."""
        self._stopping = False
        self._next_tick = 0.0
        self._started = clock()
        self._next_stats = self._started + config.stats.interval
        self.inflight: InFlight[Receipt] = InFlight(config.router.max_inflight)
        self._written: list[Forward[Receipt]] = []
        """QoS 0 forwards written this turn: settled together at its end (``_settle_written``)."""
        self._metrics: MetricsServer | None = None
        self._reload_requested = False
        self._loading: Future[Config] | None = None
        """A reload's file, being read and checked on a thread of its own."""
        self._broker_max_packet_size: int | None = None
        self.reclaims = Reclaims(config.reclaim.after, config.reclaim.wait, own_client_ids(config.broker.client_id))
        self.routers = Routers(config.broker.client_id)
        self._next_router_beat = 0.0
        self._announced: frozenset[str] = frozenset()
        """The sessions the last heartbeat of this router said it was reclaiming."""

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        listen = self.config.metrics.listen
        if listen is not None:
            try:
                self._metrics = MetricsServer(listen, _route_pools(self.config))
            except OSError as error:
                log.error("metrics.listen %s:%d: %s", *listen, error)
                return 1
            log.info("serving /metrics and /healthz on http://%s:%d", *self._metrics.address)
        self._install_signals()
        self.transport.start()
        log.info("router started: %d routes, broker %s:%d", len(self.config.routes),
                 self.config.broker.host, self.config.broker.port)
        settle_heap()
        while not self._stopping:
            if self._turn() >= LINGER_FROM:
                time.sleep(LINGER)
        return self._shutdown()

    def _turn(self) -> int:
        """One pass of the loop; how many device messages it took in."""
        if self._reload_requested and self._loading is None:
            self._reload_requested = False
            self._read_for_reload()
        if self._loading is not None and self._loading.done():
            loading, self._loading = self._loading, None
            self._reload(loading)
        window, reclaiming, held = self.transport.publish_window, self.reclaims.unsettled, self.router.held
        # Past the byte budget of held messages, nothing more is taken in (the broker keeps it) until they leave.
        room = 0 if self.router.over_byte_budget() else self.inflight.room(window) - reclaiming
        publishing = self.inflight.unsettled - held  # held ones have nothing in flight
        reclaim_room = min(RECLAIM_WINDOW, window - publishing) - reclaiming
        taken = 0
        for event in self.transport.poll(max(0.0, self._next_tick - self.clock()), room, reclaim_room):
            match event:
                case DeviceMessages(generation, messages):
                    taken += len(messages)
                    for start in range(0, len(messages), FLUSH_EVERY):
                        self._take(messages[start:start + FLUSH_EVERY], generation)
                        self.transport.flush_publishing()  # a long read's first forwards need not wait for its last
                case OversizedMessage(generation, oversized):
                    self._take_too_large(oversized, generation)
                case Settled():
                    self._settle_all(event)
                case WorkerBeat(topic, payload):
                    self._heartbeat(topic, payload)
                case RouterHeartbeat(topic, payload):
                    self._router_heartbeat(topic, payload)
                case OversizedBeat(topic, size):
                    self.counters.bad_heartbeats += 1
                    self._bad_input.warning("heartbeat", self.clock(), "ignoring heartbeat on %s: %d bytes, far "
                                            "more than a heartbeat has", topic[:200], size)
                case PublishesDropped():
                    self._dropped(event)
                case PublishingConnected(max_packet_size):
                    self._publishing_connected(max_packet_size)
                case RoutingConnected():
                    self._routing_connected(event)
                case Reclaimed(reclaim_id, generation, messages):
                    self._reclaimed(reclaim_id, generation, messages)
                case ReclaimConnected(reclaim_id, generation, present):
                    self._reclaim_connected(reclaim_id, generation, present)
                case ReclaimLost(reclaim_id, taken_back):
                    self._reclaim_lost(reclaim_id, taken_back)
        now = self.clock()
        if self.router.balancer_failures:
            for route, error in self.router.balancer_failures:
                self._bad_input.error(f"update:{route}", now, "route %s: its balancer refused the pool's healthy "
                                      "workers; it keeps the ones it had", route, exc_info=error)
            self.router.balancer_failures.clear()
        if now >= self._next_tick:  # timeouts and hold deadlines, not once per read burst
            self._next_tick = now + TICK
            try:
                actions = self.router.tick(now)
            except Exception as error:  # noqa: BLE001 - logged; the next tick tries again, routing goes on
                self._bad_input.error("tick", now, "applying heartbeat timeouts failed", exc_info=error)
                actions = []
            self._execute(actions)
            self._reclaim_tick(now)
            self._report(now, announce=now >= self._next_stats)
        self._settle_written()  # before the flush: the acknowledgements this settles go with it
        self.transport.flush()
        return taken

    def stop(self) -> None:
        self._stopping = True

    def _shutdown(self) -> int:
        """Finish in-flight forwards, then disconnect; what was not taken stays at the broker."""
        log.info("stopping: waiting for %d forwards", self.transport.pending)
        self._report(self.clock(), announce=False)  # /healthz says so while they finish
        self._drain()
        self._report(self.clock(), announce=True)  # the final counts stay on the stats topic
        self._announce_router(up=False)  # unless it is back within reclaim.after, its session is reclaimed
        self.transport.close()
        if self._metrics is not None:
            self._metrics.close()
        log.info("stopped")
        return 0

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload_requested", True))
        signal.set_wakeup_fd(self.transport.wake_fd, warn_on_full_buffer=False)

    # -- reloading ------------------------------------------------------------------

    def _read_for_reload(self) -> None:
        """Read and check the config file again on a thread of its own: the routing loop goes on meanwhile.

        Read in the loop, a large file stopped all routing while PyYAML parsed it (a 5 MB file: 14-56 s).
        """
        path = self.config.source
        if path is None:
            log.warning("SIGHUP: the config did not come from a file; nothing to reload")
            return
        loading: Future[Config] = Future()

        def read() -> None:
            try:
                loading.set_result(self._adapt(config_module.load(path)))
            except BaseException as error:  # noqa: BLE001 - handed to the loop, which says it and goes on
                loading.set_exception(error)

        self._loading = loading
        threading.Thread(target=read, name="mqttlb-reload", daemon=True).start()

    def _reload(self, loading: Future[Config]) -> None:
        """Apply the file read again; a file with problems is refused and the old config kept.

        Routes, pools, algorithms and their options, dead letters, heartbeat timings and the router's
        limits change in place: the fleet is kept, held messages are routed again by the new routes,
        and nothing is dropped, duplicated or reconnected; new filters (a new share group's too) are
        subscribed and dropped ones unsubscribed on the live connection. A change to the broker section
        or the heartbeat topic needs new connections: the forwards in flight are finished first, as
        when stopping, and the broker sends again whatever was not acknowledged. The client id and the
        metrics address change only with a restart.
        """
        try:
            new = loading.result()
        except ConfigError as error:
            for problem in error.problems:
                log.error("reload refused, the running config stays: %s", problem)
            return
        except Exception as error:  # noqa: BLE001 - a reload that fails must not stop the router
            log.error("reload failed, the running config stays", exc_info=error)
            return
        if new.metrics.listen != self.config.metrics.listen:
            log.warning("reload: metrics.listen changes only when the router restarts")
        if new.broker.client_id != self.config.broker.client_id:  # who it is among routers, and its own sessions
            log.warning("reload: broker.client_id changes only when the router restarts; it stays %s",
                        self.config.broker.client_id)
            new = replace(new, broker=replace(new.broker, client_id=self.config.broker.client_id))
        if (new.broker, new.heartbeat.topic) != (self.config.broker, self.config.heartbeat.topic):
            self._reconnect(new)
        now = self.clock()
        self.router.fleet.reconfigure(new.heartbeat.timeout, new.heartbeat.expire, new.pools, now)
        held = self.router.take_held()
        self.router = Router(new, self.router.fleet, self._rng)
        self._publishing_connected(self._broker_max_packet_size)
        self.reclaims.configure(new.reclaim.after, new.reclaim.wait)
        for reclaim in self.reclaims.active():
            if new.reclaim.after is None and reclaim.started is None:  # never, now: it stays its owner's
                self.reclaims.drop(reclaim)
            else:
                self._await(reclaim)
        self.config = new
        self.transport.update_routes(subscriptions(new))
        self.transport.hold_at_most(new.dead_letter.max_payload)
        if self._metrics is not None:
            self._metrics.set_pools(_route_pools(new))
        for message in held:
            self._execute(self.router.route(message))
        log.info("reloaded %s: %d routes, %d messages held were routed again", new.source, len(new.routes), len(held))
        settle_heap()

    def _reconnect(self, new: Config) -> None:
        """New connections for new broker settings, once the forwards in flight are finished."""
        log.info("reload: the broker settings changed; finishing %d forwards, then reconnecting",
                 self.transport.pending)
        self._drain()
        self.transport.close()
        self.inflight.forgot(self.router.forget_held(lambda receipt: not receipt.source))  # the broker sends them again
        interrupted = [reclaim for reclaim in self.reclaims.active() if reclaim.started is not None]
        sources = {reclaim.id for reclaim in interrupted}
        self.router.forget_held(lambda receipt: receipt.source in sources)
        for reclaim in interrupted:  # their links went with the transport: they start again
            self.reclaims.interrupted(reclaim, self.clock())
        self.transport = self._transport_for(new)
        self.inflight.limit = new.router.max_inflight
        signal.set_wakeup_fd(self.transport.wake_fd, warn_on_full_buffer=False)
        self.transport.start()

    def _transport_for(self, config: Config) -> Transport[Publishable]:
        me = config.broker.client_id
        will = Will(config.router.heartbeat_of(me), RouterBeat(me, up=False, session=me).payload(), qos=1,
                    retain=True)
        return Transport(config.broker, heartbeat_filter=config.heartbeat.topic, routes=subscriptions(config),
                         max_inflight=config.router.max_inflight, routers_filter=config.router.heartbeat_topic,
                         will=will, max_payload=config.dead_letter.max_payload)

    def _drain(self) -> None:
        """Wait for the forwards in flight to be acknowledged, taking nothing new; at most SHUTDOWN_GRACE."""
        give_up = self.clock() + SHUTDOWN_GRACE
        while self.transport.pending and self.transport.connected and self.clock() < give_up:
            for event in self.transport.poll(0.05, room=0):
                if isinstance(event, Settled):
                    self._settle_all(event)

    # -- transport events ---------------------------------------------------------

    def _take(self, publishes: Sequence[Publish], generation: int) -> None:
        """Route device messages read together (the router picks for their keys together) and act on each."""
        if self._stopping:
            return  # not acknowledged: the broker keeps them for the next session
        now = self.clock()
        messages = [message_of((p.topic, p.payload, receipt_of((generation, p.packet_id, p.qos, p.properties, 0)), now,
                                len(p.properties))) for p in publishes]
        self.inflight.took(len(messages))
        for actions in self.router.route_each(messages):
            self._execute(actions)

    def _take_too_large(self, oversized: Oversized, generation: int) -> None:
        """A device message whose payload the router never held: its dead letter says so."""
        if self._stopping:
            return  # not acknowledged: the broker keeps it for the next session
        receipt = Receipt(generation, oversized.packet_id, oversized.qos, oversized.properties)
        message = Message(oversized.topic, b"", receipt, self.clock(), len(oversized.properties))
        self.inflight.took(1)
        self._execute(self.router.oversized(message, oversized.payload_size, oversized.size))

    def _heartbeat(self, topic: str, payload: bytes) -> None:
        now = self.clock()
        worker = self.config.heartbeat.worker_of(topic)
        try:
            actions = self.router.heartbeat(worker, payload, now)
        except FleetFull as error:  # counted by the fleet; logged by pool, however many ids there are
            self._bad_input.warning("full:" + error.pool, now, "ignoring heartbeat on %s: %s", topic[:200], error)
            return
        except BadHeartbeat as error:
            self.counters.bad_heartbeats += 1
            self._bad_input.warning("heartbeat", now, "ignoring heartbeat on %s: %s",  # one key: ids are many
                                    topic[:200], error)
            return
        except Exception as error:  # noqa: BLE001 - a retained heartbeat would crash every restart
            self.counters.bad_heartbeats += 1
            self._bad_input.error("heartbeat-internal", now, "taking in the heartbeat on %s failed; it is ignored",
                                  topic[:200], exc_info=error)
            return
        self._execute(actions)
        if self.reclaims.pending(Owner.WORKER, worker) and self.router.fleet.live(worker):
            self._came_back(worker)

    def _publishing_connected(self, max_packet_size: int | None) -> None:
        """The broker's Maximum Packet Size (MQTT 5 CONNACK) narrows ``broker.max_packet_size``; and the stats
        go out at once, so a router that keeps losing its connection still says why."""
        self._broker_max_packet_size = max_packet_size
        self._next_stats = self._next_tick = self.clock()
        sizes = [size for size in (max_packet_size, self.config.broker.max_packet_size) if size is not None]
        self.router.limits = replace(self.router.limits, max_packet_size=min(sizes) if sizes else None)

    def _dropped(self, event: PublishesDropped[Publishable]) -> None:
        """Publishes in flight when the broker dropped the publishing connection: each is made again, but
        the one the poison guard names, whose message is quarantined instead (``inflight``, rule 5)."""
        culprit = self.inflight.dropped([action.message.ref for action in event.tags], event.suspect)
        for action in event.tags:
            if culprit is None or action.message.ref != culprit:
                self._publish(action)
            elif isinstance(action, DeadLetter) and action.reason == Reason.POISON:
                self._lost(action, "kept dropping the connection for")  # nothing is sent a third time
            else:
                what = f"forward to {action.worker!r}" if isinstance(action, Forward) else \
                    f"dead letter ({action.reason})"
                log.error("the broker dropped the connection twice while the %s of a message on %s was in "
                          "flight: quarantined as a poison dead letter", what, action.message.topic[:200])
                self._publish(self.router.minimal_dead_letter(
                    action.message, Reason.POISON, f"the broker dropped the connection twice with the {what} "
                    f"in flight", action.route))

    def _routing_connected(self, event: RoutingConnected) -> None:
        if event.connected:
            self.inflight.connected(event.generation)
            self._announce_router()  # up: a will may have said down meanwhile
            return
        forgotten = self.router.forget_held(lambda receipt: receipt.qos > 0 and not receipt.source)  # delivered again
        self.inflight.forgot(forgotten)
        if forgotten:
            log.info("%d held messages left to the broker, which delivers them again", forgotten)

    # -- stats --------------------------------------------------------------------

    def stats(self, now: float) -> dict[str, object]:
        """The stats topic's figures as of ``now``."""
        moment = Moment(ts=time.time(), now=now, uptime=now - self._started, connected=self.transport.connected,
                        stopping=self._stopping, problem=self.transport.problem)
        inbound = Backlog(unacked=self.inflight.unsettled, held=self.router.held, peak=self.inflight.peak,
                          max_inflight=self.config.router.max_inflight)
        fleet = self.router.fleet
        census = fleet.census()
        workers = fleet.views(now) if self.config.metrics.lists_workers(census.size) else None
        return snapshot(router=self.config.broker.client_id, moment=moment, inbound=inbound,
                        counters=self.counters, pools=self.config.pools, census=census, workers=workers,
                        reconnects=self.transport.reconnects, awaiting_ack=self.transport.pending,
                        reclaim=self.reclaims.figures(now), routers=self.routers.views())

    def _report(self, now: float, *, announce: bool) -> None:
        """/healthz's pulse; a snapshot for the stats topic when ``announce``, and for a scrape that waits."""
        metrics = self._metrics
        if metrics is not None:
            metrics.beat(Pulse(self.transport.connected, self._stopping, self.router.fleet.staffed(),
                               self.transport.problem))
        if not announce and (metrics is None or not metrics.wanted):
            return
        figures = self.stats(now)
        if metrics is not None:
            metrics.publish(figures)
        if announce:
            self._next_stats = now + self.config.stats.interval
            self._announce("stats", self.config.stats.topic, orjson.dumps(figures), now)

    def _announce(self, what: str, topic: str, payload: bytes, now: float) -> None:
        """Publish retained (stats, this router's heartbeat) if the broker's limits let it through: one over
        them would cost the publishing connection, forwards in flight and all."""
        limits = self.router.limits
        if limits.size_problem(limits.packet_size(topic, len(payload), 0, 0, ())) is None:
            self.transport.announce(topic, payload)
        else:
            self._bad_input.warning(what + "-size", now, "%s not published: larger than the broker's maximum "
                                    "packet size (%s bytes)", what, limits.max_packet_size)

    # -- actions ------------------------------------------------------------------

    def _execute(self, actions: list[Action[Receipt]]) -> None:
        for action in actions:
            if isinstance(action, (Forward, DeadLetter)):
                self._publish(action)
            else:
                self._departed(action)

    def _departed(self, departure: Departure) -> None:
        how = "is down" if departure.health is Health.DOWN else \
            f"is silent (no heartbeat for {self.config.heartbeat.timeout:g}s)"
        now = self.clock()
        reclaim = self.reclaims.departed(Owner.WORKER, departure.worker, departure.session, now,
                                         pool=departure.pool, weight=departure.weight, holding=departure.holding,
                                         moved=departure.drained)
        said, key = self._comings_and_goings, f"{departure.pool}\0{departure.worker}\0departed"
        if reclaim is not None:
            self._await(reclaim)
            said.info(key, now, "worker %s of pool %s %s; nothing more is routed to it. Unless it comes back within "
                      "%gs, its session %s is reclaimed (it held about %d messages)%s", departure.worker,
                      departure.pool, how, self.reclaims.after, reclaim.session, departure.holding,
                      "; meanwhile its devices' new messages wait" if reclaim.waits else "")
            return
        if not departure.holding:
            said.info(key, now, "worker %s of pool %s %s; nothing more is routed to it", departure.worker,
                      departure.pool, how)
            return
        self.counters.stranded[(departure.pool, departure.worker)] += departure.holding
        said.warning(key + "\0stranded", now, "worker %s of pool %s %s; nothing more is routed to it. It held "
                     "about %d messages: they wait in its session at the broker and reach it when it comes back "
                     "as %s%s",
                     departure.worker, departure.pool, how, departure.holding, departure.worker,
                     "" if departure.session else " (its heartbeats name no session the router could reclaim)")

    # -- reclaims -------------------------------------------------------------------

    def _await(self, reclaim: Reclaim) -> None:
        if reclaim.kind is Owner.WORKER and reclaim.waits and reclaim.pool is not None:
            self.router.await_departed(reclaim.pool, reclaim.owner, reclaim.weight)

    def _came_back(self, worker: str) -> None:
        reclaim = self.reclaims.came_back(Owner.WORKER, worker)
        self._execute(self.router.release_departed(worker))
        if reclaim is not None:
            self._comings_and_goings.info(f"{worker}\0back", self.clock(), "worker %s is back, and its session its "
                                          "own (%d messages of it were reclaimed)", worker, reclaim.settled)

    def _reclaim_tick(self, now: float) -> None:
        """Start the reclaims that are due, end the ones that are done, let waiting devices go on."""
        self._start_reclaims(now)
        for end in self.reclaims.elsewhere(now, self.routers):
            log.info("%s %s's session %s was reclaimed by router %s", end.reclaim.kind, end.reclaim.owner,
                     end.reclaim.session, end.reclaim.by)
            self._execute(self.router.release_departed(end.reclaim.owner))
        for end in self.reclaims.finished(now):
            self._end_reclaim(end, now)
        for reclaim in self.reclaims.waited_out(now):
            log.warning("worker %s's devices waited %gs for its session to be reclaimed: their new messages flow "
                        "now, maybe ahead of older ones still in the session", reclaim.owner, self.reclaims.wait)
            self._execute(self.router.release_departed(reclaim.owner))
        if now >= self._next_router_beat or self.reclaims.sessions() != self._announced:
            self._announce_router()

    def _start_reclaims(self, now: float) -> None:
        limit = self.config.router.held_limit
        if self.router.waiting > limit:  # they fill the window: the reclaims they wait for cannot wait any longer
            for reclaim in self.reclaims.hurry(now):
                log.warning("%d messages wait for departed workers' sessions to be reclaimed (more than "
                            "router.max_held, %d): reclaiming worker %s's session now, before reclaim.after",
                            self.router.waiting, limit, reclaim.owner)
        for reclaim in self.reclaims.due(now, self.routers):
            user = self.router.fleet.using(reclaim.session) or self.routers.using(reclaim.session)
            if user is not None:  # a heartbeat may name any client id: never take a live one's session
                log.error("%s %s's heartbeats named session %s, which %s (live) uses: it is not reclaimed",
                          reclaim.kind, reclaim.owner, reclaim.session, user)
                self.reclaims.drop(reclaim)
                self._execute(self.router.release_departed(reclaim.owner))
                continue
            log.info("reclaiming %s %s's session %s", reclaim.kind, reclaim.owner, reclaim.session)
            routes = [s.filter for s in subscriptions(self.config)] if reclaim.kind is Owner.ROUTER else None
            self.transport.reclaim(reclaim.id, reclaim.session, unsubscribe=routes)

    def _end_reclaim(self, end: Ended, now: float) -> None:
        reclaim = end.reclaim
        self.transport.end_reclaim(reclaim.id, end_session=end.how == "reclaimed")
        self._execute(self.router.release_departed(reclaim.owner))
        took = now - (reclaim.started or now)
        if end.how == "reclaimed":
            log.info("reclaimed %d messages from %s %s's session %s in %.1fs; the session is ended",
                     reclaim.settled, reclaim.kind, reclaim.owner, reclaim.session, took)
            if reclaim.kind is Owner.ROUTER:  # its retained "down" would have the next router reclaim it again
                self.transport.announce(self.config.router.heartbeat_of(reclaim.owner), b"")
                self.routers.forget(reclaim.owner)
            return
        log.error("could not take over %s %s's session %s within %.0fs; what it holds stays there", reclaim.kind,
                  reclaim.owner, reclaim.session, took)
        if reclaim.pool is not None:
            self.counters.stranded[(reclaim.pool, reclaim.owner)] += reclaim.holding

    def _announce_router(self, up: bool = True) -> None:
        """This router's heartbeat: up (or down, when it stops), its session, what it is reclaiming."""
        me = self.config.broker.client_id
        self._announced = self.reclaims.sessions() if up else frozenset()
        self._next_router_beat = self.clock() + ROUTER_BEAT
        beat = RouterBeat(me, up, me, self._announced)
        self._announce("router heartbeat", self.config.router.heartbeat_of(me), beat.payload(time.time()),
                       self.clock())

    def _router_heartbeat(self, topic: str, payload: bytes) -> None:
        try:
            self._take_router_heartbeat(topic, payload)
        except Exception as error:  # noqa: BLE001 - a retained heartbeat would crash every restart
            self.counters.bad_heartbeats += 1
            self._bad_input.error("router-heartbeat-internal", self.clock(), "taking in the router heartbeat on %s "
                                  "failed; it is ignored", topic[:200], exc_info=error)

    def _take_router_heartbeat(self, topic: str, payload: bytes) -> None:
        now = self.clock()
        router = self.config.router.router_of(topic)
        if not payload:  # cleared: its session was reclaimed, or the router is gone for good
            self.routers.forget(router)
            return
        try:
            beat = RouterBeat.parse(router, payload)
            departed = self.routers.apply(beat, now)
        except BadHeartbeat as error:
            self.counters.bad_heartbeats += 1
            self._bad_input.warning("router-heartbeat", now, "ignoring router heartbeat on %s: %s",
                                    topic[:200], error)
            return
        if beat.up and self.reclaims.pending(Owner.ROUTER, router):
            reclaim = self.reclaims.came_back(Owner.ROUTER, router)
            log.info("router %s is back, and its session its own (%d messages of it were reclaimed)", router,
                     reclaim.settled if reclaim is not None else 0)
        if departed is not None:
            reclaim = self.reclaims.departed(Owner.ROUTER, router, departed.session, now)
            if reclaim is not None:
                log.info("router %s is down; unless it comes back within %gs, its session %s is reclaimed", router,
                         self.reclaims.after, reclaim.session)

    def _reclaim_connected(self, reclaim_id: int, generation: int, present: bool) -> None:
        reclaim = self.reclaims.get(reclaim_id)
        if reclaim is None:
            return
        self.reclaims.connected(reclaim_id, generation, self.clock())
        log.info("took over %s %s's session %s (%s)", reclaim.kind, reclaim.owner, reclaim.session,
                 "it was there" if present else "the broker had none: nothing to reclaim")

    def _reclaimed(self, reclaim_id: int, generation: int, messages: list[Publish | Oversized]) -> None:
        """Messages from a departed owner's session: routed again as if they had just arrived."""
        reclaim = self.reclaims.get(reclaim_id)
        if reclaim is None or generation != reclaim.generation:
            return  # not acknowledged: they stay in the session
        inboxes = [inbox_filter(route.forward, reclaim.owner) for route in self.config.routes] \
            if reclaim.kind is Owner.WORKER else []
        for publish in messages:
            now = self.clock()
            self.reclaims.took(reclaim_id, now)
            topic, properties = publish.topic, publish.properties
            if reclaim.kind is Owner.WORKER:  # a forward: back to the device's own topic and properties
                topic, properties = self._unwrap(publish, inboxes)
            receipt = Receipt(generation, publish.packet_id, publish.qos, properties, reclaim_id)
            if isinstance(publish, Oversized):
                self._execute(self.router.oversized(Message(topic, b"", receipt, now, len(properties)),
                                                    publish.payload_size, publish.size))
                continue
            self._execute(self.router.route(Message(topic, publish.payload, receipt, now, len(properties)),
                                            reclaimed=True))

    def _unwrap(self, forward: Publish | Oversized, inboxes: list[str]) -> tuple[str, bytes]:
        """The device's topic and MQTT 5 properties, from a forward the router made."""
        try:
            ours = dict(user_properties(forward.properties)) if forward.properties else {}
            properties = without_user_properties(forward.properties, "mqttlb-")
        except ProtocolError:
            ours, properties = {}, b""
        return ours.get("mqttlb-topic") or original_topic(forward.topic, inboxes), properties

    def _reclaim_lost(self, reclaim_id: int, taken_back: bool) -> None:
        now = self.clock()
        reclaim = self.reclaims.get(reclaim_id)
        if reclaim is None:
            return
        unsettled = reclaim.unsettled
        self.router.forget_held(lambda receipt: receipt.source == reclaim_id)
        ended = self.reclaims.lost(reclaim_id, taken_back, now)
        if ended is None:
            log.warning("the connection to %s %s's session %s went while it was being reclaimed (its owner took "
                        "it back, or the connection broke) after %d messages; %d taken and not settled go back to "
                        "the session. Trying again in %gs unless the owner is heard from", reclaim.kind,
                        reclaim.owner, reclaim.session, reclaim.settled, unsettled, self.reclaims.after)
            return
        self._execute(self.router.release_departed(reclaim.owner))
        log.info("%s %s took its session back while it was being reclaimed (%d reclaimed; %d it gets again, "
                 "already routed: duplicates)", reclaim.kind, reclaim.owner, reclaim.settled, unsettled)

    def _publish(self, action: Publishable) -> None:
        """Publish what the router decided for a message; settled at the end of the turn (a QoS 0 forward, once
        written: the route asked for no more) or when the broker answers."""
        message = action.message
        if isinstance(action, Forward):
            properties = self.transport.properties(message.ref.properties, action.user_properties)
            outcome = self.transport.publish(action.topic, message.payload, action.qos, properties, action)
            if outcome is ACKED:
                self._written.append(action)
                return
        else:
            self._log_dead_letter(action)
            inbound = message.ref.properties if action.keep_properties else b""
            properties = self.transport.properties(inbound, action.user_properties)
            payload = message.payload if action.keep_payload else b""
            outcome = self.transport.publish(action.topic, payload, 1, properties, action)
        if outcome is not None:
            self._settled(action, outcome)

    def _log_dead_letter(self, action: DeadLetter[Receipt]) -> None:
        route = action.route or "none"
        if action.error is not None:
            self._bad_input.error(f"internal:{route}", self.clock(), "routing a message on %s failed; it goes to "
                                  "the dead letters: %s", action.message.topic[:200], action.detail,
                                  exc_info=action.error)
        else:
            self._bad_input.warning(f"dead:{route}:{action.reason}", self.clock(),
                                    "dead letter (%s) on route %s: %s", action.reason, route, action.detail)

    def _settle_all(self, event: Settled[Publishable]) -> None:
        forwards = []
        for action in event.acked:
            if isinstance(action, Forward):
                forwards.append(action)
            else:
                self._settled(action, ACKED)
        self._forwarded(forwards)
        for action, reason in event.refused:
            if reason == NO_MATCHING_SUBSCRIBERS and not isinstance(action, Forward):
                self._settled(action, ACKED)  # a dead letter no one listens for is published all the same
            else:
                self._settled(action, REFUSED, reason)
        for action in event.too_large:
            self._settled(action, TOO_LARGE)

    def _settle_written(self) -> None:
        """Settle the QoS 0 forwards written this turn."""
        if self._written:
            written, self._written = self._written, []
            self._forwarded(written)

    def _forwarded(self, forwards: list[Forward[Receipt]]) -> None:
        """The broker has these forwards (acknowledged, or a QoS 0 one written): counted by worker and timed with
        one clock reading, and their messages settled, in order. Together: tens of thousands a second."""
        now = self.clock()
        counters = self.counters
        counters.forwarded.update([(forward.route, forward.worker) for forward in forwards])
        arrivals = Counter([forward.message.arrived for forward in forwards])  # a read's messages share theirs
        for arrived, count in arrivals.items():
            counters.forward_seconds.observe(now - arrived, count)
        receipts = []
        for forward in forwards:
            receipt = forward.message.ref
            if receipt.source:
                self._settle(receipt)
            else:
                receipts.append(receipt)
        if receipts:
            self.transport.ack(self.inflight.settle_all(receipts))

    def _settled(self, action: Publishable, outcome: Outcome, reason: int = 0) -> None:
        """The broker refused the publish made for ``action``'s message (``reason``, its reason code), or
        acknowledged a dead letter, or a QoS 0 forward was made without a connection, or the publish is over the
        broker's Maximum Packet Size (which the broker may have lowered since the router made it): what became
        of the message is settled, or it becomes a dead letter, a smaller one if it was one."""
        if isinstance(action, Forward):
            if outcome is REFUSED:
                self.counters.refused += 1
                why = coded(reason)
                if reason == NO_MATCHING_SUBSCRIBERS:  # taken, and thrown away: the worker is not listening
                    why += f"; nothing subscribes to the inbox of {action.worker!r}, which still sends heartbeats"
                self._publish(self.router.refused(action, why))
                return
            if outcome is TOO_LARGE:
                self._publish(self.router.too_large(action))
                return
            # LOST: a QoS 0 forward made without a connection; the route asked for no more
        elif outcome is ACKED:
            self.counters.dead_letters[(action.route or "none", action.reason)] += 1
        elif outcome is TOO_LARGE and action.keep_properties:  # not yet as small as a dead letter can be
            self._publish(self.router.minimal_dead_letter(action.message, action.reason, action.detail,
                                                          action.route, action.error))
            return
        else:
            self._lost(action, "refused" if outcome is REFUSED else "has too small a maximum packet size for")
            return
        self._settle(action.message.ref)

    def _lost(self, action: DeadLetter[Receipt], how: str) -> None:
        self.counters.dropped += 1
        self._bad_input.error("lost:" + how, self.clock(), "the broker %s the dead letter for %s; the message is "
                              "lost", how, action.message.topic[:200])
        self._settle(action.message.ref)

    def _settle(self, receipt: Receipt) -> None:
        """What became of the message is settled: acknowledge it, on the connection it came on."""
        if receipt.source:
            if self.reclaims.settle(receipt.source, receipt.generation) and receipt.qos:
                self.transport.ack([receipt.packet_id], receipt.source)
            return
        if self.inflight.settle(receipt.generation, receipt.qos):
            self.transport.ack([receipt.packet_id])
