"""The configuration file: YAML in, frozen dataclasses out, checked once.

Every other module reads typed, immutable settings with each default already
filled in; none of them looks at raw YAML or wonders whether a value was
checked. An invalid file is refused before anything connects, with one line
per problem naming its place (``routes[1].algorithm: ...``) and every problem
at once, so an operator fixes the file in one pass. Problems in the data are
collected, never raised as they are met: a list where a mapping belongs is a
line in the report, not a traceback.

The file must not make the router feed itself: a route whose filter could
match the router's own forwards, dead letters, stats or the workers'
heartbeats is refused (see ``_loop_problems``).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import reprlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from ..errors import ConfigError
from . import balancers
from .keys import KeySpec
from .topics import TopicFilter, TopicTemplate, filters_overlap, id_in, key_problem, topic_problem, with_id

T = TypeVar("T")

FORWARD_PLACEHOLDERS = frozenset({"worker", "topic", "route", "pool", "key"})
DEAD_LETTER_PLACEHOLDERS = frozenset({"reason", "topic", "route"})
DEFAULT_FORWARD = TopicTemplate.parse("mqttlb/workers/{worker}/in/{topic}", FORWARD_PLACEHOLDERS)
DEFAULT_DEAD_LETTER = TopicTemplate.parse("mqttlb/deadletter/{reason}/{topic}", DEAD_LETTER_PLACEHOLDERS)
DEFAULT_POOL = "default"
MAX_PACKET_BYTES = 268_435_455  # the largest MQTT packet
MIN_PACKET_BYTES = 1024  # a smaller broker.max_packet_size would leave no room for a dead letter
MAX_SESSION_EXPIRY = 4_294_967_295.0  # MQTT 5: a four-byte count of seconds
TLS_PORT = 8883
DEFAULT_MAX_WORKERS = 10_000
"""Workers a pool keeps by default; also the budget shared by every pool the config does not name."""
MAX_MAX_WORKERS = 1_000_000
PER_WORKER_AUTO = 1000
"""With ``metrics.per_worker: auto``, workers are listed one by one while the fleet is smaller than this."""


# -- the settings -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS to the broker. Paths are absolute; None means the system CA store, no client certificate."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "mqttlb-router"
    """Stable: it names the router's persistent session."""
    protocol: str = "5"
    """``"5"`` or ``"3.1.1"``."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None
    keepalive: int = 30
    session_expiry: float = 3600.0
    max_packet_size: int | None = None
    """The broker's Maximum Packet Size, for brokers that do not say it (MQTT 3.1.1); the smaller of this
    and what an MQTT 5 broker says applies. Forwards and dead letters over it are dead-lettered."""


@dataclass(frozen=True, slots=True)
class RouterSettings:
    share_group: str | None = None
    """Subscribe with ``$share/<group>/<filter>`` so several routers split the load."""
    max_inflight: int = 1000
    """The most inbound messages the router holds unacknowledged (its MQTT 5 Receive Maximum)."""
    max_held: int | None = None
    """The most of those that may wait for a worker while another pool has one; None: half of max_inflight."""
    max_held_bytes: int = 64 * 2**20
    """The most payload bytes those waiting may take: past it the oldest is dead-lettered early while another pool
    has a worker, and otherwise the router takes nothing more in until they leave (the broker keeps the rest)."""
    heartbeat_topic: str = "mqttlb/routers/+/heartbeat"
    """Where routers announce themselves (retained, will = down), so a live one can reclaim a dead one's session;
    the ``+`` is the router's client id."""

    def router_of(self, topic: str) -> str:
        """The router id in ``topic``, a topic ``heartbeat_topic`` matches."""
        return id_in(self.heartbeat_topic, topic)

    def heartbeat_of(self, router: str) -> str:
        """The heartbeat topic of ``router``."""
        return with_id(self.heartbeat_topic, router)

    @property
    def held_limit(self) -> int:
        return self.max_held if self.max_held is not None else max(1, self.max_inflight // 2)


@dataclass(frozen=True, slots=True)
class HeartbeatSettings:
    topic: str = "mqttlb/workers/+/heartbeat"
    """An MQTT filter with exactly one ``+`` level, the worker id, and no ``#``."""
    timeout: float = 6.0
    expire: float = 300.0

    def worker_of(self, topic: str) -> str:
        """The worker id in ``topic``, a topic this filter matches: the one place a heartbeat topic is read."""
        return id_in(self.topic, topic)


@dataclass(frozen=True, slots=True)
class ReclaimSettings:
    after: float | None = 10.0
    """Seconds a departed worker (or router) has to come back before the router takes over its broker session
    and routes what is queued there again; 0: at once; None: never (what is queued waits for its owner)."""
    wait: float = 30.0
    """The most a departed worker's devices' new messages wait for what it left to be reclaimed first, so that
    each device's messages keep their order; 0: they never wait."""


@dataclass(frozen=True, slots=True)
class WorkerOverride:
    """A static weight for one worker, taking the place of the one its heartbeat reports."""

    weight: float


def _no_workers() -> Mapping[str, WorkerOverride]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PoolSettings:
    name: str
    workers: Mapping[str, WorkerOverride] = field(default_factory=_no_workers)
    slow_start: float = 0.0
    """Seconds over which a new or returning worker's weight ramps from 10% to 100%; 0 is off."""
    allow: tuple[str, ...] = ()
    """Patterns (``*``, ``?``, ``[...]``) of the worker ids the pool accepts; empty: any."""
    max_workers: int = DEFAULT_MAX_WORKERS
    """The most workers the pool keeps (any state, until they expire); heartbeats of new ids beyond are refused."""


@dataclass(frozen=True, slots=True)
class RouteSettings:
    name: str
    match: TopicFilter
    key: KeySpec | None
    algorithm: str
    pool: str = DEFAULT_POOL
    forward: TopicTemplate = DEFAULT_FORWARD
    qos: int = 1


@dataclass(frozen=True, slots=True)
class DeadLetterSettings:
    topic: TopicTemplate = DEFAULT_DEAD_LETTER
    hold: float = 10.0
    """Seconds a message waits, unacknowledged, for a healthy worker before it is dead-lettered."""
    max_payload: int = 262_144


@dataclass(frozen=True, slots=True)
class StatsSettings:
    topic: str = "mqttlb/stats"
    interval: float = 5.0


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: tuple[str, int] | None = ("127.0.0.1", 9108)
    """Host and port of the HTTP endpoint; None turns it off; port 0 takes any free port."""
    per_worker: bool | None = None
    """List every worker in the stats and /metrics; None (``auto``): while the fleet is under PER_WORKER_AUTO."""

    def lists_workers(self, fleet_size: int) -> bool:
        return fleet_size < PER_WORKER_AUTO if self.per_worker is None else self.per_worker


@dataclass(frozen=True, slots=True)
class Config:
    broker: BrokerSettings
    router: RouterSettings
    heartbeat: HeartbeatSettings
    reclaim: ReclaimSettings
    pools: Mapping[str, PoolSettings]
    """Always holds ``default`` and every pool a route names."""
    routes: tuple[RouteSettings, ...]
    """In file order: the first that matches a topic takes it."""
    balancers: Mapping[str, Mapping[str, object]]
    """Options per algorithm, for ``balancers.create(name, **options)``."""
    dead_letter: DeadLetterSettings
    stats: StatsSettings
    metrics: MetricsSettings
    source: str | None = None
    """The file it was loaded from."""


# -- loading ------------------------------------------------------------------


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the file at ``path`` (TOML when it ends in ``.toml``, else YAML: one schema); raises
    ConfigError listing every problem."""
    try:
        text = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror or error}"]) from None
    if Path(path).suffix.lower() == ".toml":
        try:
            data: object = tomllib.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError([f"{path}: TOML syntax error: {error}"]) from None
    else:
        try:
            data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
        except yaml.YAMLError as error:
            raise ConfigError([_yaml_problem(str(path), error)]) from None
    config = parse(data, base_dir=Path(path).absolute().parent, environ=os.environ if environ is None else environ)
    return replace(config, source=str(path))


_YAML_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it: four times as quick as the pure-Python one."""


def _yaml_problem(path: str, error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{path}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {error.problem}"
    return f"{path}: YAML error: {' '.join(str(error).split())}"


def parse(data: object, *, base_dir: Path, environ: Mapping[str, str]) -> Config:
    """Check ``data``, as ``yaml.safe_load`` gives it; raises ConfigError listing every problem.

    Relative paths are taken from ``base_dir``; ``password_env`` is looked up in ``environ``.
    """
    if data is None:  # an empty file
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"config: must be a mapping of sections with at least routes, got {_shown(data)}"])
    problems: list[str] = []
    top = _Section(data, "", _SECTIONS, problems)
    broker = _broker(top.section("broker", _BROKER_FIELDS), base_dir, environ)
    router = _router(top.section("router", ("share_group", "max_inflight", "max_held", "max_held_bytes",
                                            "heartbeat_topic")))
    heartbeat = _heartbeat(top.section("heartbeat", ("topic", "timeout", "expire")))
    reclaim = ReclaimSettings(**top.section("reclaim", ("after", "wait")).read(
        after=_optional(parse_duration), wait=parse_duration))
    pools = _pools(top.raw("pools"), problems)
    routes = _routes(top.raw("routes"), problems)
    options = _balancer_options(top.raw("balancers"), problems)
    dead_letter = DeadLetterSettings(**top.section("dead_letter", ("topic", "hold", "max_payload")).read(
        topic=_template(DEAD_LETTER_PLACEHOLDERS, "reason"), hold=parse_duration, max_payload=_payload_size))
    stats = StatsSettings(**top.section("stats", ("topic", "interval")).read(
        topic=_topic_name, interval=_positive_duration))
    metrics = MetricsSettings(**top.section("metrics", ("listen", "per_worker")).read(
        listen=_optional(_listen), per_worker=_per_worker))
    _check_route_level(dead_letter.topic, "dead_letter.topic", [route for _, route in routes], problems)
    problems.extend(_loop_problems(routes, dead_letter, stats, heartbeat, router))
    if problems:
        raise ConfigError(problems)
    for _, route in routes:
        pools.setdefault(route.pool, PoolSettings(route.pool))
    return Config(broker=broker, router=router, heartbeat=heartbeat, reclaim=reclaim,
                  pools=MappingProxyType(pools),
                  routes=tuple(route for _, route in routes), balancers=options, dead_letter=dead_letter,
                  stats=stats, metrics=metrics)


