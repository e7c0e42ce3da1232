"""``python -m mqttlb.commands.bench_codec``: the session's cost per packet on the router's hot path, in microseconds.

A micro benchmark, not a test: inbound PUBLISH decode (64 KiB buffers of small packets, as one ``recv``
brings them), outbound PUBLISH encode (topic already encoded, and as a checked str), PUBACK both ways.
"""

from __future__ import annotations

import time

from ..mqtt import codec
from ..mqtt.session import Session

TOPIC = b"mqttlb/workers/w1/in/devices/dev-0001/telemetry"
PAYLOAD = b'{"device":"dev-0001","seq":12345,"ts":1700000000.123}'


def _connected(protocol: int) -> Session:
    session = Session(protocol)
    session.connect("bench", clean_start=True, keepalive=30)
    session.receive_data(codec.encode_connack(protocol, False))
    session.events()
    return session


def main() -> None:
    for protocol in (codec.MQTT_5, codec.MQTT_311):
        session = _connected(protocol)
        properties = codec.encode_user_properties([("mqttlb-key", "dev-0001")]) if protocol == codec.MQTT_5 else b""
        one = codec.encode_publish(protocol, b"devices/dev-0001/telemetry", PAYLOAD, 1, 17, properties=properties)
        buffer = one * (65536 // len(one))
        count = 300 * (65536 // len(one))
        start = time.perf_counter()
        for _ in range(300):
            session.receive_data(buffer)
            session.events()
        inbound = (time.perf_counter() - start) / count * 1e6
        rounds = 100_000
        start = time.perf_counter()
        for _ in range(rounds):
            session.publish(TOPIC, PAYLOAD, 1, properties=properties)
            session.receive_data(codec.encode_puback(protocol, session._next_id - 1))
            session.events()
        qos1 = (time.perf_counter() - start) / rounds * 1e6
        text = TOPIC.decode()
        start = time.perf_counter()
        for _ in range(rounds):
            session.publish(text, PAYLOAD, 0, properties=properties)
        qos0 = (time.perf_counter() - start) / rounds * 1e6
        start = time.perf_counter()
        for packet_id in range(1, rounds + 1):
            session.puback(packet_id % 65535 + 1)
        puback = (time.perf_counter() - start) / rounds * 1e6
        print(f"MQTT {'5' if protocol == codec.MQTT_5 else '3.1.1'} ({len(one)}-byte packets): "
              f"inbound PUBLISH decode {inbound:.2f} µs; outbound QoS 1 PUBLISH encode + its PUBACK decoded "
              f"{qos1:.2f} µs; QoS 0 PUBLISH encode with a checked str topic {qos0:.2f} µs; PUBACK encode "
              f"{puback:.2f} µs")


if __name__ == "__main__":
    main()
