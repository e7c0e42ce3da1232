"""The at-least-once rules of mqttlb/inflight.py, one test each, without a broker."""

from __future__ import annotations

from mqttlb.core.inflight import InFlight, Receipt


def test_rule_1_a_message_counts_until_it_is_settled() -> None:
    window: InFlight[str] = InFlight(limit=10)
    window.took(1)
    window.took(1)
    assert window.unsettled == 2 and window.peak == 2
    window.settle(0, 1)
    assert window.unsettled == 1 and window.peak == 2


def test_rule_2_the_window_is_the_smaller_of_ours_and_the_brokers() -> None:
    window: InFlight[str] = InFlight(limit=10)
    for _ in range(4):
        window.took(1)
    assert window.room(publish_window=65535) == 6
    assert window.room(publish_window=5) == 1
    for _ in range(6):
        window.took(1)
    assert window.room(publish_window=65535) == 0


def test_rule_3_only_the_connection_it_came_on_acknowledges() -> None:
    window: InFlight[str] = InFlight(limit=10)
    window.connected(1)
    window.took(1)
    window.took(1)
    window.connected(2)  # a reconnect: the broker sends the first connection's messages again
    assert window.settle(1, 1) is False
    window.took(1)
    assert window.settle(2, 1) is True
    window.took(1)
    assert window.settle(2, 0) is False  # QoS 0: nothing to acknowledge


def test_rules_1_and_3_for_many_settled_together() -> None:
    window: InFlight[str] = InFlight(limit=10)
    window.connected(1)
    window.took(2)
    window.connected(2)
    window.took(3)
    receipts = [Receipt(1, 11, 1, b""), Receipt(2, 21, 1, b""), Receipt(2, 22, 0, b""), Receipt(2, 23, 1, b""),
                Receipt(1, 12, 1, b"")]
    assert window.settle_all(receipts) == [21, 23]  # this connection's, at QoS 1, in order
    assert window.unsettled == 0


def test_rule_4_forgotten_messages_leave_the_window() -> None:
    window: InFlight[str] = InFlight(limit=10)
    for _ in range(5):
        window.took(1)
    window.forgot(3)
    assert window.unsettled == 2 and window.room(65535) == 8


def test_rule_5_the_poison_guard_names_the_message_first_in_flight_at_two_drops() -> None:
    window: InFlight[str] = InFlight(limit=10)
    assert window.dropped(["a", "p", "b"], suspect=True) is None
    assert window.dropped(["p", "b"], suspect=True) == "p"
