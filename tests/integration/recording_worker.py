"""A worker process for the fault tests: ``mqttlb.Worker`` whose handler appends each payload to a file.

Run as ``python recording_worker.py HOST PORT WORKER_ID FILE [SECONDS_PER_MESSAGE]``. It is a real process
so that a test can SIGKILL or SIGSTOP it; the file tells what it handled, one payload per line, flushed
before the message is acknowledged.
"""

from __future__ import annotations

import sys
import time

from mqttlb import Delivery, Worker
from mqttlb.core.config import BrokerSettings


def main() -> None:
    host, port, worker_id, path = sys.argv[1:5]
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    with open(path, "ab") as out:
        def handle(delivery: Delivery) -> None:
            time.sleep(delay)
            out.write(delivery.payload + b"\n")
            out.flush()

        Worker(worker_id, handle, broker=BrokerSettings(host=host, port=int(port)), interval=0.5).run()


if __name__ == "__main__":
    main()
