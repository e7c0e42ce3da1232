"""``mqttlb credentials``: Mosquitto's password and ACL files for a deployment devices cannot hurt.

Devices are the least trusted party. One ``pattern`` line lets each write under
its own id (``devices/%u/#``) and read nothing. The router, each worker and each
monitor get a ``user`` block naming exactly the topics they use, derived from
the router's config file: a pattern would let any device write a worker's
heartbeat, and with it join a pool and receive other devices' traffic.

Mosquitto has no ACL on client ids: a client that connects with a client id in
use drops the connection that had it, and takes its session, whoever it logs in
as. On the devices' listener a device's client id is its user name
(``use_username_as_clientid``), so the defence is here: no device may be named
as a client id the router family uses, or will use (see ``reserved_problem``).

The password file is written in Mosquitto 2.0's own format (``$7$``,
PBKDF2-SHA512, as ``mosquitto_passwd`` writes it), keeping the users it already
has. The ACL file is written whole, from the identities it already lists
(comment lines mark them) plus the ones given, so running the command again
after the config changed brings every rule up to date. Generated passwords are
printed once, on stdout, as ``user:password`` lines (the form ``--secrets``
reads back); nothing here logs a secret.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging
import os
import re
import secrets
import stat
import sys
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import yaml

from ..core import config as config_module
from ..core.config import Config
from ..core.topics import TopicError, TopicFilter, filters_overlap, inbox_filter, key_problem, with_id
from ..errors import EXIT_CONFIG, ConfigError
from ..transport import SYNC_TOPIC

log = logging.getLogger("mqttlb.credentials")

WORKER_PREFIX = "mqttlb-worker-"
"""A worker's user name is its client id: ``mqttlb-worker-<id>``."""
RESERVED_PREFIX = "mqttlb-"
"""Device ids may not start with it: the workers' and the tools' client ids do (``mqttlb-worker-w1``)."""
_INSTANCE = re.compile(r"^-(\d+)(-fleet|-beats)?$")
_CONNECTIONS = {"": "session", "-fleet": "publishing connection", "-beats": "heartbeat connection"}
DEFAULT_DEVICE_TOPIC = "devices/%u/#"
HASH_ITERATIONS = 101  # mosquitto_passwd's; generated passwords carry 192 random bits, so more buys nothing
SALT_BYTES = 12
ACL_HEADER = "# Written by `mqttlb credentials`"
_MARK = re.compile(r"^# (router|worker|monitor) (\S+)$")
_PATTERN = re.compile(r"^pattern write (\S+)$")


class Role(StrEnum):
    ROUTER = "router"
    WORKER = "worker"
    MONITOR = "monitor"
    DEVICE = "device"


@dataclass(frozen=True, slots=True)
class Identity:
    role: Role
    name: str
    """A worker's id; for the other roles the user name itself."""

    @property
    def username(self) -> str:
        return WORKER_PREFIX + self.name if self.role is Role.WORKER else self.name


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The password file's form of ``password``: ``$7$<iterations>$<salt>$<PBKDF2-SHA512>``, base64."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, HASH_ITERATIONS)
    return f"$7${HASH_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def reserved_problem(name: str, client_id: str, worker_ids: Collection[str]) -> str | None:
    """Why no device may be called ``name`` (a client id the router, a worker or a tool uses), or None.

    ``client_id`` is the router's. The router keeps it and every ``<client_id>-...`` for its connections:
    ``-fleet`` (publishing), ``-beats`` (heartbeats), ``-<i>``, ``-<i>-fleet`` and ``-<i>-beats`` under
    ``run --processes``, ``-check`` (``check --connect``), and those to come.
    Workers and tools connect as ``mqttlb-...``; a worker's bare id is kept too, for a worker written on
    plain paho that uses it as its client id. Reclaim adds no name: the router takes over a departed worker's
    session by its client id (``mqttlb-worker-<id>``, or its bare id) and a dead router's by its
    (``<client_id>``, ``<client_id>-<i>``), all kept here already. A router run from another config, with
    another client id, has its names kept by running this command with that config too.
    """
    if name == client_id or name.startswith(client_id + "-"):
        return (f"reserved: {_router_connection(name[len(client_id):], client_id)}; the router keeps "
                f"{client_id!r} and every {client_id + '-...'!r} for its own connections, which a device "
                "of that name would take over")
    if name.startswith(RESERVED_PREFIX):
        return f"reserved: device ids may not start with {RESERVED_PREFIX!r}, the workers' and the tools' client ids"
    if name in worker_ids:
        return "reserved: a worker's id"
    return None


