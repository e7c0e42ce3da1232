"""Logging set-up and rate limiting, so a flood of bad input cannot flood the log."""

from __future__ import annotations

import json
import logging
import sys


class RateLimited:
    """Logs at most one line per ``key`` every ``interval`` seconds, counting the rest.

    Keys come from remote input (worker ids, topics), so at most ``MAX_KEYS`` are remembered: past them, keys
    not heard from within the interval are forgotten, and while more than that many are active at once the
    newcomers share one line per interval. (Forgetting them all at once instead let a flood of more than
    ``MAX_KEYS`` ids log a line each, every time.)
    """

    MAX_KEYS = 1000
    OVERFLOW = "\0overflow"

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def info(self, key: str, now: float, message: str, *args: object) -> None:
        self._log(logging.INFO, key, now, message, args, None)

    def warning(self, key: str, now: float, message: str, *args: object) -> None:
        self._log(logging.WARNING, key, now, message, args, None)

    def error(self, key: str, now: float, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        """As ``warning``, at error level and with a traceback when ``exc_info`` is given."""
        self._log(logging.ERROR, key, now, message, args, exc_info)

    def _log(self, level: int, key: str, now: float, message: str, args: tuple[object, ...],
             exc_info: BaseException | None) -> None:
        if key not in self._last and len(self._last) >= self.MAX_KEYS:
            self._forget(now)
            if len(self._last) >= self.MAX_KEYS:
                key = self.OVERFLOW
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last.pop(key, None)  # to the end: the table stays in the order of the lines logged
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} more like it suppressed)"
        self._logger.log(level, message, *args, exc_info=exc_info)

    def _forget(self, now: float) -> None:
        """Forget the keys not logged within the interval, oldest first (what they suppressed goes with them)."""
        while self._last:
            key, last = next(iter(self._last.items()))
            if now - last < self._interval:
                return
            del self._last[key]
            self._suppressed.pop(key, None)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
