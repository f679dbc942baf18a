"""A real local Ray head for the Ray executor's tests: started once per module, stopped after."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY = shutil.which("ray", path=str(Path(sys.executable).parent))
# The custom resource the head offers: the test recipes ask for one of them.
SLOTS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RayHead:
    address: str
    process: subprocess.Popen[bytes]
    temp_dir: str

    def stop(self) -> None:
        """SIGTERM to the head's process group, and SIGKILL to what is left of it after a few
        seconds (a loaded machine takes far longer to drain it all)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head() -> RayHead:
    if RAY is None:
        pytest.skip("needs Ray (pip install -r requirements-ray.txt)")
    pytest.importorskip("ray.job_submission", reason="needs Ray (requirements-ray.txt)")
    dashboard = free_port()
    # Short: Ray puts Unix sockets under it, and their paths are limited to about 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    # The cluster's own environment: nothing of the worker's (the tests' SECRET_KEY and
    # DATABASE_URL), as on a real cluster, so a job that shows them got them from the worker;
    # nor the coverage measurement of the tests' own processes (Ray starts dozens of Pythons).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SECRET_KEY", "DATABASE_URL")
        and not k.startswith(("PYTEST", "RAY_", "COVERAGE_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    process = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={free_port()}",
            "--num-cpus=4",
            f'--resources={{"tunixops_slot": {SLOTS}}}',
            "--disable-usage-stats",
            "--include-dashboard=true",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    head = RayHead(f"http://127.0.0.1:{dashboard}", process, temp_dir)
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{head.address}/api/version", timeout=2):  # noqa: S310
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                head.stop()
                raise RuntimeError("the Ray head did not come up") from None
            time.sleep(0.5)
    return head


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    head = start_head()
    yield head
    head.stop()
