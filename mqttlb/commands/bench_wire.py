"""The least a relay on mqttlb's own MQTT session can do: what routing itself costs, by difference.

Subscribe, take the device id from the JSON payload, hash it onto a worker and
publish, on one connection driven by ``mqttlb.mqtt.link`` as the router's are.
At QoS 1 an inbound message is acknowledged once its forward is, as the router
does it; but there is no route table, no balancer, no health, no dead letter,
no stats and no window. ``mqttlb bench`` shows it beside ``mqttlb run``, so the
gap between the two is the routing. Run as
``python -m mqttlb.commands.bench_wire HOST PORT QOS WORKER...``.
"""

from __future__ import annotations

import select
import signal
import sys
import time
import zlib

import orjson

from ..core.config import BrokerSettings
from ..mqtt.events import PubAck, Publish, Subscription
from ..mqtt.link import Link


def main(argv: list[str]) -> None:
    host, port, qos, workers = argv[0], int(argv[1]), int(argv[2]), argv[3:]
    link = Link(BrokerSettings(host=host, port=port, client_id="bench-wire"), "bench-wire", persistent=False,
                receive_maximum=1000)
    link.enabled = True
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    inbound_of: dict[int, int] = {}
    """Forward packet id -> the inbound message's packet id, acknowledged with it."""
    subscribed = 0
    """The connection (link generation) the subscription was made on."""
    while not stopping:
        now = time.monotonic()
        if link.due(now):
            link.open(now)
        if link.sock is None:
            time.sleep(0.1)
            continue
        readable, _, _ = select.select([link.sock], [link.sock] if link.wants_write() else [], [], 0.5)
        for event in link.read(time.monotonic()) if readable else ():
            if type(event) is Publish:
                device = orjson.loads(event.payload)["device"]
                worker = workers[zlib.crc32(device.encode()) % len(workers)]
                packet_id, data = link.session.publish(f"mqttlb/workers/{worker}/in/{event.topic}".encode(),
                                                       event.payload, qos)
                link.send(data)
                if qos:
                    inbound_of[packet_id] = event.packet_id
            elif type(event) is PubAck:
                link.send(link.session.puback(inbound_of.pop(event.packet_id)))
        if link.connected and subscribed != link.generation:
            link.send(link.session.subscribe([Subscription("bench/in", qos)])[1])
            subscribed = link.generation
        link.keep_alive(time.monotonic(), reading=True)
        link.flush()
    link.close(2.0)


if __name__ == "__main__":
    main(sys.argv[1:])