def _router_connection(suffix: str, client_id: str) -> str:
    """Which connection of the router's uses the client id ``<client_id><suffix>``."""
    if suffix in _CONNECTIONS:
        return f"the client id of the router's {_CONNECTIONS[suffix]}"
    if (instance := _INSTANCE.match(suffix)) is not None:
        return f"the client id of router instance {instance[1]}'s {_CONNECTIONS[instance[2] or '']} " \
               "(mqttlb run --processes)"
    return f"it starts with {client_id + '-'!r}"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user name (and a topic level), or None."""
    problem = key_problem(name)
    if problem is not None:
        return problem.replace("key", "name")
    if ":" in name or any(c.isspace() for c in name):
        return "name holds ':' or a space"
    return None


# -- the ACL ---------------------------------------------------------------------------


def rules(identity: Identity, config: Config) -> list[str]:
    """The ACL lines of one router, worker or monitor: exactly the topics it reads and writes.

    The router reads the workers' inboxes for reclaim alone: it takes over a departed worker's session, and
    Mosquitto checks the read ACL of whoever holds a session now as it delivers what was queued there
    (denied, the queued messages are dropped). A departed router's queue is the routes' filters, read already.
    """
    heartbeat, routers = config.heartbeat.topic, config.router.heartbeat_topic
    dead_letters = config.dead_letter.topic.as_filter()
    stats = stats_topics(config)
    reads: list[str] = []
    writes: list[str] = []
    if identity.role is Role.ROUTER:
        inboxes = [inbox_filter(route.forward, "+") for route in config.routes]
        reads = [route.match.mqtt for route in config.routes] + [heartbeat, routers, SYNC_TOPIC, *inboxes]
        # Every router's heartbeat, not only its own: routers are trusted, and the router user is all of them
        # (<client_id>, the --processes instances <client_id>-<i>, the share group's other routers), whose ids no
        # ACL line can spell out (`+` is one whole level). It may connect with any of their client ids anyway:
        # the backend listener does not police client ids, and reclaim takes over a dead router's session.
        writes = [route.forward.as_filter() for route in config.routes] + [dead_letters, *stats, routers]
    elif identity.role is Role.WORKER:
        reads = [inbox_filter(route.forward, identity.name) for route in config.routes]
        writes = [with_id(heartbeat, identity.name)]
    elif identity.role is Role.MONITOR:
        reads = [dead_letters, *stats, heartbeat, routers]
    return [f"topic read {t}" for t in dict.fromkeys(reads)] + [f"topic write {t}" for t in dict.fromkeys(writes)]


def stats_topics(config: Config) -> list[str]:
    """The router's stats topic, and its instances' under ``run --processes`` (``<stats.topic>/<i>``)."""
    return [config.stats.topic, f"{config.stats.topic}/+"]


def render_acl(identities: list[Identity], device_topics: list[str], config: Config) -> str:
    lines = [f"{ACL_HEADER} from {config.source or 'the router config'}: run it again rather than editing.",
             "# Mosquitto reads this file at start and on SIGHUP.", "",
             "# Devices write under their own id and read nothing.",
             *(f"pattern write {topic}" for topic in device_topics)]
    for identity in identities:
        lines += ["", f"# {identity.role} {identity.name}", f"user {identity.username}", *rules(identity, config)]
    return "\n".join(lines) + "\n"


def parse_acl(text: str, where: str) -> tuple[list[Identity], list[str]]:
    """The identities and device topics of an ACL file this command wrote."""
    if text and not text.startswith(ACL_HEADER):
        raise ConfigError([f"{where}: not written by mqttlb credentials; move it away or merge it by hand"])
    identities: list[Identity] = []
    topics: list[str] = []
    for line in text.splitlines():
        if (mark := _MARK.match(line)) is not None:
            identities.append(Identity(Role(mark.group(1)), mark.group(2)))
        elif (pattern := _PATTERN.match(line)) is not None:
            topics.append(pattern.group(1))
    return identities, topics


def device_topic_problem(topic: str, config: Config) -> str | None:
    """Why devices may not be let write ``topic`` (``%u`` standing for the device id), or None."""
    levels = topic.split("/")
    if levels.count("%u") != 1 or "%" in "".join(level for level in levels if level != "%u"):
        return "needs %u as one whole level, and no other %"
    as_filter = "/".join("+" if level == "%u" else level for level in levels)
    try:
        TopicFilter.parse(as_filter)
    except TopicError as error:
        return str(error)
    protected = {config.heartbeat.topic: "the workers' heartbeats",
                 config.router.heartbeat_topic: "the routers' heartbeats",
                 **dict.fromkeys(stats_topics(config), "the stats"),
                 config.dead_letter.topic.as_filter(): "the dead letters", SYNC_TOPIC: "the router's sync topic",
                 **{route.forward.as_filter(): "the workers' inboxes" for route in config.routes}}
    for other, what in protected.items():
        if filters_overlap(as_filter, other):
            return f"devices could write {what} ({other})"
    return None


# -- files -----------------------------------------------------------------------------


def read_password_file(path: Path) -> dict[str, str]:
    """User name to the rest of its line, in file order; a missing file is an empty one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            name, _, rest = line.partition(":")
            entries[name] = rest
    return entries


