"""SIGTERM and SIGINT under traffic: the router takes no new message, finishes its forwards, disconnects and
exits 0 at once; the next router takes what was left at the broker, and every message reaches a worker."""

from __future__ import annotations

import re
import signal
import time

import pytest

from .conftest import Client, TestWorker, wait_for
from .test_faults import Publisher, accounted

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_under_traffic_loses_nothing(sig, make_router, clients):
    workers = [clients(TestWorker, f"w{i}") for i in range(3)]
    router = make_router(name="r")
    publisher = Publisher(clients(Client, "device"), devices=50, rate=1000).start()
    wait_for(lambda: sum(len(w.messages()) for w in workers) > 500, what="traffic flowing")

    asked = time.monotonic()
    assert router.stop(sig) == 0
    assert time.monotonic() - asked < 5  # bounded by SHUTDOWN_GRACE (10 s); with a healthy broker, at once
    stopping = next(found for line in router.lines if (found := re.search(r"stopping: waiting for (\d+)", line)))
    assert router.lines[-1].endswith("mqttlb.router: stopped")
    assert "Traceback" not in router.log()

    before = sum(len(w.messages()) for w in workers)
    make_router(name="r")  # the same session: it gets what arrived meanwhile
    wait_for(lambda: sum(len(w.messages()) for w in workers) > before + 500, what="traffic through the new router")
    lost, duplicates = accounted(f"{sig.name} under traffic", publisher.stop(), workers)
    assert lost == 0
    # Each forward in flight was finished and its message acknowledged before the router disconnected.
    assert duplicates <= int(stopping.group(1))
