"""``HeldQueues`` keeps its count and size true through every change (a property test against plain sums)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mqttlb.core.held import HeldQueues

NAMES = st.sampled_from(["gpu", "default", "w1", "w2"])
STEPS = st.lists(st.one_of(
    st.tuples(st.just("append"), NAMES, st.binary(max_size=40)),
    st.tuples(st.just("popleft"), NAMES),
    st.tuples(st.just("pop"), NAMES),
    st.tuples(st.just("open"), NAMES),
    st.tuples(st.just("replace"), NAMES, st.lists(st.binary(max_size=40), max_size=4)),
    st.tuples(st.just("take_all"),),
), max_size=60)


@given(STEPS)
def test_count_and_size_are_the_sums_of_the_queues(steps: list[tuple[object, ...]]) -> None:
    queues: HeldQueues[bytes] = HeldQueues(len)
    for step in steps:
        match step:
            case ("append", str(name), bytes(item)):
                queues.append(name, item)
            case ("popleft", str(name)):
                if queues.get(name):
                    queues.popleft(name)
            case ("pop", str(name)):
                queues.pop(name)
            case ("open", str(name)):
                queues.open(name)
            case ("replace", str(name), list(items)):
                queues.replace(name, items)
            case ("take_all",):
                queues.take_all()
        held = [item for _, queue in queues.items() for item in queue]
        assert (queues.count, queues.size) == (len(held), sum(map(len, held)))


def test_queues_keep_their_order_and_names_go_only_when_asked() -> None:
    queues: HeldQueues[bytes] = HeldQueues(len)
    queues.append("gpu", b"a")
    queues.append("gpu", b"bb")
    queues.open("w1")
    assert queues.popleft("gpu") == b"a" and list(queues.names()) == ["gpu", "w1"]
    assert queues.popleft("gpu") == b"bb" and "gpu" in queues.names()  # empty, still there
    assert list(queues.pop("gpu")) == [] and "gpu" not in queues.names()
    queues.replace("w1", [b"x", b"yy"])
    assert (queues.count, queues.size) == (2, 3)
    assert queues.take_all() == [b"x", b"yy"] and list(queues.names()) == []
