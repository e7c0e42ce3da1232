"""Error types, split by who is at fault.

An operator fixes a ``ConfigError``; a ``RemoteInputError`` is a device's or a
worker's doing and is dead-lettered or ignored, never fatal; a
``TransportError`` is the network's or the broker's and is retried.
"""

from __future__ import annotations

EXIT_CONFIG = 2
"""The exit status of every command when the operator must fix something: a config file, an argument."""


class MqttlbError(Exception):
    """Base of every error mqttlb raises on purpose."""


class ConfigError(MqttlbError):
    """The configuration file is unusable; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class RemoteInputError(MqttlbError):
    """A message or heartbeat from the broker that cannot be used as it is."""


class BadKey(RemoteInputError):
    """The routing key of a message is missing or cannot stand in a topic."""


class BadHeartbeat(RemoteInputError):
    """A worker heartbeat that is malformed or contradicts its topic."""


class TransportError(MqttlbError):
    """The broker cannot be reached or refused us."""
