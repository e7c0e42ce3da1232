"""mqttlb: an MQTT broker-side device router."""

from .worker import Delivery, Worker

__all__ = ["Delivery", "Worker"]
