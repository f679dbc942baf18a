"""Enqueue -> running latency with an idle worker (PostgreSQL LISTEN/NOTIFY wake-up).

The worker's poll interval is left at its 1 s default, so any figure well under a second comes
from the notification path. Prints p50/p99 over --runs enqueues, median of --repeat rounds.

    python bench/pickup_latency.py [--runs 100] [--repeat 3]
"""

import argparse
import tempfile
import time
from pathlib import Path

from _common import median, percentile, scratch_database, setup_django, start_worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        setup_django(env)
        from runs.models import Run, RunStatus
        from runs.services import run_enqueue

        worker = start_worker(env, "--worker-id", "bench")
        try:
            time.sleep(3)  # imports done, LISTEN connection open, idle
            p50s, p99s = [], []
            for _ in range(args.repeat):
                latencies = []
                for _ in range(args.runs):
                    run = run_enqueue(recipe="child", created_by=None, config={})
                    while True:
                        run.refresh_from_db(fields=["status", "started_at", "created_at"])
                        if run.status == RunStatus.COMPLETED:
                            break
                        time.sleep(0.002)
                    assert run.started_at is not None
                    latencies.append((run.started_at - run.created_at).total_seconds() * 1000)
                    time.sleep(0.05)  # the worker is idle again, waiting on LISTEN
                p50s.append(percentile(latencies, 50))
                p99s.append(percentile(latencies, 99))
                print(f"  round: p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms", flush=True)
                Run.objects.all().delete()
            print(
                f"enqueue -> running, idle worker (median of {args.repeat} x {args.runs}): "
                f"p50 {median(p50s):.1f} ms, p99 {median(p99s):.1f} ms "
                f"(poll fallback interval 1000 ms)"
            )
        finally:
            worker.terminate()
            worker.wait(30)


if __name__ == "__main__":
    main()
