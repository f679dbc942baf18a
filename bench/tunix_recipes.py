"""The `peft` and `grpo` recipes on TunixOps' tiny model: wall time and peak memory of real runs.

Each run is enqueued with its defaults (`{"recipe": "peft"}`, `{"recipe": "grpo"}`) and executed
by a real `tunix_worker --once` process, offline on the CPU. Wall time is enqueue to terminal
status; the peak RSS is the largest of the worker and the run's child (wait4's ru_maxrss, taken
when the worker exits). The first run of the bench builds the tiny model into a fresh cache; it
is reported apart from the median of the others.

    python bench/tunix_recipes.py [--repeat 3]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import median, scratch_database, setup_django, start_worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        env = {
            **env,
            "TUNIX_MODEL_CACHE": str(Path(tmp) / "models"),
            "HF_HUB_OFFLINE": "1",
            "JAX_PLATFORMS": "cpu",
        }
        setup_django(env)
        from runs.models import Run, RunStatus
        from runs.selectors import metric_series
        from runs.services import run_enqueue

        print(f"  tiny model runs on {os.cpu_count()} cores, offline, CPU; {args.repeat} runs each")
        summary = []
        cold = 0.0
        load_start = os.getloadavg()[0]
        for recipe in ("peft", "grpo"):
            walls, durations, peaks = [], [], []
            names: list[str] = []
            steps = 0
            for i in range(args.repeat + (1 if recipe == "peft" else 0)):
                run = run_enqueue(recipe=recipe, created_by=None)
                started = time.monotonic()
                worker = start_worker(env, "--once", "--poll-interval", "0.05")
                _, _, usage = os.wait4(worker.pid, 0)
                worker.returncode = 0
                wall = time.monotonic() - started
                run = Run.objects.get(pk=run.pk)
                if run.status != RunStatus.COMPLETED:
                    raise SystemExit(f"{recipe} run ended {run.status}: {run.stderr_tail[-2000:]}")
                assert run.duration is not None
                duration = run.duration.total_seconds()
                peak = usage.ru_maxrss / 1024
                series = metric_series(run.pk, max_points=10_000)
                names = sorted({n for p in series.points for n in p.values})
                steps = len(series.points)
                line = (
                    f"  {recipe} #{i + 1}: {wall:.1f} s wall, run {duration:.1f} s, "
                    f"peak {peak:.0f} MiB"
                )
                if recipe == "peft" and i == 0:
                    print(line + "  (cold: builds the tiny model)")
                    cold = wall
                    continue
                print(line)
                walls.append(wall)
                durations.append(duration)
                peaks.append(peak)
            summary.append(
                f"{recipe} on the tiny model, defaults (median of {args.repeat}): "
                f"{median(walls):.1f} s enqueue to completed, run {median(durations):.1f} s, "
                f"peak RSS {median(peaks):.0f} MiB; {steps} metric steps, series "
                + ", ".join(names)
            )
        summary.insert(
            0, f"first peft run with a cold model cache (builds the model): {cold:.1f} s"
        )
        # The host is shared: say how busy it was, since both figures are mostly CPU time.
        load_end = os.getloadavg()[0]
        summary.append(
            f"load average during the bench: {load_start:.1f} at the start, {load_end:.1f} at "
            f"the end, on {os.cpu_count()} cores shared with other work"
        )
        for line in summary:
            print(line)


if __name__ == "__main__":
    main()
