"""MQTT topic filters with named captures, key validation and topic templates.

Routes match device topics with filters such as ``devices/{device}/telemetry``
and build new topics from templates such as ``mqttlb/workers/{worker}/in/{topic}``.
Everything that ends up in a topic we publish passes through here, because the
broker disconnects a client that publishes a topic it finds malformed: one bad
device id must never cost the router its connection.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

MAX_KEY_BYTES = 256
MAX_TOPIC_BYTES = 65535

_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# What Mosquitto refuses in a topic (NUL, C0/C1 controls, surrogates,
# noncharacters) plus the characters that have a meaning in topics.
_NONCHARACTERS = "".join(chr(plane + low) for plane in range(0, 0x110000, 0x10000) for low in (0xFFFE, 0xFFFF))
_BAD_KEY_CHARS = re.compile("[/+#\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef" + re.escape(_NONCHARACTERS) + "]")
_BAD_TOPIC_CHARS = re.compile("[+#\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef" + re.escape(_NONCHARACTERS) + "]")


class TopicError(ValueError):
    """A filter, template or topic that is not valid MQTT."""


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be placed in a topic level, or None when it can."""
    # The usual key first, for a third of the regular expression's cost: in ASCII only controls, DEL and the
    # three characters of a topic's syntax are forbidden, and isprintable() leaves out exactly the first two.
    if key.isascii() and key.isprintable() and 0 < len(key) <= MAX_KEY_BYTES and "/" not in key and "+" not in key \
            and "#" not in key:
        return None
    if not key:
        return "empty key"
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"key longer than {MAX_KEY_BYTES} bytes"
    bad = _BAD_KEY_CHARS.search(key)
    if bad is not None:
        return f"key holds forbidden character U+{ord(bad.group()):04X}"
    return None


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to, or None when it can."""
    if not topic:
        return "empty topic"
    if len(topic) * 4 > MAX_TOPIC_BYTES and len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return f"topic longer than {MAX_TOPIC_BYTES} bytes"
    bad = _BAD_TOPIC_CHARS.search(topic)
    if bad is not None:
        return f"topic holds forbidden character U+{ord(bad.group()):04X}"
    return None


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """An MQTT subscription filter whose ``+`` levels may carry names."""

    template: str
    """As written in the config, e.g. ``devices/{device}/telemetry``."""
    mqtt: str
    """The filter as the broker sees it, e.g. ``devices/+/telemetry``."""
    captures: tuple[tuple[int, str], ...]
    """(level index, name) of each named capture."""
    levels: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """``mqtt``'s levels, split once: every message is matched against them."""
    _fixed: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)
    """(index, level) of each level that is not a wildcard: all a topic's levels are compared with."""
    _rest: bool = field(init=False, repr=False, compare=False)
    """The filter ends in ``#``."""

    def __post_init__(self) -> None:
        levels = tuple(self.mqtt.split("/"))
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "_fixed", tuple((i, level) for i, level in enumerate(levels)
                                                     if level not in ("+", "#")))
        object.__setattr__(self, "_rest", levels[-1] == "#")

    @classmethod
    def parse(cls, template: str) -> TopicFilter:
        if not template:
            raise TopicError("empty filter")
        levels = template.split("/")
        mqtt_levels: list[str] = []
        captures: list[tuple[int, str]] = []
        for index, level in enumerate(levels):
            capture = _CAPTURE.fullmatch(level)
            if capture is not None:
                name = capture.group(1)
                if any(name == seen for _, seen in captures):
                    raise TopicError(f"capture {{{name}}} appears twice")
                captures.append((index, name))
                mqtt_levels.append("+")
            elif "{" in level or "}" in level:
                raise TopicError(f"level {level!r}: a capture must be a whole level, like {{device}}")
            elif level == "#" and index != len(levels) - 1:
                raise TopicError("'#' may only be the last level")
            elif level not in ("+", "#") and ("+" in level or "#" in level):
                raise TopicError(f"level {level!r}: '+' and '#' must stand alone in a level")
            else:
                mqtt_levels.append(level)
        mqtt = "/".join(mqtt_levels)
        if _BAD_TOPIC_CHARS.search(mqtt.replace("+", "").replace("#", "")):
            raise TopicError("filter holds a control character or a noncharacter")
        if len(mqtt.encode("utf-8")) > MAX_TOPIC_BYTES:
            raise TopicError(f"filter longer than {MAX_TOPIC_BYTES} bytes")
        return cls(template=template, mqtt=mqtt, captures=tuple(captures))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.captures)

    def match(self, topic: str) -> dict[str, str] | None:
        """The captures when ``topic`` matches this filter, else None (as ``filter_matches``, on every message)."""
        if len(self._fixed) == len(self.levels):  # no wildcard
            return {} if topic == self.mqtt else None
        if topic[:1] == "$" and self.mqtt[:1] != "$":
            return None  # wildcards at the first level never match $SYS, $share ...
        levels = topic.split("/")
        size = len(self.levels)
        if len(levels) != size and (not self._rest or len(levels) < size - 1):
            return None
        for index, wanted in self._fixed:  # a trailing # stands for the rest, and "a/#" matches "a" too
            if levels[index] != wanted:
                return None
        if len(self.captures) == 1:  # the usual filter: a dict display, not a comprehension's function and frame
            [(index, name)] = self.captures
            return {name: levels[index]}
        return {name: levels[index] for index, name in self.captures}


