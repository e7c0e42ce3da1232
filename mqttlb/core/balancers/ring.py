"""``ring``: the classic hash ring with virtual nodes, kept up to date in place and bounded in size.

A key goes to the owner of the first point at or after its hash (BLAKE2b, 64
bits), wrapping around; points of equal hash are ordered by their owner's id.
Worker ``w`` of weight ``x`` owns the points ``hash("w\\0i")`` for ``i`` below
``max(1, round(virtual_nodes * min(x, MAX_WEIGHT) / scale))``: they depend on
its own id and weight alone, so a join moves keys only to the newcomer and a
leave only the leaver's, and a weight that grows adds points (it never moves
the ones it had).

Why it is not rebuilt on every change: the ring is sorted once, and a change
hashes only the points of the workers that changed, removes theirs and merges
the new ones in (numpy, linear in the ring but no Python work per point). A
rebuild of 160 points a worker at 1,000 workers took about half a second of the
router's loop for every join; at weight 100 a minute.

Why ``scale``: every weight a heartbeat may announce is safe for every
algorithm, and at ``MAX_WEIGHT`` a worker owns 100 times ``virtual_nodes``
points. 10,000 workers (a pool's default ``max_workers``) of weight 100 would
be 160 million points: gigabytes and a quarter of an hour of hashing. So the
ring holds at most ``MAX_POINTS``: ``scale`` is the least power of two that
keeps the total under it. It is 1 in any ordinary pool, which then keeps the
exact mapping the ring always had. Crossing a power of two halves (or
doubles) every worker's points, and keys then move between workers that stay:
only a pool whose total weight crosses such a bound sees it.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from .base import Balancer, checked, int_option, reject_unknown
from .rendezvous import Hashes, stable_hash, stable_hashes

__all__ = ["Ring"]

Slots = npt.NDArray[np.int32]


class Ring(Balancer):
    """A hash ring with virtual nodes; see the module docstring."""

    name = "ring"
    needs_key = True
    DEFAULT_VIRTUAL_NODES: ClassVar[int] = 160
    MAX_VIRTUAL_NODES: ClassVar[int] = 10_000
    MAX_WEIGHT: ClassVar[float] = 100.0
    MAX_POINTS: ClassVar[int] = 1 << 21
    """Points on the ring at most (24 MiB of arrays, and as much again of each worker's points)."""
    LIST_UP_TO: ClassVar[int] = 1 << 18
    """Rings up to this many points (1,600 workers of weight 1) are searched in a list of Python ints (12 MiB at
    most; a search costs 0.3 µs), larger ones in the array itself (0.9 µs), which costs no memory of its own."""

    def __init__(self, *, rng: random.Random | None = None, **options: object) -> None:
        reject_unknown(self.name, options, ("virtual_nodes",))
        self.virtual_nodes = int_option(options, "virtual_nodes", self.DEFAULT_VIRTUAL_NODES, 1,
                                        self.MAX_VIRTUAL_NODES)
        self.scale = 1
        self._weights: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._points: dict[str, Hashes] = {}
        """Worker -> the hashes of its points, point ``i`` at ``i``."""
        self._names: list[str] = []
        """Slot -> worker; the ring's owners are slots, so a change renumbers nothing."""
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._hashes: Hashes = np.empty(0, dtype=np.uint64)
        self._owners: Slots = np.empty(0, dtype=np.int32)
        self._search: Sequence[int] = []
        self._owner_of: Sequence[int] = []

    def __len__(self) -> int:
        """Points on the ring."""
        return len(self._hashes)

    def update(self, workers: Mapping[str, float]) -> None:
        weights = checked(workers)
        if weights == self._weights:
            return
        wanted = {w: self.virtual_nodes * min(weight, self.MAX_WEIGHT) for w, weight in weights.items()}
        scale, counts = self._scaled(wanted)
        changed = [w for w in counts.keys() | self._counts.keys() if counts.get(w) != self._counts.get(w)]
        self._weights = weights
        self._counts = counts
        if scale != self.scale or sum(counts.get(w, 0) for w in changed) > len(self._hashes) // 2:
            self.scale = scale
            self._rebuild()
        else:
            self._replace(changed)
        self._search = self._hashes.tolist() if len(self._hashes) <= self.LIST_UP_TO else self._hashes.data
        self._owner_of = self._owners.data

    def pick(self, key: str | None) -> str | None:
        if key is None:
            raise ValueError("ring needs a key")
        search = self._search
        if not search:
            return None
        i = bisect.bisect_left(search, stable_hash(key))
        return self._names[self._owner_of[i if i < len(search) else 0]]

    def _scaled(self, wanted: Mapping[str, float]) -> tuple[int, dict[str, int]]:
        """The least power-of-two scale whose counts of points add up to at most ``MAX_POINTS``, and the counts."""
        scale = 1
        while True:
            counts = {w: max(1, round(points / scale)) for w, points in wanted.items()}
            if sum(counts.values()) <= self.MAX_POINTS or scale >= 1 << 40:  # past it, one point a worker
                return scale, counts
            scale *= 2

    def _points_of(self, worker: str) -> Hashes:
        """``worker``'s points at its count, hashing only those it did not have."""
        count, had = self._counts[worker], self._points.get(worker)
        if had is not None and len(had) >= count:
            points = had[:count].copy() if len(had) > count else had
        else:
            start = 0 if had is None else len(had)
            more = stable_hashes([f"{worker}\0{i}" for i in range(start, count)])
            points = more if had is None else np.concatenate([had, more])
        self._points[worker] = points
        return points

    def _replace(self, changed: list[str]) -> None:
        """Take the changed workers' points off the ring and merge their new ones in."""
        gone = [self._slots[w] for w in changed if w in self._slots]
        if gone:
            keep = ~np.isin(self._owners, gone)
            self._hashes, self._owners = self._hashes[keep], self._owners[keep]
        hashes, owners = self._placed([w for w in changed if w in self._counts])
        order = np.argsort(hashes, kind="stable")
        hashes, owners = hashes[order], owners[order]
        at = np.searchsorted(self._hashes, hashes)
        self._hashes, self._owners = np.insert(self._hashes, at, hashes), np.insert(self._owners, at, owners)
        self._order_ties()

    def _rebuild(self) -> None:
        """Place every worker's points afresh (a new scale, or most of the ring changed)."""
        hashes, owners = self._placed(sorted(self._counts))
        order = np.argsort(hashes, kind="stable")
        self._hashes, self._owners = hashes[order], owners[order]
        self._order_ties()

    def _placed(self, workers: list[str]) -> tuple[Hashes, Slots]:
        """The points of ``workers`` (now in the pool) and their slots, unsorted; slots of the departed freed."""
        for worker in list(self._slots):
            if worker not in self._counts:
                self._release(worker)
        points = [self._points_of(w) for w in workers]
        slots = [self._slot(w) for w in workers]
        if not points:
            return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int32)
        return (np.concatenate(points),
                np.repeat(np.array(slots, dtype=np.int32), [len(p) for p in points]))

    def _slot(self, worker: str) -> int:
        slot = self._slots.get(worker)
        if slot is None:
            slot = self._free.pop() if self._free else len(self._names)
            if slot == len(self._names):
                self._names.append(worker)
            self._names[slot] = worker
            self._slots[worker] = slot
        return slot

    def _release(self, worker: str) -> None:
        """Forget a worker that left: its slot and its points."""
        self._free.append(self._slots.pop(worker))
        self._points.pop(worker, None)

    def _order_ties(self) -> None:
        """Points of equal hash go in their owners' id order (what sorting (hash, id) pairs gave)."""
        hashes, owners, names = self._hashes, self._owners, self._names
        for start in np.flatnonzero(hashes[1:] == hashes[:-1]).tolist():
            stop = start + 1
            while stop < len(hashes) and hashes[stop] == hashes[start]:
                stop += 1
            owners[start:stop] = sorted(owners[start:stop].tolist(), key=names.__getitem__)
