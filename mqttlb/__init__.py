"""mqttlb: an MQTT broker-side device router.

``mqttlb.Worker`` is imported on first use, so that importing the pure core
(``mqttlb.core``) or the public ``mqttlb.balancers`` does not bring in the wire.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .worker import Delivery, Worker

__all__ = ["Delivery", "Worker"]


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module(".worker", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
