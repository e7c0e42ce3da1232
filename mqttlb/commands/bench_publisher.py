"""A raw MQTT 3.1.1 publisher for the benches: prebuilt PUBLISH packets written to a socket.

The benches measure the router, so what feeds it must cost next to nothing:
``mosquitto_pub -l`` has one topic per run and does not read its socket while
lines keep coming (at QoS 1 it would hold messages back itself), and a paho
client spends tens of microseconds of Python on each publish: at the rates the
benches need, half a core of a two-core machine, taken from the systems being
measured. This client builds packets with a few byte operations and writes
many with one system call.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from .broker import PrivateBroker

WINDOW = 10_000
"""QoS 1 publishes a burst leaves unacknowledged at most (packet ids must not wrap in flight)."""
PACE_STEP = 0.0002
"""Seconds between a paced publisher's writes: each writes the messages that have come due."""


# The raw publisher's packets (MQTT 3.1.1): pure, so the tests check them byte for byte.

def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str) -> bytes:
    """CONNECT, clean session, no keepalive (so the broker never expects a PINGREQ mid-burst)."""
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string(client_id)
    return b"\x10" + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int = 0, retain: bool = False) -> bytes:
    body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([0x30 | qos << 1 | retain]) + remaining_length(len(body)) + body


def packet_id(n: int) -> int:
    """The packet id of the ``n``-th publish (from 0): 1, 2, ... 65535, 1, ...: never 0."""
    return n % 65535 + 1


def packet_ids() -> Iterator[int]:
    """``packet_id`` of 0, 1, 2, ...: for publishes made one after another."""
    return map(packet_id, itertools.count())


class RawPublisher:
    """One MQTT 3.1.1 connection that writes prebuilt PUBLISH packets; at QoS 1 it counts PUBACKs (4 bytes each)."""

    def __init__(self, broker: PrivateBroker, client_id: str) -> None:
        self._sock = socket.create_connection((broker.host, broker.port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(connect_packet(client_id))
        connack = self._recv_exactly(4)
        if connack[:2] != b"\x20\x02" or connack[3] != 0:
            raise RuntimeError(f"the broker refused the bench publisher: CONNACK {connack.hex()}")

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the bench publisher's connection")
            data += chunk
        return data

    def send(self, packets: Sequence[bytes], qos: int) -> None:
        """All of ``packets``; at QoS 1, returns once every one is acknowledged."""
        if qos == 0:
            self._sock.sendall(b"".join(packets))
            return
        acked = [0]
        lock = threading.Condition()

        def read_acks() -> None:
            received = 0
            while received < 4 * len(packets):
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
                with lock:
                    acked[0] = received // 4
                    lock.notify()

        reader = threading.Thread(target=read_acks, daemon=True)
        reader.start()
        step = 500
        for start in range(0, len(packets), step):
            with lock:
                if not lock.wait_for(lambda start=start: start - acked[0] < WINDOW, 60):  # type: ignore[misc]
                    raise TimeoutError(f"the broker stopped acknowledging after {acked[0]} publishes")
            self._sock.sendall(b"".join(packets[start:start + step]))
        reader.join(60)
        if acked[0] < len(packets):
            raise ConnectionError(f"only {acked[0]} of {len(packets)} publishes acknowledged")

    def paced(self, packet: Callable[[int], bytes], rate: float, seconds: float) -> int:
        """Write ``packet(n)`` for n = 0, 1, ... on time, ``rate`` a second for ``seconds`` (``rate * seconds`` of
        them), reading and dropping the PUBACKs of QoS 1 ones as they come; how many were written."""
        start, n, last = time.monotonic(), 0, int(rate * seconds)
        while n < last:
            due = min(last, int((time.monotonic() - start) * rate))
            if n < due:
                self._sock.sendall(b"".join([packet(i) for i in range(n, due)]))
                n = due
            try:
                while self._sock.recv(65536, socket.MSG_DONTWAIT):
                    pass
            except BlockingIOError:
                pass
            time.sleep(PACE_STEP)
        return n

    def close(self) -> None:
        """DISCONNECT, then read to the broker's close: closing with its acknowledgements unread sends a reset,
        and the broker may then drop the publishes it has not read yet (the last of a run, now and then)."""
        try:
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT
            self._sock.shutdown(socket.SHUT_WR)
            self._sock.settimeout(5.0)
            while self._sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            self._sock.close()