def filter_matches(mqtt_filter: str, topic: str) -> bool:
    """MQTT matching of a topic name against a filter (MQTT 3.1.1 section 4.7)."""
    if topic.startswith("$") and not mqtt_filter.startswith("$"):
        return False  # wildcards at the first level never match $SYS, $share ...
    filter_levels = mqtt_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(topic_levels) == len(filter_levels)


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic name matches both MQTT filters."""
    a_levels, b_levels = a.split("/"), b.split("/")
    if _hides_dollar_topics(a_levels[0], b_levels[0]) or _hides_dollar_topics(b_levels[0], a_levels[0]):
        return False
    for index in range(max(len(a_levels), len(b_levels))):
        x = a_levels[index] if index < len(a_levels) else None
        y = b_levels[index] if index < len(b_levels) else None
        if x == "#" or y == "#":
            # '#' also matches the parent level itself ("a/#" matches "a").
            return True
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True


def _hides_dollar_topics(first: str, other_first: str) -> bool:
    """A filter starting with a wildcard never matches a topic starting with '$' (MQTT 5, 4.7.2)."""
    return first in ("+", "#") and other_first.startswith("$")


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A topic built from placeholders, e.g. ``mqttlb/workers/{worker}/in/{topic}``.

    ``{topic}`` (the original topic, whole) must be the last level because it
    may span several levels; every other placeholder fills one level.
    """

    template: str
    parts: tuple[str, ...]
    """Literal text and placeholder names alternating, starting with literal text."""
    _format: str = field(init=False, repr=False, compare=False)
    """The literal text with ``%s`` for each placeholder, for the values ``_values`` takes: rendering every forward,
    ``%`` costs two thirds of ``format_map``, whose format syntax is richer and which looks each name up itself."""
    _values: Callable[[Mapping[str, str]], tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = self.parts[1::2]
        object.__setattr__(self, "_format", "%s".join(text.replace("%", "%%") for text in self.parts[0::2]))
        if len(names) == 1:  # itemgetter of one name gives its value, not a tuple of it
            [name] = names
            object.__setattr__(self, "_values", lambda values: (values[name],))
        else:
            object.__setattr__(self, "_values", operator.itemgetter(*names) if names else lambda values: ())

    @classmethod
    def parse(cls, template: str, allowed: frozenset[str]) -> TopicTemplate:
        if not template:
            raise TopicError("empty template")
        parts: list[str] = []
        last = 0
        for found in _CAPTURE.finditer(template):
            name = found.group(1)
            if name not in allowed:
                raise TopicError(f"unknown placeholder {{{name}}}; expected one of {', '.join(sorted(allowed))}")
            start, end = found.span()
            whole_level = (start == 0 or template[start - 1] == "/") and (end == len(template) or template[end] == "/")
            if not whole_level:
                raise TopicError(f"placeholder {{{name}}} must be a whole level")
            if name == "topic" and end != len(template):
                raise TopicError("{topic} must be the last level")
            parts.append(template[last:start])
            parts.append(name)
            last = end
        parts.append(template[last:])
        literal = "".join(parts[0::2])
        if "{" in literal or "}" in literal:
            raise TopicError("stray '{' or '}'")
        if "+" in literal or "#" in literal or _BAD_TOPIC_CHARS.search(literal):
            raise TopicError("a topic template may not hold '+', '#' or control characters")
        return cls(template=template, parts=tuple(parts))

    @property
    def placeholders(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def render(self, values: Mapping[str, str]) -> str:
        return self._format % self._values(values)

    def as_filter(self) -> str:
        """The MQTT filter that matches every topic this template can render."""
        out = [self.parts[0]]
        for index in range(1, len(self.parts), 2):
            out.append("#" if self.parts[index] == "topic" else "+")
            out.append(self.parts[index + 1])
        return "".join(out)


def id_level(id_filter: str) -> int:
    """The index of the one ``+`` level of a heartbeat filter (the workers' or the routers'): the id's."""
    return id_filter.split("/").index("+")


def id_in(id_filter: str, topic: str) -> str:
    """The worker's or router's id in ``topic``, a topic the heartbeat filter ``id_filter`` matches."""
    return topic.split("/")[id_level(id_filter)]


def with_id(id_filter: str, id_: str) -> str:
    """The heartbeat topic of one worker or router: ``id_filter`` with its ``+`` level filled in with ``id_``."""
    return "/".join(id_ if level == "+" else level for level in id_filter.split("/"))


def inbox_filter(forward: TopicTemplate, worker_id: str) -> str:
    """The filter that takes every forward a route with this ``forward`` template sends ``worker_id``."""
    levels = {name: "+" for name in forward.placeholders} | {"worker": worker_id, "topic": "#"}
    return forward.render(levels)


def original_topic(topic: str, inboxes: Iterable[str]) -> str:
    """The device's topic inside a forward's ``topic``: what the ``#`` of the inbox filter it matched stands for
    (MQTT 3.1.1 forwards carry no ``mqttlb-topic``); ``topic`` itself when no inbox matches."""
    inbox = next((f for f in inboxes if f.endswith("/#") and filter_matches(f, topic)), None)
    return topic if inbox is None else topic.split("/", inbox.count("/"))[-1]
