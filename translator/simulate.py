"""A stand-in training job: writes the project brief's metrics document, over and over.

Used by ``demo``, and by ``simulate`` as the mock trainer of the docker-compose stack and
the Kubernetes Job. By default it rewrites the file in place (truncate and write), as real
trainers do, so readers see half-written files.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any


class TrainingSimulator:
    """A plausible ResNet-50 run: loss falls, accuracy rises, batches and epochs count up."""

    def __init__(self, *, job_id: str = "training-job-123", seed: int | None = None) -> None:
        self._random = random.Random(seed)
        self._started = datetime.now(UTC).replace(microsecond=0)
        self.job_id = job_id
        self.step = 0

    def document(self) -> dict[str, Any]:
        self.step += 1
        batches_per_epoch = 50
        epoch = self.step // batches_per_epoch + 1
        progress = 1 - math.exp(-self.step / 200)
        noise = self._random.gauss
        now = self._started + timedelta(seconds=self.step)
        return {
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "job_metadata": {
                "job_id": self.job_id,
                "model_name": "resnet-50",
                "dataset": "imagenet",
                "start_time": self._started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "training_metrics": {
                "epoch": epoch,
                "batch_number": self.step,
                "training_loss": round(max(0.05, 2.3 * (1 - progress) + 0.3 + noise(0, 0.02)), 4),
                "validation_loss": round(
                    max(0.05, 2.3 * (1 - progress) + 0.35 + noise(0, 0.02)), 4
                ),
                "accuracy": round(min(0.99, 0.1 + 0.8 * progress + noise(0, 0.005)), 4),
                "learning_rate": 0.001 * (0.9 ** (epoch - 1)),
                "gpu_utilization": round(min(1.0, max(0.0, 0.9 + noise(0, 0.03))), 3),
                "processing_time_ms": max(1, int(noise(245, 25))),
                "samples_per_second": round(max(1.0, noise(156.2, 10)), 1),
            },
        }

    def write(self, path: str, *, atomic: bool = False) -> dict[str, Any]:
        document = self.document()
        data = json.dumps(document, indent=2)
        if atomic:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            with open(path, "w") as fh:
                fh.write(data)
        return document


def run_simulator(
    path: str,
    *,
    interval_s: float,
    stop: threading.Event,
    count: int = 0,
    atomic: bool = False,
) -> None:
    """Write a new document every ``interval_s`` until ``stop`` is set (or ``count`` writes)."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    simulator = TrainingSimulator()
    written = 0
    while not stop.is_set():
        simulator.write(path, atomic=atomic)
        written += 1
        if count and written >= count:
            return
        stop.wait(interval_s)


def run_until_signalled(
    path: str, *, interval_s: float, count: int = 0, atomic: bool = False
) -> int:
    """``run_simulator`` in the foreground until done or SIGTERM/SIGINT; the exit status.

    Handlers are needed, not just the default action: as a container's PID 1 the process
    gets no default action at all, so without one it would ignore SIGTERM, eat the pod's
    whole grace period and be killed, and the sidecar beside it with it, before its last
    export. The handler only sets ``stop``: a write in progress finishes, so the file is
    never left torn by the stop. A stopped run exits 128 + the signal number (143 for
    SIGTERM), as a shell reports a process killed by it: the run did not finish, and a pod
    whose containers all exit 0 would count as a successful Job.
    """
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_simulator(path, interval_s=interval_s, stop=stop, count=count, atomic=atomic)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + received[0] if received else 0
