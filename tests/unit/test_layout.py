"""The layers stay layers: the core imports no wire, and paho is nowhere in the router.

Each import runs in a fresh interpreter, since this test process has long
imported paho and sockets for the other tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = ["mqttlb.core." + name for name in
        ("config", "topics", "keys", "balancers", "pool", "router", "stats", "limits", "poison", "inflight")]


def imported_after(statement: str) -> set[str]:
    """The modules ``sys.modules`` holds after ``statement`` in a new interpreter."""
    script = f"{statement}\nimport sys\nprint(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    return set(result.stdout.split())


@pytest.mark.parametrize("module", ["mqttlb.balancers", "mqttlb.core", *CORE])
def test_the_core_and_the_public_balancers_import_no_wire(module: str) -> None:
    modules = imported_after(f"import {module}")
    assert module in modules
    assert "paho" not in modules
    assert "socket" not in modules
    assert not {name for name in modules if name.startswith(("mqttlb.mqtt", "mqttlb.transport", "mqttlb.service"))}


def test_the_public_balancers_are_the_cores() -> None:
    from mqttlb import balancers
    from mqttlb.core import balancers as core

    assert all(getattr(balancers, name) is getattr(core, name) for name in core.__all__)


@pytest.mark.parametrize("module", ["mqttlb.service", "mqttlb.commands.cli", "mqttlb.worker"])
def test_the_router_worker_and_command_do_not_import_paho(module: str) -> None:
    modules = imported_after(f"import {module}")
    assert module in modules and "paho" not in modules


def test_worker_stays_at_the_top() -> None:
    modules = imported_after("from mqttlb import Delivery, Worker")
    assert "mqttlb.worker" in modules
