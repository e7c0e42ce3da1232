"""A private Mosquitto on a free loopback port, for the demo, the benchmark and the tests.

It is started from our own ``mosquitto/dev.conf`` (with the port, data
directory and log rewritten), never the system broker on 1883, and stopped,
killed or restarted on request so tests can inject real broker faults. The
security tests start ``mosquitto/production.conf`` the same way: every listener
gets a free loopback port, and named lines (paths, options) are replaced.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

INSTALL_HINT = "Mosquitto is not installed: run 'apt-get install mosquitto mosquitto-clients' (as root), then try again"
_LISTENER = re.compile(r"(?m)^listener[ \t]+\d+([ \t]+\S+)?")


def mosquitto_dir() -> Path:
    """The repository's ``mosquitto/`` folder (beside the package in a checkout), else ./mosquitto."""
    beside_package = Path(__file__).resolve().parents[2] / "mosquitto"  # mqttlb/commands/broker.py -> the checkout
    return beside_package if beside_package.is_dir() else Path.cwd() / "mosquitto"


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if found is None:
        raise FileNotFoundError(INSTALL_HINT)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


class PrivateBroker:
    """One Mosquitto process; use as a context manager."""

    def __init__(self, conf: Path | None = None, port: int | None = None, workdir: Path | None = None,
                 edits: Mapping[str, str] | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._source = conf or mosquitto_dir() / "dev.conf"
        self._edits = dict(edits or {})
        """Whole lines of the config file and what replaces each."""
        listeners = len(_LISTENER.findall(self._source.read_text()))
        self.ports = (self.port, *(free_port() for _ in range(listeners - 1)))
        """One port per ``listener`` line of the config, in order: ``port`` is the first."""
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mqttlb-broker-"))
        self.conf = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _write_conf(self) -> None:
        lines = self._source.read_text().splitlines()
        for old, new in self._edits.items():
            if old not in lines:
                raise ValueError(f"{self._source}: no line {old!r} to replace")
            lines = [new if line == old else line for line in lines]
        ports = iter(self.ports)
        text = _LISTENER.sub(lambda _: f"listener {next(ports)} {self.host}", "\n".join(lines) + "\n")
        text = re.sub(r"(?m)^(persistence_location|log_dest|pid_file|user)\b.*\n", "", text)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        text += f"\npersistence_location {data}/\nlog_dest file {self.log_path}\nuser {getpass.getuser()}\n"
        self.conf.write_text(text)

    def start(self, timeout: float = 10.0) -> PrivateBroker:
        self._write_conf()
        self.process = subprocess.Popen([find_mosquitto(), "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for port in self.ports:
                wait_listening(self.host, port, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM saves its persistence file; SIGKILL does not)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