def read_secrets(path: Path) -> dict[str, str]:
    """``user:password`` lines; blank lines and ``#`` comments are skipped."""
    found: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as error:
        raise ConfigError([f"--secrets {path}: cannot read: {getattr(error, 'strerror', None) or error}"]) from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            name, colon, password = line.partition(":")
            if not colon or not password:
                raise ConfigError([f"--secrets {path}:{number}: expected user:password"])
            found[name] = password
    return found


def write_file(path: Path, text: str) -> None:
    """Replace ``path`` whole, so Mosquitto never reads half a file; keep its mode and owner (new: 0640)."""
    try:
        old = path.stat()
        mode, owner = stat.S_IMODE(old.st_mode), (old.st_uid, old.st_gid)
    except FileNotFoundError:
        mode, owner = 0o640, None
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, mode)
        if owner is not None and os.geteuid() == 0:
            os.chown(temporary, *owner)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def load_config(path: str) -> Config:
    """The router's config as this command needs it: topics, user name and client id.

    The broker's password and TLS files are left out: they may not exist yet when the credentials are made.
    """
    try:
        data = yaml.safe_load(Path(path).read_bytes())
    except (OSError, yaml.YAMLError):
        return config_module.load(path)  # raises, worded as for every other command
    if isinstance(data, dict) and isinstance(data.get("broker"), dict):
        data = {**data, "broker": {k: v for k, v in data["broker"].items() if k in ("username", "client_id")}}
    config = config_module.parse(data, base_dir=Path(path).absolute().parent, environ=os.environ)
    return replace(config, source=str(path))


# -- the command -----------------------------------------------------------------------


