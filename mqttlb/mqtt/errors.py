"""Whose fault a protocol failure is, as h11 says it: ours, or the broker's.

``LocalProtocolError``: the caller asked the session for something MQTT forbids (a publish before the
CONNACK, a topic name with a wildcard, a string with a NUL, a packet over the broker's Maximum Packet
Size); nothing was sent and the connection is as good as before. ``RemoteProtocolError``: the broker sent
bytes that are not MQTT, or not what a broker may send; the session is broken and the caller closes the
connection.
"""


class ProtocolError(Exception):
    """An MQTT rule was broken."""


class LocalProtocolError(ProtocolError):
    """Our caller misused the session: fix the call; the connection is unharmed."""


class PacketTooLarge(LocalProtocolError):
    """A PUBLISH over the broker's Maximum Packet Size: not sent, for the broker would drop the connection over
    it. The broker names its limit, which any reconnect may change, so its caller decides what becomes of it."""


class RemoteProtocolError(ProtocolError):
    """The broker broke the protocol: close the connection."""