_SECTIONS = ("broker", "router", "heartbeat", "reclaim", "pools", "routes", "balancers", "dead_letter", "stats",
             "metrics")
_BROKER_FIELDS = ("host", "port", "client_id", "protocol", "username", "password", "password_file",
                  "password_env", "tls", "keepalive", "session_expiry", "max_packet_size")
_PASSWORD_FIELDS = ("password", "password_file", "password_env")
_ROUTE_FIELDS = ("name", "match", "key", "algorithm", "pool", "forward", "qos")


class _Section:
    """One YAML mapping being read field by field; each problem is noted with its place."""

    def __init__(self, data: object, where: str, fields: tuple[str, ...], problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        self.data: dict[Any, object] = {}
        if isinstance(data, dict):
            self.data = data
            for name in data:
                if name not in fields:
                    self.problem(name, f"unknown field; expected one of {', '.join(sorted(fields))}")
        elif data is not None:  # an empty section ("broker:" and nothing under it) means the defaults
            problems.append(f"{where}: must be a mapping, got {_shown(data)}")

    def path(self, name: object) -> str:
        return f"{self.where}.{_plain(name)}" if self.where else _plain(name)

    def problem(self, name: object, message: str) -> None:
        self.problems.append(f"{self.path(name)}: {message}")

    def raw(self, name: str) -> object:
        return self.data.get(name)

    def section(self, name: str, fields: tuple[str, ...]) -> _Section:
        return _Section(self.data.get(name), self.path(name), fields, self.problems)

    def get(self, name: str, convert: Callable[[object], T], default: T) -> T:
        """Field ``name`` converted, or ``default`` when it is absent or has a problem."""
        if name not in self.data:
            return default
        try:
            return convert(self.data[name])
        except ValueError as error:
            self.problem(name, str(error))
            return default

    def read(self, **converters: Callable[[object], object]) -> dict[str, Any]:
        """The fields present and usable, converted; the dataclass supplies the defaults of the rest."""
        missing = object()
        values = {name: self.get(name, convert, missing) for name, convert in converters.items()}
        return {name: value for name, value in values.items() if value is not missing}


# -- sections -----------------------------------------------------------------


def _broker(section: _Section, base_dir: Path, environ: Mapping[str, str]) -> BrokerSettings:
    tls = None
    if section.raw("tls") is not None:
        tls_section = section.section("tls", ("ca_certs", "certfile", "keyfile"))
        tls = _tls(tls_section, _optional(_file_in(base_dir)))
    values = section.read(host=_text, port=_port, client_id=_client_id, protocol=_protocol,
                          username=_optional(_text), keepalive=_keepalive, session_expiry=_session_expiry,
                          max_packet_size=_optional(_packet_size))
    if tls is not None and "port" not in section.data:
        values["port"] = TLS_PORT
    password = _password(section, base_dir, environ)
    if password is not None and values.get("username") is None:
        section.problem("password", "needs broker.username as well")
    return BrokerSettings(**values, password=password, tls=tls)


def _tls(section: _Section, path: Callable[[object], str | None]) -> TlsSettings:
    tls = TlsSettings(**section.read(ca_certs=path, certfile=path, keyfile=path))
    if section.raw("keyfile") is not None and section.raw("certfile") is None:
        section.problem("keyfile", "needs certfile, the client certificate it belongs to")
    return tls


def _password(section: _Section, base_dir: Path, environ: Mapping[str, str]) -> str | None:
    """The password from whichever one of password, password_file and password_env is given."""
    given = [name for name in _PASSWORD_FIELDS if section.raw(name) is not None]
    if len(given) > 1:
        section.problem(given[1], f"give only one of {', '.join(given)}")
        return None
    if given == ["password_file"]:
        return section.get("password_file", lambda value: _read_secret(_file_in(base_dir)(value)), None)
    if given == ["password_env"]:
        return section.get("password_env", lambda value: _from_environ(_text(value), environ), None)
    return section.get("password", _optional(_secret), None)


def _read_secret(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as error:
        raise ValueError(f"cannot read {_plain(path)}: {error.strerror or error}") from None
    except UnicodeError:
        raise ValueError(f"cannot read {_plain(path)}: not UTF-8 text") from None


def _from_environ(name: str, environ: Mapping[str, str]) -> str:
    value = environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {_plain(name)} is not set")
    return value


def _router(section: _Section) -> RouterSettings:
    router = RouterSettings(**section.read(share_group=_optional(_level), max_inflight=_receive_maximum,
                                           max_held=_optional(_message_count), max_held_bytes=_held_bytes,
                                           heartbeat_topic=_heartbeat_filter))
    if router.max_held is not None and router.max_held > router.max_inflight:
        section.problem("max_held", f"must be at most router.max_inflight ({router.max_inflight}), "
                                    f"got {router.max_held}")
    return router


def _heartbeat(section: _Section) -> HeartbeatSettings:
    heartbeat = HeartbeatSettings(**section.read(topic=_heartbeat_filter, timeout=_heartbeat_timeout,
                                                 expire=_positive_duration))
    if heartbeat.expire < heartbeat.timeout:
        section.problem("expire", f"must be at least heartbeat.timeout ({heartbeat.timeout:g}s), "
                                  f"got {heartbeat.expire:g}s")
    return heartbeat


def _pools(data: object, problems: list[str]) -> dict[str, PoolSettings]:
    """The pools the file lists, after ``default``."""
    pools = {DEFAULT_POOL: PoolSettings(DEFAULT_POOL)}
    for name, settings in _named(data, "pools", "pool", problems, _level_problem):
        section = _Section(settings, f"pools.{name}", ("workers", "slow_start", "allow", "max_workers"),
                           problems)
        overrides = _named(section.raw("workers"), section.path("workers"), "worker", problems, _level_problem)
        workers = {worker: _worker(_Section(override, f"{section.path('workers')}.{worker}", ("weight",), problems))
                   for worker, override in overrides}
        pools[name] = PoolSettings(name, MappingProxyType(workers),
                                   **section.read(slow_start=parse_duration, allow=_patterns,
                                                 max_workers=_max_workers))
    return pools


def _patterns(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"must be a worker id pattern or a list of them, such as [\"w*\", \"gpu-?\"], "
                         f"got {_shown(value)}")
    return tuple(str(item) for item in items)


def _worker(section: _Section) -> WorkerOverride:
    if "weight" not in section.data:
        section.problem("weight", "required: a number > 0")
    return WorkerOverride(section.get("weight", _weight, 1.0))


def _routes(data: object, problems: list[str]) -> list[tuple[int, RouteSettings]]:
    """The usable routes, each with its index in the file."""
    if not isinstance(data, list) or not data:
        got = "" if data is None else f", got {_shown(data)}"
        problems.append(f"routes: required: a non-empty list of routes{got}")
        return []
    routes: list[tuple[int, RouteSettings]] = []
    first: dict[str, int] = {}
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            problems.append(f"routes[{index}]: must be a mapping with at least match, got {_shown(item)}")
            continue
        route = _route(_Section(item, f"routes[{index}]", _ROUTE_FIELDS, problems))
        if route is None:
            continue
        if route.name in first:
            problems.append(f"routes[{index}].name: {route.name!r} is already the name of routes[{first[route.name]}]")
        first.setdefault(route.name, index)
        routes.append((index, route))
    return routes


def _route(section: _Section) -> RouteSettings | None:
    """The route, or None when it has no usable match filter (its other problems are noted all the same)."""
    if "match" not in section.data:
        section.problem("match", "required: the MQTT filter the route takes, e.g. devices/{device}/telemetry")
    match = section.get("match", _match, None)
    has_key = section.raw("key") is not None
    algorithm = section.get("algorithm", _algorithm, "consistent_hash" if has_key else "round_robin")
    if not has_key and _needs_key(algorithm):
        section.problem("algorithm", f"{algorithm} needs a key: add key: <a capture of match> or "
                                     "payload.<path>, or choose another algorithm")
    values = section.read(name=_text, pool=_level, qos=_qos)
    if match is None:
        return None  # key and forward depend on its captures
    values.update(section.read(key=_optional(_key(match.names)), forward=_forward(match.names, has_key)))
    values.setdefault("name", match.template)
    values.setdefault("key", None)
    route = RouteSettings(match=match, algorithm=algorithm, **values)
    _check_route_level(route.forward, section.path("forward"), [route], section.problems)
    return route


def _needs_key(algorithm: str) -> bool:
    try:
        return balancers.needs_key(algorithm)
    except ValueError:  # an unknown algorithm, a problem already noted
        return False


def _check_route_level(template: TopicTemplate, where: str, routes: list[RouteSettings],
                       problems: list[str]) -> None:
    """{route} in a topic needs route names that fit one topic level."""
    if "route" not in template.placeholders:
        return
    for route in routes:
        if _level_problem(route.name) is not None:
            problems.append(f"{where}: {{route}} needs route names that fit one topic level; "
                            f"give the route matching {route.match.template!r} a name")
            return


def _balancer_options(data: object, problems: list[str]) -> Mapping[str, Mapping[str, object]]:
    """Options per algorithm, each set tried once by creating a balancer with it."""
    options: dict[str, Mapping[str, object]] = {}
    for name, given in _named(data, "balancers", "algorithm", problems, lambda name: None):
        where = f"balancers.{name}"
        if given is None:
            given = {}
        if not isinstance(given, dict) or not all(isinstance(option, str) for option in given):
            problems.append(f"{where}: must be a mapping of option names to values, got {_shown(given)}")
            continue
        clash = sorted({"name", "rng"}.intersection(given))  # create()'s own parameters
        try:
            if clash:
                raise balancers.BadOption(f"unknown option {clash[0]!r}")
            balancers.create(name, **given)
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        options[name] = MappingProxyType(dict(given))
    return MappingProxyType(options)


def _named(data: object, where: str, what: str, problems: list[str],
           check: Callable[[str], str | None]) -> list[tuple[str, object]]:
    """The entries of a mapping from names to settings whose names pass ``check``."""
    if data is None:
        return []
    if not isinstance(data, dict):
        problems.append(f"{where}: must be a mapping of {what} names to settings, got {_shown(data)}")
        return []
    entries: list[tuple[str, object]] = []
    for name, value in data.items():
        problem = check(name) if isinstance(name, str) else f"must be a string, got {_shown(name)}"
        if problem is None:
            entries.append((name, value))
        else:
            problems.append(f"{where}.{_plain(name)}: the {what} name {problem}")
    return entries


def _loop_problems(routes: list[tuple[int, RouteSettings]], dead_letter: DeadLetterSettings,
                   stats: StatsSettings, heartbeat: HeartbeatSettings, router: RouterSettings) -> list[str]:
    """Routes whose filter could take in what the router publishes itself, or the heartbeats."""
    forwards = dict.fromkeys(route.forward for _, route in routes)
    own = [(_published(forward), f"the router's own forwards ({forward.as_filter()}); it would loop")
           for forward in forwards]
    own.append((_published(dead_letter.topic),
                f"the router's own dead letters ({dead_letter.topic.as_filter()}); it would loop"))
    own.append((stats.topic, f"the router's own stats ({stats.topic}); it would loop"))
    own.append((heartbeat.topic,
                f"the workers' heartbeats ({heartbeat.topic}); they are the router's to read, not a route's"))
    own.append((router.heartbeat_topic, f"the routers' heartbeats ({router.heartbeat_topic}); they are the "
                                        "routers' to read, not a route's"))
    problems = []
    for index, route in routes:
        for topic, what in own:
            if filters_overlap(route.match.mqtt, topic):
                problems.append(f"routes[{index}].match: {route.match.template!r} would also match {what}")
                break
    return problems


def _published(template: TopicTemplate) -> str:
    """The filter of exactly the topics ``template`` renders: {topic}, its last level, fills one level or more.

    ``as_filter()`` ends in ``#``, which also matches the level above; ``+/#`` does not.
    """
    mqtt = template.as_filter()
    return mqtt[:-1] + "+/#" if "topic" in template.placeholders else mqtt


# -- values -------------------------------------------------------------------
#
# Each takes a value as YAML gives it and returns it checked and converted, or
# raises ValueError with a message that reads well after "<place>: ".


def parse_duration(value: object) -> float:
    """Seconds, from ``"500ms"``, ``"10s"``, ``"2m"``, ``"1h"``, ``"1d"`` or a number of seconds."""
    found = _DURATION.fullmatch(value) if isinstance(value, str) else None
    seconds = float(Fraction(found.group(1)) * _SECONDS[found.group(2)]) if found else _number(value)
    if seconds is None or seconds < 0:
        raise ValueError("must be a duration such as '500ms', '10s', '2m', '1h', '1d' or a number of seconds "
                         f"(not negative), got {_shown(value)}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes, from ``"256KiB"``, ``"2MiB"``, ``"1GiB"``, ``"100B"``, ``"10kB"``, ``"10MB"`` or a number of bytes.

    KiB, MiB and GiB are powers of 1024; kB, MB and GB powers of 1000.
    """
    found = _SIZE.fullmatch(value) if isinstance(value, str) else None
    size: Fraction | int | None = None
    if found:
        size = Fraction(found.group(1)) * _BYTES[(found.group(2) or "B").lower()]
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    if size is None or size < 0 or Fraction(size).denominator != 1:
        raise ValueError("must be a size such as '256KiB', '2MiB', '1GiB', '10kB' or a whole number of bytes, "
                         f"got {_shown(value)}")
    return int(size)


_DURATION = re.compile(r"\s*(\d{1,15}(?:\.\d{1,9})?|\.\d{1,9})\s*(ms|s|m|h|d)?\s*")
_SECONDS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600), "d": Fraction(86400),
            None: Fraction(1)}
_SIZE = re.compile(r"\s*(\d{1,15}(?:\.\d{1,9})?)\s*([kmg]i?b|b)?\s*", re.IGNORECASE)
_BYTES = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_LISTEN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]/]+)):(\d{1,5})")


class _Short(reprlib.Repr):
    """``repr`` with bounds, and mappings in the file's order (``reprlib`` sorts their keys)."""

    def repr_dict(self, x: dict[object, object], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [f"{self.repr1(key, level - 1)}: {self.repr1(x[key], level - 1)}"
                  for key in itertools.islice(x, self.maxdict)]
        return "{" + ", ".join(pieces + (["..."] if len(x) > self.maxdict else [])) + "}"


_SHORT = _Short()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 4, 60, 60


def _shown(value: object) -> str:
    """``value`` for a message: quoted, on one line, cut short. Made short, not cut after: YAML aliases can make
    a value of a few lines whose whole ``repr`` would take gigabytes (a "billion laughs")."""
    text = _SHORT.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(name: object) -> str:
    """A name or a path for a message: as it is when it prints on one line, else quoted."""
    return name if isinstance(name, str) and name.isprintable() and name else _shown(name)


def _number(value: object) -> float | None:
    """``value`` as a finite float when it is an int or a float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _optional(convert: Callable[[object], T]) -> Callable[[object], T | None]:
    def optional(value: object) -> T | None:
        return None if value is None else convert(value)
    return optional


def _secret(value: object) -> str:
    """A password: checked like any string, but never shown in a message, which may end up in a log."""
    if not isinstance(value, str):
        raise ValueError("must be a string (the value is a secret: not shown)")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_shown(value)}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {_shown(value)}")
    return value


def _integer(low: int, high: int, note: str = "") -> Callable[[object], int]:
    def integer(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}{note}, got {_shown(value)}")
        return value
    return integer


_port = _integer(1, 65535)
_receive_maximum = _integer(1, 65535, " (MQTT's Receive Maximum)")
_message_count = _integer(1, 65535)
_max_workers = _integer(1, MAX_MAX_WORKERS)


def _per_worker(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if value == "auto":
        return None
    raise ValueError(f"must be auto, true or false, got {_shown(value)}")


def _client_id(value: object) -> str:
    """The router's client id. It is also a level of its heartbeat topic (``mqttlb/routers/{client_id}/...``),
    so it follows the rules of a worker's session (a key): a '+' in it crashed the router at every start, on a
    file ``check`` called ok."""
    client_id = _text(value)
    problem = key_problem(client_id)
    if problem is not None:
        raise ValueError(f"must fit one topic level, as it names the router's heartbeat topic ({problem}), "
                         f"got {_shown(value)}")
    return client_id


def _protocol(value: object) -> str:
    if isinstance(value, str) and value in ("5", "3.1.1"):
        return value
    if type(value) is int and value == 5:
        return "5"
    raise ValueError(f"must be 5 or 3.1.1, got {_shown(value)}")


def _keepalive(value: object) -> int:
    seconds = parse_duration(value)
    if seconds != int(seconds) or seconds > 65535:
        raise ValueError(f"must be a whole number of seconds from 0 to 65535, got {_shown(value)}")
    return int(seconds)


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("must be longer than 0s")
    return seconds


MIN_HEARTBEAT_TIMEOUT = 1.0
"""Seconds: workers beat every few seconds (``mqttlb.Worker``: 2). A shorter timeout times a healthy worker out
between two heartbeats, over and over: its devices move away and back at every beat."""


def _heartbeat_timeout(value: object) -> float:
    seconds = parse_duration(value)
    if seconds < MIN_HEARTBEAT_TIMEOUT:
        raise ValueError(f"must be at least {MIN_HEARTBEAT_TIMEOUT:g}s (longer than the workers' heartbeat "
                         f"interval), got {_shown(value)}")
    return seconds


def _session_expiry(value: object) -> float:
    seconds = parse_duration(value)
    if seconds != int(seconds):  # MQTT counts whole seconds: 0.5s became 0, no session at all, with nothing said
        raise ValueError(f"must be whole seconds (0: no session, what arrives while the router is away is lost), "
                         f"got {_shown(value)}")
    if seconds > MAX_SESSION_EXPIRY:
        raise ValueError(f"must be at most {MAX_SESSION_EXPIRY:.0f} seconds (MQTT's limit), got {_shown(value)}")
    return seconds


def _packet_size(value: object) -> int:
    size = _payload_size(value)
    if size < MIN_PACKET_BYTES:
        raise ValueError(f"must be at least {MIN_PACKET_BYTES} bytes (room for a dead letter), got {_shown(value)}")
    return size


MIN_HELD_BYTES = 2**20
"""Room for a few of the largest messages a device may send at the default ``dead_letter.max_payload``."""


def _held_bytes(value: object) -> int:
    size = parse_size(value)
    if size < MIN_HELD_BYTES:
        raise ValueError(f"must be at least 1MiB, got {_shown(value)}")
    return size


def _payload_size(value: object) -> int:
    size = parse_size(value)
    if size > MAX_PACKET_BYTES:
        raise ValueError(f"must be at most {MAX_PACKET_BYTES} bytes (the largest MQTT packet), got {_shown(value)}")
    return size


def _weight(value: object) -> float:
    number = _number(value)
    if number is None or number <= 0:
        raise ValueError(f"must be a number > 0, got {_shown(value)}")
    return number


def _qos(value: object) -> int:
    if type(value) is int and value in (0, 1):
        return value
    unsupported = " (QoS 2 is not supported)" if type(value) is int and value == 2 else ""
    raise ValueError(f"must be 0 or 1{unsupported}, got {_shown(value)}")


def _level_problem(name: str) -> str | None:
    if not name or "/" in name or topic_problem(name) is not None:
        return "must fit one topic level: non-empty, without '/', '+', '#' or control characters"
    return None


def _level(value: object) -> str:
    level = _string(value)
    problem = _level_problem(level)
    if problem is not None:
        raise ValueError(f"{problem}, got {_shown(value)}")
    return level


def _file_in(base_dir: Path) -> Callable[[object], str]:
    """A converter to the absolute path of an existing file, relative ones taken from ``base_dir``."""
    def existing(value: object) -> str:
        path = base_dir / _text(value)
        try:
            found = path.is_file()
        except OSError:  # a name too long, say
            found = False
        if not found:
            raise ValueError(f"no such file: {_plain(str(path))}")
        return str(path)
    return existing


def _heartbeat_filter(value: object) -> str:
    levels = TopicFilter.parse(_text(value)).mqtt.split("/")
    if levels.count("+") != 1 or "#" in levels:
        raise ValueError(f"must have exactly one '+' level (the worker's or router's id) and no '#', "
                         f"got {_shown(value)}")
    return "/".join(levels)


def _topic_name(value: object) -> str:
    topic = _string(value)
    problem = topic_problem(topic)
    if problem is None and topic.startswith("$"):
        problem = "topics starting with '$' are the broker's"
    if problem is not None:
        raise ValueError(f"must be a topic name without wildcards ({problem}), got {_shown(value)}")
    return topic


def _template(allowed: frozenset[str], required: str) -> Callable[[object], TopicTemplate]:
    def template(value: object) -> TopicTemplate:
        parsed = TopicTemplate.parse(_text(value), allowed)
        if required not in parsed.placeholders:
            raise ValueError(f"must contain {{{required}}}, got {_shown(value)}")
        if parsed.template.startswith("$"):
            raise ValueError(f"must not start with '$' (such topics are the broker's), got {_shown(value)}")
        return parsed
    return template


def _forward(captures: tuple[str, ...], has_key: bool) -> Callable[[object], TopicTemplate]:
    template = _template(FORWARD_PLACEHOLDERS.union(captures), "worker")

    def forward(value: object) -> TopicTemplate:
        parsed = template(value)
        if "key" in parsed.placeholders and not has_key:
            raise ValueError("{key} needs the route to have a key")
        return parsed
    return forward


def _match(value: object) -> TopicFilter:
    match = TopicFilter.parse(_text(value))
    if match.mqtt.startswith("$"):
        raise ValueError(f"must not start with '$'; for shared subscriptions set router.share_group, "
                         f"got {_shown(value)}")
    shadowed = FORWARD_PLACEHOLDERS.intersection(match.names)
    if shadowed:
        raise ValueError(f"capture {{{min(shadowed)}}} has the name of a forward placeholder; rename it")
    return match


def _key(captures: tuple[str, ...]) -> Callable[[object], KeySpec]:
    def key(value: object) -> KeySpec:
        return KeySpec.parse(_text(value), captures)
    return key


def _algorithm(value: object) -> str:
    name = _text(value)
    balancers.needs_key(name)  # raises UnknownAlgorithm, a ValueError
    return name


def _listen(value: object) -> tuple[str, int] | None:
    if value is False:  # TOML has no null
        return None
    found = _LISTEN.fullmatch(value) if isinstance(value, str) else None
    if found is None or int(found.group(3)) > 65535:
        raise ValueError(f"must be host:port, e.g. 127.0.0.1:9108 or [::1]:9108, or null (false) to turn metrics "
                         f"off, got {_shown(value)}")
    return found.group(1) or found.group(2), int(found.group(3))
