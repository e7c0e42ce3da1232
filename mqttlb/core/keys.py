"""Routing keys: where a route finds a message's device id, and checking it.

A key comes from a topic capture (``devices/{device}/telemetry``) or from a
field of a JSON payload (``payload.meta.id``). JSON is parsed only for payload
keys; the caller checks the payload size first. Whatever comes out is checked
with ``topics.key_problem`` so it can never make a topic the broker rejects.

A number's key is its text exactly as the payload writes it: ``12`` routes as
``"12"``, a 20-digit ICCID as its 20 digits, ``1.50`` as ``"1.50"``. orjson
gives integers as ``int`` up to 64 bits (their digits are their text) and the
rest as ``float``, which has lost digits; for those the payload is read again
with every number quoted, so orjson hands back the text itself. orjson refuses
a number past a double's range (``1e400``, a 310-digit integer), which JSON
allows: such a payload, too, is read with every number quoted, so a sensor's
huge reading costs its message nothing, and a huge key is its digits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import BadKey
from .topics import key_problem

PAYLOAD_PREFIX = "payload."

_STRING_OR_NUMBER = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)')
"""A JSON string (group 1 unset) or number (group 1), as they follow each other in a valid document."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """Either a capture name, or a dotted path into a JSON object payload."""

    capture: str | None
    path: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, captures: tuple[str, ...]) -> KeySpec:
        if text.startswith(PAYLOAD_PREFIX):
            path = tuple(text[len(PAYLOAD_PREFIX):].split("."))
            if not all(path):
                raise ValueError(f"{text!r}: payload path has an empty part")
            return cls(capture=None, path=path)
        if text in captures:
            return cls(capture=text)
        named = ", ".join(captures) if captures else "none"
        raise ValueError(f"{text!r} is neither a capture of the match filter (captures: {named}) nor payload.<path>")

    @property
    def needs_payload(self) -> bool:
        return self.capture is None

    def __str__(self) -> str:
        return self.capture if self.capture is not None else PAYLOAD_PREFIX + ".".join(self.path)

    def extract(self, captures: Mapping[str, str], payload: bytes) -> str:
        """The key of one message; raises BadKey saying why there is none."""
        key = captures[self.capture] if self.capture is not None else self._from_payload(payload)
        problem = key_problem(key)
        if problem is not None:
            raise BadKey(problem)
        return key

    def _from_payload(self, payload: bytes) -> str:
        value = self._walk(payload)
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value != 0:
            return str(value)  # the digits as written ("-0" is the one int written otherwise)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            literal = self._walk(_quoted_numbers(payload))
            assert isinstance(literal, str)
            return literal
        raise BadKey(f"{self}: field is {type(value).__name__}, not a string or number")

    def _walk(self, payload: bytes) -> Any:
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            if "infinity" not in str(error):  # "number is infinity when parsed as double": JSON, for all that
                raise BadKey(f"payload is not JSON: {error}") from None
            try:
                value = orjson.loads(_quoted_numbers(payload))
            except orjson.JSONDecodeError as error:
                raise BadKey(f"payload is not JSON: {error}") from None
        for part in self.path:
            if not isinstance(value, dict):
                raise BadKey(f"{self}: payload has no object where {part!r} should be")
            if part not in value:
                raise BadKey(f"{self}: field absent")
            value = value[part]
        return value


def _quoted_numbers(payload: bytes) -> bytes:
    """``payload`` with every number written as a string of its text; strings and the rest as they were."""
    return _STRING_OR_NUMBER.sub(_quote_number, payload)


def _quote_number(token: re.Match[bytes]) -> bytes:
    return token[0] if token[1] is None else b'"' + token[1] + b'"'
