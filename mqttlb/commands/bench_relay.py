"""The relay anyone could write in ten minutes with paho: what ``mqttlb bench`` measures mqttlb against.

Subscribe, take the device id from the JSON payload, hash it onto a worker,
publish in ``on_message``. No health, no dead letters, no acknowledgement
tied to the forward (paho acknowledges QoS 1 as the callback returns). Run
as ``python -m mqttlb.commands.bench_relay HOST PORT QOS WORKER...``.
"""

from __future__ import annotations

import json
import signal
import sys
import zlib
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def main(argv: list[str]) -> None:
    host, port, qos, workers = argv[0], int(argv[1]), int(argv[2]), argv[3:]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-relay", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe("bench/in", qos)

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        device = json.loads(message.payload)["device"]
        worker = workers[zlib.crc32(device.encode()) % len(workers)]
        client.publish(f"mqttlb/workers/{worker}/in/{message.topic}", message.payload, qos)

    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect(host, port)
    client.loop_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
