"""MQTT 5 reason codes in words, and a broker's refusal of a connection with what to do about it."""

from __future__ import annotations

NAMES = {
    0x00: "Success", 0x04: "Disconnect with Will Message", 0x10: "No matching subscribers",
    0x11: "No subscription existed", 0x80: "Unspecified error", 0x81: "Malformed Packet", 0x82: "Protocol Error",
    0x83: "Implementation specific error", 0x84: "Unsupported Protocol Version", 0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password", 0x87: "Not authorized", 0x88: "Server unavailable", 0x89: "Server busy",
    0x8A: "Banned", 0x8B: "Server shutting down", 0x8C: "Bad authentication method", 0x8D: "Keep Alive timeout",
    0x8E: "Session taken over", 0x8F: "Topic Filter invalid", 0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use", 0x92: "Packet Identifier not found", 0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid", 0x95: "Packet too large", 0x96: "Message rate too high", 0x97: "Quota exceeded",
    0x98: "Administrative action", 0x99: "Payload format invalid", 0x9A: "Retain not supported",
    0x9B: "QoS not supported", 0x9C: "Use another server", 0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported", 0x9F: "Connection rate exceeded", 0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported", 0xA2: "Wildcard Subscriptions not supported",
}
"""MQTT 5 (2.4) reason codes by value, as the specification names them."""
NO_MATCHING_SUBSCRIBERS = 0x10
"""A PUBACK's: the broker took the message, and nothing being subscribed, threw it away."""

_SEE_THE_LOG = "see the broker's log"
_FIXES = {
    0x84: "set broker.protocol to one the broker speaks (5 or 3.1.1)",
    0x85: "broker.client_id is not acceptable to the broker: choose another",
    0x86: "check broker.username and its password (password, password_file or password_env) against the "
          "broker's password file",
    0x87: "check broker.username and its password (password, password_file or password_env) against the "
          "broker's password file, and that the broker lets this user connect with this client id",
    0x8A: "the broker bans this client: ask its operator",
    0x88: "the broker is unavailable: it may be starting or overloaded",
    0x89: "the broker is busy: it may be overloaded",
    0x9F: "the broker limits how often a client may connect: wait",
    0x9A: "the broker takes no retained messages (Mosquitto's retain_available false), and the router's will, its "
          "heartbeats and the workers' are retained: allow them",
}


def reason_name(reason: int) -> str:
    return NAMES.get(reason, f"reason 0x{reason:02X}")


def refusal(reason: int, name: str) -> str:
    """Why the broker refused a connection (an MQTT 5 CONNACK reason code; ``Session`` gives MQTT 3.1.1's
    return codes as those), and what to do about it, in one line."""
    return f"the broker refused the connection as {name}: {said(reason)}"


def said(reason: int) -> str:
    """A reason code in words, and what to do about it."""
    return f"{coded(reason)}; {_FIXES.get(reason, _SEE_THE_LOG)}"


def coded(reason: int) -> str:
    """A reason code in words, and its number."""
    return f"{reason_name(reason)} (0x{reason:02X})"
