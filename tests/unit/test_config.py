"""The configuration file: defaults, values, and one named line per problem."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.core import config
from mqttlb.core.config import (
    BrokerSettings,
    Config,
    DeadLetterSettings,
    HeartbeatSettings,
    MetricsSettings,
    PoolSettings,
    ReclaimSettings,
    RouterSettings,
    StatsSettings,
    TlsSettings,
    WorkerOverride,
    load,
    parse_duration,
    parse_size,
)
from mqttlb.core.topics import id_level
from mqttlb.errors import ConfigError

DEFAULT_FILE = Path(__file__).parents[2] / "config" / "mqttlb.yaml"
TELEMETRY = {"match": "devices/{device}/telemetry", "key": "device"}
ALGORITHMS = "consistent_hash, least_connections, random, ring, round_robin, weighted_round_robin"


def parse(data: object, base_dir: Path = Path("/nonexistent"), environ: dict[str, str] | None = None) -> Config:
    return config.parse(data, base_dir=base_dir, environ=environ or {})


def with_routes(*routes: object, **sections: Any) -> dict[str, Any]:
    return {"routes": list(routes or [TELEMETRY]), **sections}


def problems(data: object, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse(data, **kwargs)
    return list(raised.value.problems)


def problem(data: object, **kwargs: Any) -> str:
    found = problems(data, **kwargs)
    assert len(found) == 1, found
    return found[0]


# -- the default file and the defaults ---------------------------------------


def test_default_file_loads_with_the_spec_defaults() -> None:
    loaded = load(DEFAULT_FILE, environ={})
    assert loaded.source == str(DEFAULT_FILE)
    assert loaded.broker == BrokerSettings()
    assert loaded.broker.protocol == "5" and loaded.broker.session_expiry == 3600.0
    assert loaded.router == RouterSettings(share_group=None)
    assert loaded.heartbeat == HeartbeatSettings("mqttlb/workers/+/heartbeat", 6.0, 300.0)
    assert loaded.dead_letter == DeadLetterSettings()
    assert loaded.dead_letter.topic.template == "mqttlb/deadletter/{reason}/{topic}"
    assert (loaded.dead_letter.hold, loaded.dead_letter.max_payload) == (10.0, 256 * 1024)
    assert loaded.stats == StatsSettings("mqttlb/stats", 5.0)
    assert loaded.metrics == MetricsSettings(("127.0.0.1", 9108))
    assert dict(loaded.pools) == {"default": PoolSettings("default")}
    assert dict(loaded.balancers) == {"consistent_hash": {"load_factor": None, "cache_size": 262144},
                                      "ring": {"virtual_nodes": 160}}

    telemetry, logs = loaded.routes
    assert (telemetry.name, telemetry.match.mqtt, str(telemetry.key)) == ("telemetry", "devices/+/telemetry", "device")
    assert (telemetry.algorithm, telemetry.pool, telemetry.qos) == ("consistent_hash", "default", 1)
    assert telemetry.forward.template == "mqttlb/workers/{worker}/in/{topic}"
    assert (logs.name, logs.match.mqtt, logs.key, logs.algorithm) == ("logs", "devices/+/logs/#", None, "round_robin")


def test_only_routes_is_required_and_the_rest_defaults_like_the_default_file() -> None:
    minimal = parse({"routes": [{**TELEMETRY, "name": "telemetry"}, {"name": "logs", "match": "devices/+/logs/#"}]})
    default = load(DEFAULT_FILE, environ={})
    assert dataclasses.replace(minimal, balancers=default.balancers) == dataclasses.replace(default, source=None)


def test_route_defaults() -> None:
    keyed, keyless = parse(with_routes(TELEMETRY, {"match": "devices/+/logs/#"})).routes
    assert keyed.name == "devices/{device}/telemetry"  # the match text when no name is given
    assert keyed.algorithm == "consistent_hash"
    assert keyless.algorithm == "round_robin"
    assert keyless.forward.as_filter() == "mqttlb/workers/+/in/#"


def test_settings_are_frozen() -> None:
    loaded = parse(with_routes())
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.broker.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        loaded.pools["other"] = PoolSettings("other")  # type: ignore[index]
    assert "secret" not in repr(parse(with_routes(broker={"username": "u", "password": "secret"})))


def test_empty_sections_mean_defaults() -> None:
    loaded = parse(with_routes(broker=None, heartbeat=None, pools={"default": None}))
    assert loaded.broker == BrokerSettings()
    assert loaded.pools["default"] == PoolSettings("default")


# -- durations and sizes -----------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("10s", 10.0), ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5s", 1.5),
    ("100ms", 0.1), (" 3 s ", 3.0), ("7", 7.0), (5, 5.0), (2.5, 2.5), (0, 0.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", [True, False, -1, -0.5, "-1s", "10x", "", "s", "1e3s", "10 sec", None, [], {},
                                 math.nan, math.inf, 10**400])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^must be a duration such as '500ms', '10s', .* got "):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "size"), [
    ("256KiB", 262_144), ("2MiB", 2 * 1024**2), ("1GiB", 1024**3), ("100B", 100), ("10kB", 10_000),
    ("10MB", 10_000_000), ("1GB", 10**9), ("1.5KiB", 1536), ("64", 64), (1024, 1024), (0, 0),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", [True, -1, "-1B", "1.5B", "10XB", "KiB", "", 1.5, 1024.0, None, ["1B"]])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^must be a size such as '256KiB', .* got "):
        parse_size(bad)


def test_durations_and_sizes_in_the_file() -> None:
    loaded = parse(with_routes(heartbeat={"timeout": "1500ms", "expire": 60}, broker={"session_expiry": "1d"},
                               dead_letter={"hold": 0, "max_payload": "1MiB"}, stats={"interval": "2m"}))
    assert (loaded.heartbeat.timeout, loaded.heartbeat.expire) == (1.5, 60.0)
    assert loaded.broker.session_expiry == 86400.0
    assert (loaded.dead_letter.hold, loaded.dead_letter.max_payload) == (0.0, 1024**2)
    assert loaded.stats.interval == 120.0


# -- problems, one line each, naming the place -------------------------------


def test_the_spec_example_line() -> None:
    data = with_routes(TELEMETRY, {"match": "devices/+/logs/#", "algorithm": "roundrobin"})
    assert problem(data) == f"routes[1].algorithm: unknown algorithm 'roundrobin'; expected one of {ALGORITHMS}"


def test_bad_port() -> None:
    assert problem(with_routes(broker={"port": "abc"})) == "broker.port: must be an integer from 1 to 65535, got 'abc'"
    assert problem(with_routes(broker={"port": 0})) == "broker.port: must be an integer from 1 to 65535, got 0"
    assert problem(with_routes(broker={"port": True})) == "broker.port: must be an integer from 1 to 65535, got True"


def test_unknown_fields_anywhere() -> None:
    assert problem(with_routes(broker={"hots": "x"})) == (
        "broker.hots: unknown field; expected one of client_id, host, keepalive, max_packet_size, password, "
        "password_env, password_file, port, protocol, session_expiry, tls, username")
    assert problem({**with_routes(), "brokers": {}}) == (
        "brokers: unknown field; expected one of balancers, broker, dead_letter, heartbeat, metrics, pools, reclaim, "
        "router, routes, stats")
    assert problem(with_routes({**TELEMETRY, "algo": "random"})) == (
        "routes[0].algo: unknown field; expected one of algorithm, forward, key, match, name, pool, qos")
    assert problem(with_routes(pools={"p": {"workers": {"w1": {"weight": 2, "wieght": 3}}}})) == (
        "pools.p.workers.w1.wieght: unknown field; expected one of weight")


@pytest.mark.parametrize(("data", "expected"), [
    (with_routes(broker=[1, 2]), "broker: must be a mapping, got [1, 2]"),
    (with_routes(heartbeat="6s"), "heartbeat: must be a mapping, got '6s'"),
    (with_routes(pools=["default"]), "pools: must be a mapping of pool names to settings, got ['default']"),
    (with_routes(pools={"p": {"workers": [1]}}), "pools.p.workers: must be a mapping of worker names to settings, "
                                                  "got [1]"),
    (with_routes(balancers={"random": 3}), "balancers.random: must be a mapping of option names to values, got 3"),
    (with_routes("devices/+/x"), "routes[0]: must be a mapping with at least match, got 'devices/+/x'"),
    (with_routes(None), "routes[0]: must be a mapping with at least match, got None"),
    (with_routes({"match": ["a"]}), "routes[0].match: must be a non-empty string, got ['a']"),
    (with_routes({**TELEMETRY, "name": 7}), "routes[0].name: must be a non-empty string, got 7"),
    ({"routes": {"match": "a"}}, "routes: required: a non-empty list of routes, got {'match': 'a'}"),
    ({"routes": []}, "routes: required: a non-empty list of routes, got []"),
    ({"broker": {}}, "routes: required: a non-empty list of routes"),
    (None, "routes: required: a non-empty list of routes"),
    ("routes", "config: must be a mapping of sections with at least routes, got 'routes'"),
    ([TELEMETRY, TELEMETRY], "config: must be a mapping of sections with at least routes, got [{'match': "
                             "'devices/{device}/telemetry', 'key': 'device'}..."),
])
def test_wrong_types_are_problems(data: object, expected: str) -> None:
    assert problem(data) == expected


@pytest.mark.parametrize(("broker", "expected"), [
    ({"host": ""}, "broker.host: must be a non-empty string, got ''"),
    *(({"client_id": bad}, "broker.client_id: must fit one topic level, as it names the router's heartbeat topic "
                           f"(key holds forbidden character U+{code:04X}), got {bad!r}")
      for bad, code in (("a\nb", 10), ("probe-1.0e+300", 0x2B), ("site/a", 0x2F), ("r#", 0x23), ("\u0000", 0))),
    ({"protocol": 311}, "broker.protocol: must be 5 or 3.1.1, got 311"),
    ({"protocol": 3.1}, "broker.protocol: must be 5 or 3.1.1, got 3.1"),
    ({"protocol": "3"}, "broker.protocol: must be 5 or 3.1.1, got '3'"),
    ({"keepalive": 1.5}, "broker.keepalive: must be a whole number of seconds from 0 to 65535, got 1.5"),
    ({"keepalive": 70000}, "broker.keepalive: must be a whole number of seconds from 0 to 65535, got 70000"),
    ({"session_expiry": "0.5s"}, "broker.session_expiry: must be whole seconds (0: no session, what arrives while "
                                 "the router is away is lost), got '0.5s'"),
    ({"session_expiry": "1500ms"}, "broker.session_expiry: must be whole seconds (0: no session, what arrives while "
                                   "the router is away is lost), got '1500ms'"),
    ({"session_expiry": "200000d"}, "broker.session_expiry: must be at most 4294967295 seconds (MQTT's limit), "
                                    "got '200000d'"),
])
def test_broker_problems(broker: dict[str, object], expected: str) -> None:
    assert problem(with_routes(broker=broker)) == expected


def test_a_client_id_is_at_most_256_bytes() -> None:
    assert parse(with_routes(broker={"client_id": "é" * 128})).broker.client_id == "é" * 128
    assert problem(with_routes(broker={"client_id": "é" * 129})).startswith(
        "broker.client_id: must fit one topic level, as it names the router's heartbeat topic (key longer than 256 "
        "bytes), got 'ééé")


@pytest.mark.parametrize(("given", "protocol"), [(5, "5"), ("5", "5"), ("3.1.1", "3.1.1")])
def test_protocol(given: object, protocol: str) -> None:
    assert parse(with_routes(broker={"protocol": given})).broker.protocol == protocol


def test_protocol_as_yaml_writes_it() -> None:
    assert yaml.safe_load("protocol: 3.1.1") == {"protocol": "3.1.1"}
    assert parse(with_routes(broker=yaml.safe_load("protocol: 3.1.1"))).broker.protocol == "3.1.1"


def test_several_problems_are_all_listed() -> None:
    data = {
        "broker": {"port": "abc", "hots": 1},
        "heartbeat": {"timeout": "10s", "expire": "5s"},
        "routes": [
            {"match": "devices/{device}/telemetry", "algorithm": "consistent_hash"},
            {"match": "devices/+/logs/#", "algorithm": "roundrobin", "qos": 2},
        ],
        "stats": {"interval": "soon"},
        "metrics": {"listen": "9108"},
    }
    assert problems(data) == [
        "broker.hots: unknown field; expected one of client_id, host, keepalive, max_packet_size, password, "
        "password_env, password_file, port, protocol, session_expiry, tls, username",
        "broker.port: must be an integer from 1 to 65535, got 'abc'",
        "heartbeat.expire: must be at least heartbeat.timeout (10s), got 5s",
        "routes[0].algorithm: consistent_hash needs a key: add key: <a capture of match> or payload.<path>, "
        "or choose another algorithm",
        f"routes[1].algorithm: unknown algorithm 'roundrobin'; expected one of {ALGORITHMS}",
        "routes[1].qos: must be 0 or 1 (QoS 2 is not supported), got 2",
        "stats.interval: must be a duration such as '500ms', '10s', '2m', '1h', '1d' or a number of seconds "
        "(not negative), got 'soon'",
        "metrics.listen: must be host:port, e.g. 127.0.0.1:9108 or [::1]:9108, or null (false) to turn metrics "
        "off, got '9108'",
    ]


# -- routes ------------------------------------------------------------------


def test_consistent_hash_without_key_is_refused() -> None:
    assert problem(with_routes({"match": "devices/+/telemetry", "algorithm": "consistent_hash"})) == (
        "routes[0].algorithm: consistent_hash needs a key: add key: <a capture of match> or payload.<path>, "
        "or choose another algorithm")


def test_key_naming_a_missing_capture_is_refused() -> None:
    assert problem(with_routes({"match": "devices/{device}/telemetry", "key": "dev"})) == (
        "routes[0].key: 'dev' is neither a capture of the match filter (captures: device) nor payload.<path>")


def test_payload_key() -> None:
    (route,) = parse(with_routes({"match": "devices/+/telemetry", "key": "payload.meta.id"})).routes
    assert route.key is not None and route.key.path == ("meta", "id")
    assert route.algorithm == "consistent_hash"


def test_a_key_with_a_keyless_algorithm_is_allowed() -> None:
    (route,) = parse(with_routes({**TELEMETRY, "algorithm": "least_connections"})).routes
    assert route.algorithm == "least_connections" and route.key is not None


@pytest.mark.parametrize(("route", "expected"), [
    ({"match": "a/b{c}"}, "routes[0].match: level 'b{c}': a capture must be a whole level, like {device}"),
    ({"match": "$share/g/devices/#"}, "routes[0].match: must not start with '$'; for shared subscriptions set "
                                      "router.share_group, got '$share/g/devices/#'"),
    ({"match": "devices/{worker}/x"}, "routes[0].match: capture {worker} has the name of a forward placeholder; "
                                      "rename it"),
    ({**TELEMETRY, "qos": 2}, "routes[0].qos: must be 0 or 1 (QoS 2 is not supported), got 2"),
    ({**TELEMETRY, "qos": "1"}, "routes[0].qos: must be 0 or 1, got '1'"),
    ({**TELEMETRY, "pool": "a/b"}, "routes[0].pool: must fit one topic level: non-empty, without '/', '+', '#' "
                                   "or control characters, got 'a/b'"),
    ({**TELEMETRY, "forward": "workers/{topic}"}, "routes[0].forward: must contain {worker}, got 'workers/{topic}'"),
    ({"match": "devices/+/logs", "forward": "w/{worker}/{key}"}, "routes[0].forward: {key} needs the route to have "
                                                                 "a key"),
    ({**TELEMETRY, "forward": "w/{worker}/{nope}"}, "routes[0].forward: unknown placeholder {nope}; expected one "
                                                    "of device, key, pool, route, topic, worker"),
    ({"match": "devices/+/logs", "forward": "w/{worker}/{route}"},
     "routes[0].forward: {route} needs route names that fit one topic level; give the route matching "
     "'devices/+/logs' a name"),
    ({}, "routes[0].match: required: the MQTT filter the route takes, e.g. devices/{device}/telemetry"),
    ({"match": "a/b{c}", "key": "c", "forward": "w/{worker}/{c}"}, "routes[0].match: level 'b{c}': a capture must "
                                                                   "be a whole level, like {device}"),
])
def test_route_problems(route: dict[str, object], expected: str) -> None:
    assert problem(with_routes(route)) == expected


def test_forward_may_use_captures_key_route_and_pool() -> None:
    route = {**TELEMETRY, "name": "t", "pool": "p", "forward": "w/{worker}/{pool}/{route}/{device}/{key}"}
    (parsed,) = parse(with_routes(route)).routes
    assert parsed.forward.render({"worker": "w1", "pool": "p", "route": "t", "device": "d", "key": "d"}) == (
        "w/w1/p/t/d/d")


def test_route_names_must_be_unique() -> None:
    data = with_routes({**TELEMETRY, "name": "t"}, {"match": "devices/+/logs/#", "name": "t"})
    assert problem(data) == "routes[1].name: 't' is already the name of routes[0]"
    assert problem(with_routes(TELEMETRY, TELEMETRY)) == (
        "routes[1].name: 'devices/{device}/telemetry' is already the name of routes[0]")


# -- the loop check ----------------------------------------------------------


@pytest.mark.parametrize(("match", "what"), [
    ("#", "the router's own forwards (mqttlb/workers/+/in/#); it would loop"),
    ("mqttlb/#", "the router's own forwards (mqttlb/workers/+/in/#); it would loop"),
    ("+/workers/#", "the router's own forwards (mqttlb/workers/+/in/#); it would loop"),
    ("mqttlb/deadletter/+/devices/#", "the router's own dead letters (mqttlb/deadletter/+/#); it would loop"),
    ("+/stats", "the router's own stats (mqttlb/stats); it would loop"),
    ("mqttlb/workers/+/heartbeat", "the workers' heartbeats (mqttlb/workers/+/heartbeat); they are the "
                                   "router's to read, not a route's"),
])
def test_routes_that_would_loop_are_refused(match: str, what: str) -> None:
    assert problem(with_routes(TELEMETRY, {"match": match})) == f"routes[1].match: {match!r} would also match {what}"


def test_a_route_may_not_take_another_routes_forwards() -> None:
    data = with_routes({"match": "in/#", "forward": "out/{worker}/{topic}"}, {"match": "out/#"})
    assert problem(data) == (
        "routes[1].match: 'out/#' would also match the router's own forwards (out/+/#); it would loop")


@pytest.mark.parametrize("match", ["devices/#", "+/+/telemetry", "mqttlb/deadletter/+", "mqttlb/workers/+/in", "+"])
def test_routes_that_cannot_loop_are_accepted(match: str) -> None:
    assert parse(with_routes({"match": match})).routes[0].match.mqtt == match


def test_the_loop_check_follows_the_configured_topics() -> None:
    data = with_routes({"match": "mqttlb/#"}, heartbeat={"topic": "hb/+"}, stats={"topic": "stats"},
                       dead_letter={"topic": "dead/{reason}/{topic}"}, router={"heartbeat_topic": "routers/+"})
    assert problem(data) == (
        "routes[0].match: 'mqttlb/#' would also match the router's own forwards (mqttlb/workers/+/in/#); it would loop")
    data["routes"][0]["forward"] = "out/{worker}/{topic}"
    assert parse(data).routes[0].match.mqtt == "mqttlb/#"
    data["routes"][0]["match"] = "routers/#"
    assert problem(data) == ("routes[0].match: 'routers/#' would also match the routers' heartbeats (routers/+); "
                             "they are the routers' to read, not a route's")


def test_reclaim_settings() -> None:
    assert parse(with_routes()).reclaim == ReclaimSettings(after=10.0, wait=30.0)
    assert parse(with_routes(reclaim={"after": None, "wait": "2m"})).reclaim == ReclaimSettings(None, 120.0)
    assert parse(with_routes(reclaim={"after": 0})).reclaim.after == 0
    assert problem(with_routes(reclaim={"after": "soon"})).startswith("reclaim.after: ")


# -- broker credentials and TLS ----------------------------------------------


def test_password_inline_file_and_env(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    inline = parse(with_routes(broker={"username": "u", "password": "p"}))
    from_file = parse(with_routes(broker={"username": "u", "password_file": "secret"}), base_dir=tmp_path)
    from_env = parse(with_routes(broker={"username": "u", "password_env": "MQTT_PW"}), environ={"MQTT_PW": "e"})
    assert (inline.broker.password, from_file.broker.password, from_env.broker.password) == ("p", "s3cret", "e")


def test_password_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("x\r\n")
    path = tmp_path / "mqttlb.yaml"
    path.write_text("broker: {username: u, password_file: secrets/pw}\nroutes: [{match: devices/+/logs}]\n")
    assert load(path, environ={}).broker.password == "x"


@pytest.mark.parametrize(("broker", "expected"), [
    ({"username": "u", "password": "p", "password_env": "X"}, "broker.password_env: give only one of password, "
                                                              "password_env"),
    ({"username": "u", "password_env": "MISSING"}, "broker.password_env: environment variable MISSING is not set"),
    ({"username": "u", "password_file": "nope"}, "broker.password_file: no such file: {tmp}/nope"),
    ({"password": "p"}, "broker.password: needs broker.username as well"),
    ({"username": "u", "password": 5}, "broker.password: must be a string (the value is a secret: not shown)"),
])
def test_password_problems(tmp_path: Path, broker: dict[str, object], expected: str) -> None:
    assert problem(with_routes(broker=broker), base_dir=tmp_path) == expected.format(tmp=tmp_path)


def test_tls_paths_are_resolved_and_must_exist(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("")
    tls = {"ca_certs": "ca.pem", "certfile": "client.pem", "keyfile": str(tmp_path / "client.key")}
    broker = parse(with_routes(broker={"tls": tls}), base_dir=tmp_path).broker
    assert broker.tls == TlsSettings(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"),
                                     str(tmp_path / "client.key"))
    assert broker.port == 8883  # the TLS port unless one is given
    assert parse(with_routes(broker={"tls": {}, "port": 1884})).broker == BrokerSettings(port=1884, tls=TlsSettings())
    assert problems(with_routes(broker={"tls": {"ca_certs": "missing.pem", "keyfile": "client.key"}}),
                    base_dir=tmp_path) == [
        f"broker.tls.ca_certs: no such file: {tmp_path / 'missing.pem'}",
        "broker.tls.keyfile: needs certfile, the client certificate it belongs to",
    ]


# -- the other sections ------------------------------------------------------


def test_heartbeat_topic() -> None:
    heartbeat = parse(with_routes(heartbeat={"topic": "fleet/{worker}/hb"})).heartbeat
    assert (heartbeat.topic, id_level(heartbeat.topic)) == ("fleet/+/hb", 1)
    assert heartbeat.worker_of("fleet/w-7/hb") == "w-7"
    assert id_level(HeartbeatSettings().topic) == 2
    assert HeartbeatSettings().worker_of("mqttlb/workers/w1/heartbeat") == "w1"
    for bad in ("fleet/+/+/hb", "fleet/hb", "fleet/+/#"):
        assert problem(with_routes(heartbeat={"topic": bad})) == (
            f"heartbeat.topic: must have exactly one '+' level (the worker's or router's id) and no '#', got {bad!r}")


def test_max_held_bytes() -> None:
    assert parse(with_routes()).router.max_held_bytes == 64 * 2**20
    assert parse(with_routes(router={"max_held_bytes": "1MiB"})).router.max_held_bytes == 2**20
    assert problem(with_routes(router={"max_held_bytes": "1000KiB"})) == (
        "router.max_held_bytes: must be at least 1MiB, got '1000KiB'")


def test_heartbeat_timings() -> None:
    for tiny in (0, "10ms", 0.999):  # a healthy worker would time out between two of its heartbeats
        assert problem(with_routes(heartbeat={"timeout": tiny})) == (
            f"heartbeat.timeout: must be at least 1s (longer than the workers' heartbeat interval), got {tiny!r}")
    assert parse(with_routes(heartbeat={"timeout": "1s"})).heartbeat.timeout == 1.0
    assert problem(with_routes(heartbeat={"expire": "5s"})) == (
        "heartbeat.expire: must be at least heartbeat.timeout (6s), got 5s")


def test_share_group() -> None:
    assert parse(with_routes(router={"share_group": "mqttlb"})).router.share_group == "mqttlb"
    for bad in ("a/b", "", "g+", "#"):
        assert problem(with_routes(router={"share_group": bad})) == (
            "router.share_group: must fit one topic level: non-empty, without '/', '+', '#' or control characters, "
            f"got {bad!r}")


def test_router_window() -> None:
    assert parse(with_routes()).router.held_limit == 500
    router = parse(with_routes(router={"max_inflight": 50, "max_held": 10})).router
    assert (router.max_inflight, router.max_held, router.held_limit) == (50, 10, 10)
    assert parse(with_routes(router={"max_inflight": 1})).router.held_limit == 1
    assert problems(with_routes(router={"max_inflight": 0, "max_held": True})) == [
        "router.max_inflight: must be an integer from 1 to 65535 (MQTT's Receive Maximum), got 0",
        "router.max_held: must be an integer from 1 to 65535, got True"]
    assert problem(with_routes(router={"max_inflight": 20, "max_held": 21})) == (
        "router.max_held: must be at most router.max_inflight (20), got 21")


def test_a_mistyped_password_is_not_shown() -> None:
    message = problem(with_routes(broker={"username": "r", "password": 123456789}))
    assert "123456789" not in message
    assert message == "broker.password: must be a string (the value is a secret: not shown)"


def test_pool_allow() -> None:
    assert parse(with_routes(pools={"gpu": {"allow": ["gpu-*", "w?"]}})).pools["gpu"].allow == ("gpu-*", "w?")
    assert parse(with_routes(pools={"gpu": {"allow": "gpu-*"}})).pools["gpu"].allow == ("gpu-*",)
    assert parse(with_routes()).pools["default"].allow == ()
    assert problem(with_routes(pools={"gpu": {"allow": [3]}})) == (
        'pools.gpu.allow: must be a worker id pattern or a list of them, such as ["w*", "gpu-?"], got [3]')


def test_pool_slow_start() -> None:
    assert parse(with_routes(pools={"gpu": {"slow_start": "30s"}})).pools["gpu"].slow_start == 30.0
    assert parse(with_routes()).pools["default"].slow_start == 0.0
    assert problem(with_routes(pools={"gpu": {"slow_start": "soon"}})).startswith(
        "pools.gpu.slow_start: must be a duration")


def test_pools() -> None:
    data = with_routes({**TELEMETRY, "pool": "gpu"}, pools={"cpu": {"workers": {"w1": {"weight": 3}}}})
    pools = parse(data).pools
    assert list(pools) == ["default", "cpu", "gpu"]
    assert pools["cpu"].workers == {"w1": WorkerOverride(3.0)}
    assert pools["gpu"] == PoolSettings("gpu")


@pytest.mark.parametrize(("pools", "expected"), [
    ({"p": {"workers": {"w1": {"weight": 0}}}}, "pools.p.workers.w1.weight: must be a number > 0, got 0"),
    ({"p": {"workers": {"w1": {"weight": True}}}}, "pools.p.workers.w1.weight: must be a number > 0, got True"),
    ({"p": {"workers": {"w1": {}}}}, "pools.p.workers.w1.weight: required: a number > 0"),
    ({"p": {"workers": {"a/b": {"weight": 1}}}}, "pools.p.workers.a/b: the worker name must fit one topic level: "
                                                 "non-empty, without '/', '+', '#' or control characters"),
    ({"a+b": {}}, "pools.a+b: the pool name must fit one topic level: non-empty, without '/', '+', '#' or control "
                  "characters"),
    ({1: {}}, "pools.1: the pool name must be a string, got 1"),
])
def test_pool_problems(pools: dict[object, object], expected: str) -> None:
    assert problem(with_routes(pools=pools)) == expected


def test_balancer_options_are_checked_by_the_balancers() -> None:
    loaded = parse(with_routes(balancers={"ring": {"virtual_nodes": 500}, "random": None}))
    assert dict(loaded.balancers) == {"ring": {"virtual_nodes": 500}, "random": {}}
    assert problems(with_routes(balancers={"ring": {"virtual_nodes": 0}, "roundrobin": {},
                                           "round_robin": {"rng": 1}})) == [
        "balancers.ring: virtual_nodes: must be an integer from 1 to 10000, got 0",
        f"balancers.roundrobin: unknown algorithm 'roundrobin'; expected one of {ALGORITHMS}",
        "balancers.round_robin: unknown option 'rng'",
    ]


def test_dead_letter_problems() -> None:
    assert problem(with_routes(dead_letter={"topic": "dead/{topic}"})) == (
        "dead_letter.topic: must contain {reason}, got 'dead/{topic}'")
    assert problem(with_routes(dead_letter={"topic": "dead/{reason}/{route}/{topic}"})) == (
        "dead_letter.topic: {route} needs route names that fit one topic level; give the route matching "
        "'devices/{device}/telemetry' a name")
    named = with_routes({**TELEMETRY, "name": "t"}, dead_letter={"topic": "dead/{reason}/{route}/{topic}"})
    assert parse(named).dead_letter.topic.as_filter() == "dead/+/+/#"
    assert problem(with_routes(dead_letter={"max_payload": "1GiB"})) == (
        "dead_letter.max_payload: must be at most 268435455 bytes (the largest MQTT packet), got '1GiB'")


def test_stats_topic_must_be_a_topic_name() -> None:
    assert problem(with_routes(stats={"topic": "stats/#"})) == (
        "stats.topic: must be a topic name without wildcards (topic holds forbidden character U+0023), got 'stats/#'")
    assert problem(with_routes(stats={"topic": "$SYS/x"})) == (
        "stats.topic: must be a topic name without wildcards (topics starting with '$' are the broker's), "
        "got '$SYS/x'")


def test_pool_max_workers() -> None:
    assert parse(with_routes(pools={"gpu": {"max_workers": 50}})).pools["gpu"].max_workers == 50
    assert parse(with_routes()).pools["default"].max_workers == 10_000
    assert problems(with_routes(pools={"gpu": {"max_workers": 0}, "edge": {"max_workers": "many"}})) == [
        "pools.gpu.max_workers: must be an integer from 1 to 1000000, got 0",
        "pools.edge.max_workers: must be an integer from 1 to 1000000, got 'many'",
    ]


@pytest.mark.parametrize(("given", "expected"), [("auto", None), (True, True), (False, False)])
def test_metrics_per_worker(given: object, expected: bool | None) -> None:
    assert parse(with_routes(metrics={"per_worker": given})).metrics.per_worker is expected


def test_metrics_per_worker_auto_lists_small_fleets_only() -> None:
    auto = parse(with_routes()).metrics
    assert auto.per_worker is None and auto.lists_workers(999) and not auto.lists_workers(1000)
    assert parse(with_routes(metrics={"per_worker": True})).metrics.lists_workers(50_000)
    assert not parse(with_routes(metrics={"per_worker": False})).metrics.lists_workers(1)
    assert problem(with_routes(metrics={"per_worker": "yes"})) == (
        "metrics.per_worker: must be auto, true or false, got 'yes'")


@pytest.mark.parametrize(("listen", "expected"), [
    ("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:9108", ("::1", 9108)), ("localhost:0", ("localhost", 0)),
    (None, None),
])
def test_metrics_listen(listen: str | None, expected: tuple[str, int] | None) -> None:
    assert parse(with_routes(metrics={"listen": listen})).metrics.listen == expected


@pytest.mark.parametrize("bad", ["9108", ":9108", "host:", "host:70000", "::1:9108", 9108])
def test_bad_metrics_listen(bad: object) -> None:
    assert problem(with_routes(metrics={"listen": bad})).startswith("metrics.listen: must be host:port")


# -- reading the file --------------------------------------------------------


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("broker:\n  host: x\n    port: 1\nroutes: []\n")
    with pytest.raises(ConfigError) as raised:
        load(path, environ={})
    [said] = raised.value.problems  # libyaml says "... in this context", PyYAML's own loader "... here"
    assert said.startswith(f"{path}:3:9: YAML syntax error: mapping values are not allowed "), said


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path / "missing.yaml")
    assert raised.value.problems == (f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory",)


def test_load_takes_the_environment_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("broker: {username: u, password_env: MQTTLB_TEST_PW}\nroutes: [{match: a/b}]\n")
    monkeypatch.setenv("MQTTLB_TEST_PW", "from-env")
    assert load(path).broker.password == "from-env"


# -- whatever the data, the only failure is a ConfigError --------------------

yaml_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["", "#", "a/+/b", "{x}", "5", "3.1.1", "10s", "payload.x", "consistent_hash", "random"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "match", "key", "algorithm", "pool", "forward", "qos", "host", "port", "protocol",
                         "password", "password_file", "password_env", "tls", "certfile", "keepalive"])
        | st.text(max_size=6), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(routes=yaml_like, broker=yaml_like)
def test_parse_raises_only_config_error(routes: object, broker: object) -> None:
    try:
        parse({"routes": routes, "broker": broker}, environ={"X": "y"})
    except ConfigError as error:
        assert error.problems and all(problem.isprintable() for problem in error.problems)


@settings(max_examples=200, deadline=None)
@given(route=st.fixed_dictionaries({}, optional={
    "name": yaml_like, "match": yaml_like | st.sampled_from(["devices/{d}/t", "a/+/#", "#"]), "key": yaml_like,
    "algorithm": yaml_like, "pool": yaml_like, "forward": yaml_like, "qos": yaml_like}))
def test_parse_raises_only_config_error_for_any_route(route: dict[str, object]) -> None:
    try:
        parse({"routes": [route]})
    except ConfigError as error:
        assert error.problems


# -- TOML ----------------------------------------------------------------------


TOML = """\
[broker]
host = "broker.local"
session_expiry = "2h"

