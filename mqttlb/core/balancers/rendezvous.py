"""Weighted rendezvous hashing whose cost stays flat as the fleet grows.

The mapping is that of ``consistent_hash``: each worker scores a key, the best
score wins. A worker's score is the pair (``f``, ``raw``): ``raw`` is a 64-bit
SplitMix64 mix of the key's and the worker's hashes, and
``f = ln(weight) - ln(-ln(u))`` with ``u`` uniform in (0, 1) from the top 52
bits of ``raw`` (the log of the usual ``weight / -ln(u)``: the best ``f`` wins
with odds proportional to the weight, and no finite weight, 1e308 or 5e-324,
overflows it). A full tie goes to the worker whose id sorts first. Scores
depend on the key, the worker and its weight only, so the mapping is a pure
function of the pool. When all weights are equal, ``f`` orders workers as
``raw`` does, and ``raw`` alone is compared.

What keeps it cheap with a thousand workers and a million devices:

- Scoring is vectorised with numpy from ``VECTOR_FROM`` workers on. Integer
  scores are exact; float scores within ``TOLERANCE`` of the best are scored
  again in plain Python, so numpy's ``log`` decides nothing on its own and every
  router agrees, numpy or not, whatever the machine.
- A pool of a few weights (slow start's steps, machines of two sizes) is
  scored a group of equal weights at a time: within a group ``f`` orders
  workers as ``raw`` does, so each group's best is found with integers, and
  only those few are scored in floats (or exactly, in Python).
- The keys of many messages (one read's worth) can be picked together, ahead
  of their ``pick``: one pass over a block of keys x every worker costs less
  than a pass per key, and hashing them together less than one by one.
- The cache remembers each device's key hash and winner. A change to the pool
  touches only devices that can move: a worker that joins or gains weight is
  scored against each cached winner (one vectorised pass), and only the devices
  of a worker that leaves or loses weight are scored again.
- The cache is bounded and evicts its oldest entry (FIFO) instead of emptying
  itself: a device still in use is scored again at most once per
  ``capacity`` new devices.

Sub-linear schemes (a skeleton tree, jump hash, AnchorHash, Maglev) were
weighed: none keeps the three promises at once for any set of worker ids:
exactly the newcomer's share moves, the mapping depends on the set only, and
shares are as even as the key sample.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from .base import checked

_MASK = (1 << 64) - 1
_TWO_52 = float(1 << 52)
# Operands as 0-d arrays: numpy turns a scalar (np.uint64 or int) into one on every call, at ~0.3 µs a call.
_M1, _M2, _12, _27, _30, _31, _33 = (np.array(value, dtype=np.uint64)
                                      for value in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 12, 27, 30, 31, 33))
_HALF, _TWO_52_ARRAY = np.array(0.5), np.array(_TWO_52)

VECTOR_FROM = 48
"""Pools of at least this many workers are scored with numpy; below, plain Python is quicker."""
TOLERANCE = 1e-9
"""Float scores closer than this to the best are compared again exactly (numpy's log is ~1e-13 off at worst)."""
BLOCK_CELLS = 1 << 15
"""Scores computed at once when many keys are scored: two buffers of this many fit the cache of one core."""
MAX_GROUPS = 16
"""Distinct weights up to which a pool's workers are scored a group of equal weights at a time."""
GROUP_SIZE_FOR_ONE = 64
"""Workers per group from which one key's group bests, ranked exactly in Python, cost less than ``f`` in numpy
for every worker."""
MAX_STEPS = 32
"""Changes to the pool in one update beyond which the cache is emptied rather than kept up to date."""

Hashes = npt.NDArray[np.uint64]
Indices = npt.NDArray[np.intp]


_EMPTY_BLAKE2B = hashlib.blake2b(digest_size=8)
"""Copied for each text: a copy hashes in two thirds of the time of a new ``blake2b`` (no parameters to parse)."""


def _digest(text: str) -> bytes:
    blake2b = _EMPTY_BLAKE2B.copy()
    blake2b.update(text.encode("utf-8", "surrogatepass"))
    return blake2b.digest()


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text``, the same in every process and Python version."""
    return int.from_bytes(_digest(text), "big")


def stable_hashes(texts: Sequence[str]) -> Hashes:
    """``stable_hash`` of each text, as an array."""
    return np.frombuffer(b"".join(map(_digest, texts)), dtype=">u8").astype(np.uint64)


def mix(key_hash: int, worker_seed: int) -> int:
    """The raw 64-bit score for a (key, worker) pair: a SplitMix64 finalizer over their XOR."""
    z = (key_hash ^ worker_seed) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def score(key_hash: int, worker_seed: int, log_weight: float) -> tuple[float, int]:
    """The exact score (f, raw) that ranks a worker for a key; see the module docstring."""
    raw = mix(key_hash, worker_seed)
    u = ((raw >> 12) + 0.5) / _TWO_52  # exact, and strictly inside (0, 1)
    return log_weight - math.log(-math.log(u)), raw


def premix(value: int) -> int:
    """The first step of ``mix``, which is linear over XOR: ``mix(k, s)`` finishes ``premix(k) ^ premix(s)``."""
    return value ^ (value >> 30)


def _unfinished(a: Hashes | int, b: Hashes, into: Hashes | None = None, spare: Hashes | None = None) -> Hashes:
    """``mix`` but its last step over arrays (broadcast) of premixed values, exact: numpy's uint64 arithmetic wraps
    as the mask does. In ``into``, with ``spare`` for scratch, when given (the shape of the result); else in new
    arrays.

    ``out`` is passed by position: numpy dispatches that as fast as an operator, and faster than ``out=``.
    """
    z = cast(Hashes, np.bitwise_xor(b, a, into))  # a Python int mixes in as uint64 (NEP 50)
    z *= _M1
    z ^= np.right_shift(z, _27, spare)
    z *= _M2
    return z


def _mixed(a: Hashes | int, b: Hashes, into: Hashes | None = None, spare: Hashes | None = None) -> Hashes:
    """``mix`` over arrays (broadcast) of premixed values; ``into`` and ``spare`` as for ``_unfinished``."""
    z = _unfinished(a, b, into, spare)
    z ^= np.right_shift(z, _31, spare)
    return z


def premix_many(values: Hashes) -> Hashes:
    return values ^ (values >> _30)


def _approximate(raw: Hashes, log_weights: npt.NDArray[np.float64] | float) -> npt.NDArray[np.float64]:
    """``f`` over arrays, to within ``TOLERANCE``.

    In place: a fresh array for each step costs more than the step, and over 10,000 workers page faults too.
    """
    u = (raw >> _12).astype(np.float64)
    u += _HALF
    u /= _TWO_52_ARRAY
    np.log(u, out=u)
    np.negative(u, out=u)
    np.log(u, out=u)
    return np.subtract(log_weights, u, out=u)


class Scratch:
    """Two buffers reused for blocks of scores: a new array for each block costs more than the arithmetic on it
    (its pages are faulted in afresh)."""

    def __init__(self) -> None:
        self._into: Hashes = np.empty(0, dtype=np.uint64)
        self._spare: Hashes = np.empty(0, dtype=np.uint64)

    def take(self, rows: int, columns: int) -> tuple[Hashes, Hashes]:
        """Two (rows, columns) arrays, their contents undefined."""
        cells = rows * columns
        if len(self._into) < cells:
            self._into, self._spare = np.empty(cells, dtype=np.uint64), np.empty(cells, dtype=np.uint64)
        return self._into[:cells].reshape(rows, columns), self._spare[:cells].reshape(rows, columns)


@dataclass(frozen=True, slots=True)
class WeightGroups:
    """A pool's workers grouped by weight, for pools of a few weights (slow start's steps, machines of two
    sizes). Within a group ``f`` orders workers as ``raw`` does, so each group's best is found with integers
    alone, and only the groups' bests are scored in floats: two logs for each group, not for each worker."""

    order: Indices
    """Worker indices by weight, then by index: each group a slice, in id order within it."""
    premixed: Hashes
    """``premix`` of each seed, in ``order``."""
    slices: tuple[tuple[int, int], ...]
    log_weights: npt.NDArray[np.float64]
    """One per group."""

    @classmethod
    def of(cls, log_weights: tuple[float, ...], premixed: Hashes) -> WeightGroups | None:
        """The groups of a pool with 2 to ``MAX_GROUPS`` distinct weights; else None."""
        if not 1 < len(set(log_weights)) <= MAX_GROUPS:
            return None
        order = sorted(range(len(log_weights)), key=lambda i: (log_weights[i], i))
        starts = [at for at in range(len(order)) if at == 0 or log_weights[order[at]] != log_weights[order[at - 1]]]
        return cls(np.array(order, dtype=np.intp), premixed[order],
                   tuple(zip(starts, [*starts[1:], len(order)], strict=True)),
                   np.array([log_weights[order[at]] for at in starts], dtype=np.float64))

    def bests(self, raw: Hashes) -> Indices:
        """For each row of ``raw`` (one key's scores, in ``order``), each group's best, as positions in ``order``.

        ``argmax`` takes the first of equal scores, the lowest index: the rank's tie-break.
        """
        best: Indices = np.empty((len(raw), len(self.slices)), dtype=np.intp)
        for group, (start, stop) in enumerate(self.slices):
            best[:, group] = raw[:, start:stop].argmax(axis=1) + start  # quicker than argmax(out=) on a column
        return best


