"""compose.yaml's stack without Docker: our Mosquitto config, the router as the image runs it, and the two
workers as compose runs them, on this machine; the image's health check passes once they are up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from mqttlb.commands.broker import PrivateBroker

from .conftest import ROOT, Client, RouterProcess, wait_for
from .test_metrics import endpoint, forwarded, get, health_check, scrape

pytestmark = pytest.mark.integration

CONFIG_IN_IMAGE = "/etc/mqttlb/mqttlb.yaml"


def test_the_compose_stack_routes_on_this_machine(tmp_path: Path) -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    with PrivateBroker(conf=ROOT / "deploy" / "mosquitto.conf", workdir=tmp_path) as broker:
        config = yaml.safe_load((ROOT / "deploy" / "mqttlb.yaml").read_text())
        config["broker"].update(host=broker.host, port=broker.port)
        config["metrics"]["listen"] = "127.0.0.1:0"
        path = tmp_path / "mqttlb.yaml"
        path.write_text(yaml.safe_dump(config))
        workers = [subprocess.Popen([sys.executable, "-m", "mqttlb",
                                     *(str(path) if part == CONFIG_IN_IMAGE else part
                                       for part in services[name]["command"])], cwd=ROOT)
                   for name in ("worker-1", "worker-2")]
        router = RouterProcess(path)  # `run -c FILE`: the image's CMD with the file where the image has it
        try:
            router.wait_ready()
            base = endpoint(router)
            wait_for(lambda: get(base + "/healthz") == (200, "ok\n"), what="both workers up")
            assert health_check(base) == 0
            device = Client(broker, "device")
            for n in range(20):
                device.publish(f"devices/d{n}/logs/app", orjson.dumps({"n": n}))
            device.close()
            wait_for(lambda: forwarded(scrape(base)) == {("logs", "w1"): 10, ("logs", "w2"): 10},
                     what="round robin over the two workers")
            assert router.stop() == 0
        finally:
            if router.process.poll() is None:
                router.kill()
            for worker in workers:
                worker.terminate()
                assert worker.wait(15) == 0