def _requested(args: argparse.Namespace, config: Config, workers: set[str],
               devices: set[str]) -> tuple[list[Identity], list[str]]:
    """The identities the command line names, and the problems with them; ``workers`` and ``devices``: the ids known."""
    problems: list[str] = []
    wanted = [Identity(Role.WORKER, n) for n in args.worker] + [Identity(Role.DEVICE, n) for n in args.device] + \
        [Identity(Role.MONITOR, n) for n in args.monitor]
    if args.router:
        if config.broker.username is None:
            problems.append("--router: set broker.username in the config first: it names the router's user")
        else:
            wanted.insert(0, Identity(Role.ROUTER, config.broker.username))
    for identity in wanted:
        problem = name_problem(identity.name)
        if problem is None and identity.role is Role.DEVICE:
            problem = reserved_problem(identity.name, config.broker.client_id, workers)
        if problem is None and identity.role is Role.WORKER and identity.name in devices:
            problem = "reserved: a device has this name, and devices may not be named as a worker's id"
        if problem is not None:
            problems.append(f"--{identity.role} {identity.name!r}: {problem}")
    return wanted, problems


def _roles(users: dict[str, str], identities: list[Identity]) -> dict[str, Role]:
    """The role of every user known: the ACL's identities; the password file's other users are devices."""
    return {**{name: Role.DEVICE for name in users}, **{i.username: i.role for i in identities}}


def main(args: argparse.Namespace, config: Config) -> int:
    """``mqttlb credentials``: exit 0, or 2 with one line per problem and nothing written."""
    try:
        new = update(args, config)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    for username, password in new.items():
        print(f"{username}:{password}")
    return 0


def update(args: argparse.Namespace, config: Config) -> dict[str, str]:
    """Write both files; returns the generated passwords by user name (none when ``--secrets`` gave them)."""
    password_path, acl_path = Path(args.password_file), Path(args.acl_file)
    users = read_password_file(password_path)
    acl_text = acl_path.read_text(encoding="utf-8") if acl_path.exists() else ""
    identities, device_topics = parse_acl(acl_text, str(acl_path))
    roles = _roles(users, identities)
    workers = {i.name for i in identities if i.role is Role.WORKER and i.username not in args.remove} | set(args.worker)
    devices = {name for name, role in roles.items() if role is Role.DEVICE and name not in args.remove}
    wanted, problems = _requested(args, config, workers, devices | set(args.device))
    for name in sorted(devices - set(args.device)):  # made before the rule, or under another client id
        if (problem := reserved_problem(name, config.broker.client_id, workers)) is not None:
            log.warning("device %s, already in %s: %s; remove it (--remove %s)", name, password_path, problem, name)
    for identity in wanted:
        role = roles.get(identity.username, identity.role)
        if role is not identity.role:
            problems.append(f"--{identity.role} {identity.name!r}: user {identity.username} is a {role} already")
    for name in args.remove:
        if name not in roles:
            problems.append(f"--remove {name!r}: no such user")
    device_topics = args.device_topic or device_topics or [DEFAULT_DEVICE_TOPIC]
    problems += [f"--device-topic {t!r}: {p}" for t in device_topics if (p := device_topic_problem(t, config))]
    given = read_secrets(Path(args.secrets)) if args.secrets else None
    if given is not None:
        problems += [f"--secrets {args.secrets}: no password for {i.username}" for i in wanted
                     if i.username not in given]
    if problems:
        raise ConfigError(problems)
    passwords = {i.username: given[i.username] if given is not None else secrets.token_urlsafe(24) for i in wanted}
    for name in args.remove:
        users.pop(name, None)
    users.update({name: hash_password(password) for name, password in passwords.items()})
    kept = [i for i in identities if i.username not in args.remove and i.username not in passwords]
    identities = kept + [i for i in wanted if i.role is not Role.DEVICE]
    write_file(password_path, "".join(f"{name}:{rest}\n" for name, rest in users.items()))
    write_file(acl_path, render_acl(identities, device_topics, config))
    log.info("%s: %d users; %s: %d identities; %d passwords set, %d users removed; reload Mosquitto (SIGHUP)",
             password_path, len(users), acl_path, len(identities), len(passwords), len(args.remove))
    if given is not None:
        return {}
    if passwords:
        log.info("the new passwords follow on stdout, shown this once: store them now")
    return passwords
