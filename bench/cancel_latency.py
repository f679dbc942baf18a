"""Cancel latency: from the cancel call to the child's death and to the `cancelled` status.

Two children: a cooperative one (dies on SIGTERM) and one that ignores SIGTERM, killed after a
1 s grace. Prints p50/p99 for each, median of --repeat rounds of --runs cancels.

    python bench/cancel_latency.py [--runs 20] [--repeat 3]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import median, percentile, scratch_database, setup_django, start_worker

GRACE = 1.0


def child_pid(config_path: str, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().replace(b"\0", b" ").strip().endswith(config_path.encode()):
                        return int(pid)
            except OSError:
                continue
        time.sleep(0.01)
    raise RuntimeError("child did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        setup_django(env)
        from runs.models import Run, RunStatus
        from runs.services import run_cancel, run_dir, run_enqueue
        from tests.runs.helpers import process_alive

        worker = start_worker(env, "--worker-id", "bench")
        try:
            for label, config in (
                ("cooperative", {"sleep": 60, "lines": 1}),
                ("ignores SIGTERM", {"sleep": 60, "lines": 1, "ignore_sigterm": True}),
            ):
                deaths, statuses = [], []
                for _ in range(args.repeat):
                    death_ms, status_ms = [], []
                    for _ in range(args.runs):
                        run = run_enqueue(
                            recipe="child",
                            created_by=None,
                            config=config,
                            cancel_grace_seconds=GRACE,
                        )
                        pid = child_pid(f"{run_dir(run.pk)}/config.json")
                        while Run.objects.get(pk=run.pk).log_bytes == 0:
                            time.sleep(0.005)  # the child is up and printing
                        began = time.perf_counter()
                        run_cancel(run_id=run.pk, user=None)
                        dead_at = None
                        while True:
                            now = time.perf_counter()
                            if dead_at is None and not process_alive(pid):
                                dead_at = now
                            status = Run.objects.values_list("status", flat=True).get(pk=run.pk)
                            if status == RunStatus.CANCELLED:
                                break
                            time.sleep(0.001)
                        death_ms.append(((dead_at or now) - began) * 1000)
                        status_ms.append((now - began) * 1000)
                    deaths.append((percentile(death_ms, 50), percentile(death_ms, 99)))
                    statuses.append((percentile(status_ms, 50), percentile(status_ms, 99)))
                print(
                    f"cancel -> child dead, {label} (median of {args.repeat} x {args.runs}): "
                    f"p50 {median([d[0] for d in deaths]):.0f} ms, "
                    f"p99 {median([d[1] for d in deaths]):.0f} ms"
                )
                print(
                    f"cancel -> status cancelled, {label}: "
                    f"p50 {median([s[0] for s in statuses]):.0f} ms, "
                    f"p99 {median([s[1] for s in statuses]):.0f} ms"
                    + (f" (grace {GRACE * 1000:.0f} ms)" if "ignores" in label else "")
                )
        finally:
            worker.terminate()
            worker.wait(30)


if __name__ == "__main__":
    main()
