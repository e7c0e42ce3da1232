"""Integration fixtures: a private Mosquitto per test, routers as real processes, test clients."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
import yaml

from mqttlb.commands.broker import PrivateBroker, find_mosquitto

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="session", autouse=True)
def _mosquitto_installed() -> None:
    find_mosquitto()  # raises with the install hint


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    with PrivateBroker(workdir=workdir) as b:
        yield b


class Client:
    """A paho client on its own network thread that records what it receives."""

    def __init__(self, broker: PrivateBroker, client_id: str, *, clean: bool = True,
                 will: tuple[str, bytes] | None = None, protocol: int = paho.MQTTv5) -> None:
        session = {} if protocol == paho.MQTTv5 else {"clean_session": clean}  # 3.1.1: set here, not at connect
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  **session)
        self.received: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client.on_message = self._on_message
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.max_inflight_messages_set(1000)
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        props = None
        if protocol == paho.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            if not clean:
                props.SessionExpiryInterval = 3600
            self.client.connect(broker.host, broker.port, 30, clean_start=clean, properties=props)
        else:
            self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()
        wait_for(self.client.is_connected, what=f"{client_id} connected")

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append(message)

    def messages(self) -> list[paho.MQTTMessage]:
        with self._lock:
            return list(self.received)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, mid = self.client.subscribe(topic, qos)
        assert result == 0
        time.sleep(0)  # the SUBACK is awaited by the caller's wait_for on traffic

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, properties: Any = None) -> None:
        info = self.client.publish(topic, payload, qos, retain=retain, properties=properties)
        if qos:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def kill(self) -> None:
        """Drop the connection without DISCONNECT, so the broker fires the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


class TestWorker(Client):
    """A worker as the SPEC's wire protocol describes it: retained heartbeats, will, inbox."""

    __test__ = False

    def __init__(self, broker: PrivateBroker, worker_id: str, *, pool: str = "default", weight: float = 1.0,
                 interval: float = 0.5) -> None:
        self.worker_id = worker_id
        self.heartbeat_topic = f"mqttlb/workers/{worker_id}/heartbeat"
        will = (self.heartbeat_topic, orjson.dumps({"worker": worker_id, "state": "down"}))
        super().__init__(broker, f"test-worker-{worker_id}", will=will)
        self.pool, self.weight, self.inflight = pool, weight, 0
        self.subscribe(f"mqttlb/workers/{worker_id}/in/#")
        self._stop = threading.Event()
        self.beat()
        self._thread = threading.Thread(target=self._beat_loop, args=(interval,), daemon=True)
        self._thread.start()

    def beat(self, state: str = "up") -> None:
        payload = {"worker": self.worker_id, "pool": self.pool, "state": state, "weight": self.weight,
                   "inflight": self.inflight, "interval": 0.5, "ts": time.time()}
        self.client.publish(self.heartbeat_topic, orjson.dumps(payload), qos=1, retain=True)

    def _beat_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.beat()

    def silence(self) -> None:
        """Stop heartbeats but stay connected (a hung worker)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self.beat("down")
        super().close()

    def kill(self) -> None:
        self._stop.set()
        super().kill()


class RouterProcess:
    """``mqttlb run`` as a subprocess, with its log collected."""

    def __init__(self, config_path: Path, *options: str, command: list[str] | None = None) -> None:
        """``command`` runs instead of ``mqttlb run`` (a script that registers a balancer first, say)."""
        self.config_path = config_path
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "mqttlb", "run", "-c", str(config_path), "--log-level", "debug",
                        *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_for(lambda: any(text in line for line in self.lines), timeout, f"router log line {text!r}")

    def wait_ready(self) -> RouterProcess:
        self.wait_log("routing link connected")
        return self

    def stop(self, sig: int = 15, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self._finish(timeout)

    def kill(self) -> None:
        self.process.kill()
        self._finish(10)

    def _finish(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def write_config(path: Path, broker: PrivateBroker, /, **overrides: Any) -> Path:
    """A router config for ``broker``: the default routes unless overridden, no metrics listener."""
    data: dict[str, Any] = {
        "broker": {"host": broker.host, "port": broker.port, "client_id": f"mqttlb-test-{path.stem}"},
        "heartbeat": {"timeout": "2s"},
        "metrics": {"listen": None},
        "routes": [
            {"name": "telemetry", "match": "devices/{device}/telemetry", "key": "device",
             "algorithm": "consistent_hash"},
            {"name": "logs", "match": "devices/+/logs/#", "algorithm": "round_robin"},
        ],
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def make_router(tmp_path: Path, broker: PrivateBroker) -> Iterator[Callable[..., RouterProcess]]:
    routers: list[RouterProcess] = []

    def start(wait: bool = True, name: str = "router", **overrides: Any) -> RouterProcess:
        router = RouterProcess(write_config(tmp_path / f"{name}.yaml", broker, **overrides))
        routers.append(router)
        return router.wait_ready() if wait else router

    yield start
    for router in routers:
        if not router.process.stdout.closed:
            router.kill()


@pytest.fixture
def clients(broker: PrivateBroker) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(kind: type[Client] = Client, *args: Any, **kwargs: Any) -> Client:
        c = kind(broker, *args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


RECORDING_WORKER = Path(__file__).with_name("recording_worker.py")


class WorkerProcess:
    """``recording_worker.py`` as a process: an ``mqttlb.Worker`` with a persistent session that a test may
    SIGKILL, SIGSTOP or restart; what it handled is in its file."""

    def __init__(self, broker: PrivateBroker, worker_id: str, record: Path, delay: float = 0.0) -> None:
        self.worker_id, self.record = worker_id, record
        self.process = subprocess.Popen([sys.executable, str(RECORDING_WORKER), broker.host, str(broker.port),
                                         worker_id, str(record), str(delay)])

    def handled(self) -> list[bytes]:
        if not self.record.exists():
            return []
        return [line for line in self.record.read_bytes().split(b"\n") if line.endswith(b"}")]

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.process.wait(15)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def worker_processes(broker: PrivateBroker, tmp_path: Path):
    started: list[WorkerProcess] = []

    def start(worker_id: str, delay: float = 0.0) -> WorkerProcess:  # a file per process, restarts included
        worker = WorkerProcess(broker, worker_id, tmp_path / f"{worker_id}-{len(started)}.handled", delay)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