@dataclass(frozen=True, slots=True)
class Pool:
    """The workers in id order, with what scoring needs of each."""

    names: tuple[str, ...]
    weights: Mapping[str, float]
    seeds: tuple[int, ...]
    log_weights: tuple[float, ...]
    equal: bool
    """All weights are equal: ``raw`` alone ranks the workers."""
    premixed: tuple[int, ...]
    """``premix`` of each seed."""
    premixed_array: Hashes
    log_weight_array: npt.NDArray[np.float64]
    groups: WeightGroups | None

    @classmethod
    def of(cls, weights: Mapping[str, float], seeds: Mapping[str, int] | None = None) -> Pool:
        """The pool of ``weights`` (as ``checked()`` returns them); ``seeds`` caches workers' hashes."""
        names = tuple(weights)
        hashes = tuple(seeds[w] if seeds and w in seeds else stable_hash(w) for w in names)
        logs = tuple(math.log(weights[w]) for w in names)
        premixed = tuple(premix(seed) for seed in hashes)
        return cls._made(names, weights, hashes, logs, premixed, np.array(premixed, dtype=np.uint64),
                         np.array(logs, dtype=np.float64))

    @classmethod
    def _made(cls, names: tuple[str, ...], weights: Mapping[str, float], seeds: tuple[int, ...],
              log_weights: tuple[float, ...], premixed: tuple[int, ...], premixed_array: Hashes,
              log_weight_array: npt.NDArray[np.float64]) -> Pool:
        return cls(names, weights, seeds, log_weights, len(set(weights.values())) <= 1, premixed, premixed_array,
                   log_weight_array, WeightGroups.of(log_weights, premixed_array))

    def changed(self, worker: str, weight: float | None) -> tuple[Pool, Indices]:
        """This pool with ``worker`` at ``weight`` or, if None, gone; and each old index's new one (-1: gone)."""
        at = bisect.bisect_left(self.names, worker)
        renumber: Indices = np.arange(len(self.names), dtype=np.intp)
        weights = dict(self.weights)
        if weight is None:
            del weights[worker]
            renumber[at] = -1
            renumber[at + 1:] -= 1
            return self._spliced(weights, at, at + 1, ()), renumber
        weights[worker] = weight
        if worker in self.weights:
            return self._spliced(weights, at, at + 1, (worker,)), renumber
        renumber[at:] += 1
        return self._spliced(weights, at, at, (worker,)), renumber

    def _spliced(self, weights: dict[str, float], start: int, stop: int, workers: tuple[str, ...]) -> Pool:
        """This pool with the workers in [start, stop) replaced by ``workers``, of ``weights``."""
        seeds = tuple(self.seeds[start] if start < stop else stable_hash(w) for w in workers)
        premixed = tuple(premix(seed) for seed in seeds)
        logs = tuple(math.log(weights[w]) for w in workers)
        return Pool._made(self.names[:start] + workers + self.names[stop:], weights,
                          self.seeds[:start] + seeds + self.seeds[stop:],
                          self.log_weights[:start] + logs + self.log_weights[stop:],
                          self.premixed[:start] + premixed + self.premixed[stop:],
                          np.concatenate([self.premixed_array[:start], np.array(premixed, dtype=np.uint64),
                                          self.premixed_array[stop:]]),
                          np.concatenate([self.log_weight_array[:start], np.array(logs, dtype=np.float64),
                                          self.log_weight_array[stop:]]))

    def rank(self, key_hash: int, i: int) -> tuple[float, int, int]:
        """Worker ``i``'s exact rank for a key: higher is better, and no two workers tie."""
        return (*score(key_hash, self.seeds[i], self.log_weights[i]), -i)

    def best(self, key_hash: int) -> int:
        """The index of the winning worker for a key."""
        if len(self.names) >= VECTOR_FROM:
            return self._best_vectorised(key_hash)
        best, best_raw = 0, -1
        if self.equal:
            key = premix(key_hash)
            for i, seed in enumerate(self.premixed):  # mix(), inlined: this loop is the cost of a pick
                z = ((key ^ seed) * 0xBF58476D1CE4E5B9) & _MASK
                z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
                raw = z ^ (z >> 31)
                if raw > best_raw:
                    best, best_raw = i, raw
            return best
        best_f = -math.inf
        for i, (seed, log_weight) in enumerate(zip(self.seeds, self.log_weights, strict=True)):
            f, raw = score(key_hash, seed, log_weight)
            if f > best_f or (f == best_f and raw > best_raw):
                best, best_f, best_raw = i, f, raw
        return best

    def _best_vectorised(self, key_hash: int) -> int:
        key = np.array(premix(key_hash), dtype=np.uint64)
        if self.equal:
            return self._best_unfinished(key_hash, _unfinished(key, self.premixed_array))
        if self.groups is not None and len(self.groups.slices) * GROUP_SIZE_FOR_ONE <= len(self.names):
            raw, order = _mixed(key, self.groups.premixed), self.groups.order  # each group's best, ranked exactly
            bests = [int(order[start + int(raw[start:stop].argmax())]) for start, stop in self.groups.slices]
            return max(bests, key=lambda i: self.rank(key_hash, i))
        f = _approximate(_mixed(key, self.premixed_array), self.log_weight_array)
        best = int(f.argmax())
        top = f.item(best)
        f[best] = -math.inf
        if f.item(f.argmax()) < top - TOLERANCE:  # a second argmax: cheaper than counting the near-best
            return best
        f[best] = top
        return max(np.flatnonzero(f >= top - TOLERANCE).tolist(), key=lambda i: self.rank(key_hash, i))

    def _best_unfinished(self, key_hash: int, z: Hashes) -> int:
        """The winner when all weights are equal, from ``z``, ``mix`` but its last step (``z ^ (z >> 31)``).

        That step leaves the top 31 bits alone, so the largest ``z`` wins unless another shares its top 31 bits
        (odds ~workers / 2**31): a second argmax rules that out for less than the step costs over every worker.
        """
        best = int(z.argmax())
        top = z.item(best)
        z[best] = 0
        if (z.item(z.argmax()) ^ top) >> 33:
            return best
        z[best] = top
        near = np.flatnonzero(z >> _33 == top >> 33).tolist()
        return max(near, key=lambda i: (mix(key_hash, self.seeds[i]), -i))

    def _best_of_groups(self, key_hashes: Hashes, raw: Hashes) -> Indices:
        """The winner for each key from ``raw``, its row of scores in ``groups.order``: each group's best by
        ``raw``, then the best of those by ``f``."""
        groups = cast(WeightGroups, self.groups)
        positions = groups.bests(raw)
        rows = np.arange(len(raw))[:, None]
        return self._best_scored(key_hashes, _approximate(raw[rows, positions], groups.log_weights),
                                 groups.order[positions])

    def _best_scored(self, key_hashes: Hashes, f: npt.NDArray[np.float64], workers: Indices) -> Indices:
        """For each key, the worker of its row of ``f`` (``workers`` names the worker of each cell) with the best
        ``f``: near-ties, found by a second max, are ranked exactly. ``f`` is used up."""
        rows = np.arange(len(f))
        chosen = f.argmax(axis=1)
        top = f[rows, chosen]
        winners: Indices = workers[rows, chosen]
        f[rows, chosen] = -math.inf
        for row in np.flatnonzero(f.max(axis=1) >= top - TOLERANCE).tolist():
            f[row, chosen[row]] = top[row]
            near = workers[row, f[row] >= top[row] - TOLERANCE].tolist()
            key_hash = int(key_hashes[row])
            winners[row] = max(near, key=lambda i: self.rank(key_hash, i))
        return winners

    def best_of_many(self, key_hashes: Hashes, scratch: Scratch | None = None) -> Indices:
        """``best`` for each key, a block of keys at a time (in ``scratch``'s buffers, if given)."""
        winners: Indices = np.empty(len(key_hashes), dtype=np.intp)
        step = max(1, BLOCK_CELLS // len(self.names))
        into, spare = (scratch or Scratch()).take(min(step, len(key_hashes)), len(self.names))
        for start in range(0, len(key_hashes), step):
            block = key_hashes[start:start + step]
            rows = len(block)
            keys = premix_many(block)[:, None]
            if self.groups is not None:
                raw = _mixed(keys, self.groups.premixed, into[:rows], spare[:rows])
                winners[start:start + rows] = self._best_of_groups(block, raw)
                continue
            raw = _mixed(keys, self.premixed_array, into[:rows], spare[:rows])
            if self.equal:
                winners[start:start + rows] = raw.argmax(axis=1)
                continue
            workers = np.broadcast_to(np.arange(len(self.names)), raw.shape)
            winners[start:start + rows] = self._best_scored(block, _approximate(raw, self.log_weight_array), workers)
        return winners

    def beats(self, challenger: int, key_hashes: Hashes, winners: Indices) -> npt.NDArray[np.bool_]:
        """For each key, whether worker ``challenger`` outranks that key's current winner."""
        keys = premix_many(key_hashes)
        raw = _mixed(self.premixed[challenger], keys)
        held = _mixed(self.premixed_array[winners], keys)
        if self.equal:
            return (raw > held) | ((raw == held) & (challenger < winners))  # type: ignore[no-any-return]
        gap = _approximate(raw, self.log_weights[challenger]) - _approximate(held, self.log_weight_array[winners])
        wins: npt.NDArray[np.bool_] = gap > TOLERANCE
        for row in np.flatnonzero(np.abs(gap) <= TOLERANCE).tolist():
            key_hash = int(key_hashes[row])
            wins[row] = self.rank(key_hash, challenger) > self.rank(key_hash, int(winners[row]))
        return wins


class Rendezvous:
    """The worker of each device, cached and kept true as the pool changes; see the module docstring."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.cache: dict[str, str] = {}
        """Device -> worker: the only lookup a cached pick makes."""
        self._pool = Pool.of({})
        self._keys: list[str] = []
        """Row -> device; the rows of the arrays below."""
        self._hashes: Hashes = np.empty(0, dtype=np.uint64)
        self._winners: Indices = np.empty(0, dtype=np.intp)
        """Row -> the index of its worker in ``_pool.names``."""
        self._oldest = 0
        """The row to evict next, once the cache is full."""
        self._scratch = Scratch()

    @property
    def pool(self) -> Pool:
        return self._pool

    def pick(self, key: str) -> str | None:
        worker = self.cache.get(key)
        if worker is not None:
            return worker
        pool = self._pool
        if not pool.names:
            return None
        key_hash = stable_hash(key)
        winner = pool.best(key_hash)
        self._remember(key, key_hash, winner)
        return pool.names[winner]

    def prefetch(self, keys: Sequence[str]) -> None:
        """Pick, together, those of ``keys`` not cached yet: the picks ``pick`` would make, each scored in one pass
        over a block of keys and every worker. When there are too few scores for numpy to pay, ``pick`` makes
        them, one at a time."""
        pool, cache = self._pool, self.cache
        new = list(dict.fromkeys([key for key in keys if key not in cache]))[:self.capacity]  # no row taken twice
        if len(new) * len(pool.names) < VECTOR_FROM:
            return
        hashes = stable_hashes(new)
        winners = pool.best_of_many(hashes, self._scratch)
        rows = self._rows_for(new)
        at = slice(rows.start, rows.stop) if isinstance(rows, range) else rows  # a slice is one step for numpy
        self._hashes[at] = hashes
        self._winners[at] = winners
        cache.update(zip(new, map(pool.names.__getitem__, winners.tolist()), strict=True))

    def update(self, workers: Mapping[str, float]) -> None:
        weights = checked(workers)
        old = self._pool.weights
        if weights == old:
            return
        steps = [w for w in weights if w not in old] + \
                [w for w in weights if w in old and weights[w] != old[w]] + \
                [w for w in old if w not in weights]  # joins first: no pool on the way is empty
        if not self._keys or not weights or len(steps) > MAX_STEPS:
            self._pool = Pool.of(weights, dict(zip(self._pool.names, self._pool.seeds, strict=True)))
            self._forget()
            return
        for worker in steps:  # one change at a time, each from a pool the cache is true for
            self._shift(worker, weights.get(worker))

    def _shift(self, worker: str, weight: float | None) -> None:
        """Bring the cache to the pool where ``worker`` alone changed: to ``weight``, or gone (None)."""
        rows = len(self._keys)
        previous = self._pool.weights.get(worker)
        pool, renumber = self._pool.changed(worker, weight)
        winners = renumber[self._winners[:rows]]
        hashes = self._hashes[:rows]
        self._pool = pool
        at = bisect.bisect_left(pool.names, worker)
        if weight is not None and (previous is None or weight > previous):  # joined, or gained weight
            moved = np.flatnonzero(winners != at)
            moved = moved[pool.beats(at, hashes[moved], winners[moved])]
            winners[moved] = at
        else:  # left (its devices are at -1 now), or lost weight: only its devices can move
            moved = np.flatnonzero(winners == (-1 if weight is None else at))
            winners[moved] = pool.best_of_many(hashes[moved], self._scratch)
        self._winners[:rows] = winners
        names, keys, cache = pool.names, self._keys, self.cache
        for row, winner in zip(moved.tolist(), winners[moved].tolist(), strict=True):
            cache[keys[row]] = names[winner]

    def _remember(self, key: str, key_hash: int, winner: int) -> None:
        row = self._row_for(key)
        self._hashes[row] = key_hash
        self._winners[row] = winner
        self.cache[key] = self._pool.names[winner]

    def _rows_for(self, keys: list[str]) -> range | list[int]:
        """The rows new, distinct ``keys`` take, in order, as ``_row_for`` gives them; at once, as a range, while
        they all fit in the free rows."""
        start = len(self._keys)
        if start + len(keys) > self.capacity:
            return [self._row_for(key) for key in keys]
        self._keys.extend(keys)
        while len(self._keys) > len(self._hashes):
            self._grow()
        return range(start, len(self._keys))

    def _row_for(self, key: str) -> int:
        """The row a new ``key`` takes: the next free one, or the oldest one's (forgetting that key)."""
        if len(self._keys) < self.capacity:
            row = len(self._keys)
            self._keys.append(key)
            if row == len(self._hashes):
                self._grow()
            return row
        row = self._oldest
        self._oldest = (row + 1) % self.capacity
        del self.cache[self._keys[row]]
        self._keys[row] = key
        return row

    def _grow(self) -> None:
        size = min(self.capacity, max(1024, 2 * len(self._hashes)))
        self._hashes = np.concatenate([self._hashes, np.empty(size - len(self._hashes), dtype=np.uint64)])
        self._winners = np.concatenate([self._winners, np.empty(size - len(self._winners), dtype=np.intp)])

    def _forget(self) -> None:
        self.cache.clear()
        self._keys.clear()
        self._oldest = 0


def preference(pool: Pool, key: str) -> Sequence[str]:
    """Every worker, best first: where ``key`` goes, and where it would go if they left."""
    key_hash = stable_hash(key)
    order = sorted(range(len(pool.names)), key=lambda i: pool.rank(key_hash, i), reverse=True)
    return [pool.names[i] for i in order]
