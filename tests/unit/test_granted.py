"""What a SUBACK did not grant, said per filter: a refused heartbeat subscription looked like an empty pool, and a
route granted QoS 0 for QoS 1 silently gave up at-least-once."""

from __future__ import annotations

from mqttlb.mqtt.events import Subscription
from mqttlb.transport import ungranted

ASKED = [Subscription("devices/+/telemetry", 1), Subscription("devices/+/logs/#", 0), Subscription("jobs/+", 1)]


def test_everything_granted_says_nothing() -> None:
    assert ungranted(ASKED, (1, 0, 1)) == ([], [])
    assert ungranted(ASKED, (2, 1, 1)) == ([], [])  # more than asked takes nothing away


def test_refused_and_lowered_filters_are_named_with_what_the_broker_said() -> None:
    refused, lowered = ungranted(ASKED, (0x87, 0, 0))
    assert refused == ["devices/+/telemetry (Not authorized, 0x87)"]
    assert lowered == ["jobs/+ QoS 0 (asked 1)"]


def test_filters_a_short_suback_leaves_unanswered_count_as_refused() -> None:
    refused, lowered = ungranted(ASKED, (1,))
    assert refused == [f"{f} (not answered: the SUBACK has 1 codes for 3 filters)" for f in
                       ("devices/+/logs/#", "jobs/+")]
    assert lowered == []