[metrics]
listen = false   # TOML has no null

[pools.gpu]
slow_start = "30s"

[[routes]]
name = "telemetry"
match = "devices/{device}/telemetry"
key = "device"

[[routes]]
match = "jobs/+"
algorithm = "least_connections"
pool = "gpu"
"""

SAME_IN_YAML = """\
broker: {host: broker.local, session_expiry: 2h}
metrics: {listen: null}
pools: {gpu: {slow_start: 30s}}
routes:
  - {name: telemetry, match: "devices/{device}/telemetry", key: device}
  - {match: "jobs/+", algorithm: least_connections, pool: gpu}
"""


def test_a_toml_file_means_what_the_same_yaml_means(tmp_path: Path) -> None:
    (tmp_path / "router.toml").write_text(TOML)
    (tmp_path / "router.yaml").write_text(SAME_IN_YAML)
    from_toml = config.load(tmp_path / "router.toml", environ={})
    assert from_toml.metrics.listen is None and from_toml.broker.host == "broker.local"
    assert dataclasses.replace(from_toml, source=None) == \
        dataclasses.replace(config.load(tmp_path / "router.yaml", environ={}), source=None)


def test_toml_problems_are_named_like_yaml_ones(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TOML.replace('"least_connections"', '"roundrobin"').replace('"2h"', '"soon"'))
    with pytest.raises(ConfigError) as refused:
        config.load(path, environ={})
    assert refused.value.problems[0].startswith("broker.session_expiry: must be a duration")
    assert refused.value.problems[1] == f"routes[1].algorithm: unknown algorithm 'roundrobin'; expected one of " \
                                        f"{ALGORITHMS}"


def test_a_toml_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[broker]\nhost = \n")
    with pytest.raises(ConfigError) as refused:
        config.load(path, environ={})
    assert refused.value.problems == (f"{path}: TOML syntax error: Invalid value (at line 2, column 8)",)


def test_a_yaml_alias_bomb_is_refused_without_expanding_it() -> None:
    """Aliases make a value of a few lines that holds millions of strings (a "billion laughs"). Parsing shares
    them; the problem message showed ``repr`` of the whole value before cutting it to 60 characters: gigabytes
    and minutes, in ``check`` and in a router's reload. Here 9**7 strings: tens of MiB, before."""
    levels = ["a: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 7)]
    text = "\n".join(["x:", *("  " + line for line in levels), "routes:", "  - match: devices/{d}/t",
                      "    key: d", "    name: *l6"])
    tracemalloc.start()
    try:
        found = problems(yaml.safe_load(text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert any(p.startswith("routes[0].name: must be a non-empty string, got [[[[") for p in found), found
    assert all(len(p) < 200 for p in found)
    assert peak < 4 << 20, peak
