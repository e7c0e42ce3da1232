"""The wire: a sans-I/O MQTT 3.1.1 and 5 client session, its codec, and a threaded client on it.

``Session`` (session.py) turns calls into bytes and bytes into events and does no I/O; ``codec``
encodes and decodes packets; ``events`` holds the frozen values both speak; ``net.open_socket``
opens the TCP or TLS connection; ``client.Client`` drives a session on a thread of its own for
workers and tools. Errors say whose fault: ``LocalProtocolError`` (ours) or ``RemoteProtocolError``
(the broker's).
"""

from .codec import MQTT_5, MQTT_311, encode_user_properties, user_properties
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
                     BadPublish,
                     ConnAck,
                     Disconnect,
                     Event,
                     Oversized,
                     PingResp,
                     PubAck,
                     Publish,
                     SubAck,
                     Subscription,
                     UnsubAck,
                     Will,
)
from .session import Session

__all__ = [
    "MQTT_311", "MQTT_5", "BadPublish", "ConnAck", "Disconnect", "Event", "LocalProtocolError", "Oversized",
    "PingResp", "ProtocolError", "PubAck", "Publish", "RemoteProtocolError", "Session", "SubAck", "Subscription",
    "UnsubAck", "Will", "encode_user_properties", "user_properties",
]
