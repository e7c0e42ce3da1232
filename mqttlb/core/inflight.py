"""At-least-once, in one place: when an inbound message is acknowledged, and what is forgotten.

Rule 1. An inbound QoS 1 message is acknowledged only once what became of it
        is settled: the broker acknowledged its forward or its dead letter (a
        QoS 0 forward is settled once written: the route asked for no more).
Rule 2. The window: at most ``limit`` inbound messages are unsettled, and no
        more than the broker takes unacknowledged from our publishing
        connection (its Receive Maximum). At the limit the loop stops reading
        the routing connection, and TCP holds the broker back: Mosquitto 2.0
        does not keep to our own Receive Maximum once acknowledgements flow.
Rule 3. An acknowledgement goes only on the connection the message came on.
        After a reconnect the broker sends an unacknowledged message again,
        so a message of an earlier connection is settled without one.
Rule 4. When the routing connection goes, the messages held for a worker are
        forgotten (the broker sends them again); their forwards in flight
        finish and fall under rule 3.
Rule 5. When the publishing connection goes, what was in flight on it is
        published again, by us and in order, on the next one (never by a
        library that would send a PUBLISH the broker refuses again for ever),
        except the message the poison guard names (``poison``): it is
        quarantined.

Messages taken from a departed worker's or router's session (``reclaim``)
follow rules 1 and 3 on their own connection: their receipt names it
(``Receipt.source``), and ``reclaim`` counts them and their generation, so
a reclaim never takes room in the routing connection's window.

Pure: receipts and generations are values; the transport does the sending.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from .poison import PoisonGuard


class Receipt(NamedTuple):
    """What acknowledging an inbound message takes, tied to its connection (rule 3). A named tuple: one is
    made for every message, and a frozen dataclass costs twice as much to make."""

    generation: int
    packet_id: int
    qos: int
    properties: bytes
    """The message's MQTT 5 properties as they came, encoded (empty with MQTT 3.1.1): its forward carries them."""
    source: int = 0
    """0: the routing connection; else the reclaim (``reclaim``) whose connection took it, which settles it
    by its own count (the window here is the routing connection's)."""


if TYPE_CHECKING:
    def receipt_of(fields: tuple[int, int, int, bytes, int], /) -> Receipt:
        """``Receipt(*fields)`` at half the cost, for the hot path: a named tuple's own constructor runs a
        ``__new__`` written in Python that only calls ``tuple.__new__``."""
else:
    receipt_of = partial(tuple.__new__, Receipt)


Ref = TypeVar("Ref", bound=Hashable)


class InFlight(Generic[Ref]):
    """The router's inbound messages between arrival and acknowledgement; see the module docstring."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.unsettled = 0
        """Taken in and not yet settled: held for a worker, or with a forward or dead letter on its way."""
        self.peak = 0
        self.generation = 0
        """The routing connection's, for rule 3."""
        self._poison: PoisonGuard[Ref] = PoisonGuard()

    def room(self, publish_window: int) -> int:
        """How many more inbound messages may be taken now (rule 2)."""
        return min(self.limit, publish_window) - self.unsettled

    def took(self, count: int) -> None:
        self.unsettled += count
        if self.unsettled > self.peak:
            self.peak = self.unsettled

    def settle(self, generation: int, qos: int) -> bool:
        """A message's fate is settled (rule 1): whether to acknowledge it now (rule 3)."""
        self.unsettled -= 1
        return qos > 0 and generation == self.generation

    def settle_all(self, receipts: Sequence[Receipt]) -> list[int]:
        """``settle`` for the routing connection's ``receipts`` together: the packet ids to acknowledge now."""
        self.unsettled -= len(receipts)
        generation = self.generation
        return [receipt.packet_id for receipt in receipts if receipt.qos and receipt.generation == generation]

    def connected(self, generation: int) -> None:
        self.generation = generation

    def forgot(self, count: int) -> None:
        """``count`` held messages of a lost routing connection will come again (rule 4)."""
        self.unsettled -= count

    def dropped(self, in_flight: Sequence[Ref | None], suspect: bool) -> Ref | None:
        """The publishing connection went with ``in_flight`` unacknowledged (rule 5): the message to quarantine."""
        return self._poison.dropped(in_flight, suspect)
