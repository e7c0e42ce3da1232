"""``service.settle_heap``: the objects alive at start-up are kept out of full collections, and freed by the next."""

from __future__ import annotations

import gc
import weakref

from mqttlb.service import settle_heap


class Node:
    def __init__(self) -> None:
        self.itself = self  # a cycle: only the cyclic collector frees it


def test_what_is_alive_is_frozen_and_the_next_call_collects_what_died_meanwhile() -> None:
    try:
        node = Node()
        alive = weakref.ref(node)
        settle_heap()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert alive() is not None  # frozen: a full collection does not walk it
        settle_heap()
        assert alive() is None
    finally:
        gc.unfreeze()
