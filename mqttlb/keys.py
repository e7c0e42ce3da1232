"""Routing keys: where a route finds a message's device id, and checking it.

A key comes from a topic capture (``devices/{device}/telemetry``) or from a
field of a JSON payload (``payload.meta.id``). JSON is parsed only for payload
keys; the caller checks the payload size first. Whatever comes out is checked
with ``topics.key_problem`` so it can never make a topic the broker rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import orjson

from .errors import BadKey
from .topics import key_problem

PAYLOAD_PREFIX = "payload."


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
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            raise BadKey(f"payload is not JSON: {error}") from None
        for part in self.path:
            if not isinstance(value, dict):
                raise BadKey(f"{self}: payload has no object where {part!r} should be")
            if part not in value:
                raise BadKey(f"{self}: field absent")
            value = value[part]
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise BadKey(f"{self}: field is {type(value).__name__}, not a string or number")
