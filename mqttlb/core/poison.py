"""Which inbound message to quarantine when the broker keeps dropping the publishing connection.

The router checks every limit it can know before publishing (``limits``), but
brokers have limits it cannot know (NATS, EMQX, RabbitMQ: payload sizes, topic
rules, property rules). A broker that drops a client for a PUBLISH drops it
again when the same PUBLISH is sent again, for ever: one device would stop the
router, and its message, still unacknowledged, would stop the next router too.

The rules:

1. Only a drop that may be a refusal counts: not a session taken over, and not
   one where the routing connection went down too (a broker restart or a
   network failure take both; a refused PUBLISH takes only the connection it
   came on).
2. The publishes in flight at such a drop are suspects. They are sent again,
   in the order they were first sent.
3. At the next such drop, the first publish in flight (in sending order) that
   was a suspect at the previous one is the culprit: the broker handles a
   connection's packets in order and acknowledges each before reading the
   next, so the publishes before the culprit were acknowledged, and the ones
   after it were only waiting behind it.
4. The culprit's message is quarantined (a minimal ``poison`` dead letter, then
   acknowledged); if that dead letter is itself a culprit, the message is
   acknowledged and counted as lost. Nothing is sent again a third time.

Pure: it sees receipts (whatever identifies an inbound message), no sockets.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

Ref = TypeVar("Ref", bound=Hashable)


class PoisonGuard(Generic[Ref]):
    """Remembers what was in flight at the last drop that may have been a refusal."""

    def __init__(self) -> None:
        self._suspects: frozenset[Ref] = frozenset()

    def dropped(self, in_flight: Sequence[Ref | None], suspect: bool) -> Ref | None:
        """The broker dropped the connection with ``in_flight`` (in sending order) unacknowledged: the
        message to quarantine, if any. ``suspect`` is False for drops that cannot be a refusal (rule 1)."""
        if not suspect:
            return None
        culprit = next((ref for ref in in_flight if ref is not None and ref in self._suspects), None)
        self._suspects = frozenset(ref for ref in in_flight if ref is not None and ref != culprit)
        return culprit
