"""How long `manage.py tunix_prune` takes to delete 1,000,000 log chunks, and its peak memory.

A throwaway PostgreSQL database gets `--runs` finished runs, 60 days old, with `--chunks` log
chunks in all (each ~`--chunk-bytes` of text, as a run printing a line at a time leaves them),
laid out two ways: `grouped`, each run's chunks together (a worker running one run at a time),
and `interleaved`, every run's chunks mixed page by page (many runs writing at once: the worst
case for a per-run DELETE). The command then runs as its own process, as cron would start it
(`--older-than 30 --logs`); its wall time comes from the clock, its peak RSS from the kernel
(`wait4`), and the longest batch transaction (how long one run's row stays locked) from its own
report. The same command on the then-empty database is the reference: Django's start-up and
memory before any row is read. Every chunk is checked to be gone and every run's tail kept.
Prints the median of several rounds per layout.

    python bench/prune.py [--chunks 1000000] [--runs 200] [--chunk-bytes 200] [--repeat 3]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, median, scratch_database, setup_django

_CHUNKS = (
    "INSERT INTO tunix_run_log_chunks (run_id, seq, stream, chunk, created_at) "
    "SELECT r.id, s, 'stdout', repeat('x', %s) || E'\\n', r.finished_at "
    "FROM tunix_runs r, generate_series(1, %s) s "
)
LAYOUTS = {
    "grouped": _CHUNKS + "ORDER BY r.finished_at, s",
    "interleaved": _CHUNKS + "ORDER BY s, r.finished_at",
}


def fill(runs: int, chunks: int, chunk_bytes: int, layout: str) -> None:
    """Finished runs with their chunks, written by PostgreSQL itself (generate_series)."""
    from django.db import connection

    per_run = chunks // runs
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tunix_runs (id, name, recipe, model_id, config, priority, "
            "timeout_seconds, max_attempts, attempt, status, status_reason, created_at, "
            "started_at, finished_at, worker_id, stdout_tail, stderr_tail, log_bytes, "
            "log_truncated, pinned, artifact_bytes) "
            "SELECT gen_random_uuid(), 'bench ' || g, 'child', '', '{}', 0, 600, 1, 1, "
            "'completed', '', now() - interval '61 days', now() - interval '61 days', "
            "now() - interval '60 days' + g * interval '1 second', 'bench', 'the last line', "
            "'', %s, false, false, 0 FROM generate_series(1, %s) g",
            [per_run * chunk_bytes, runs],
        )
        cursor.execute(LAYOUTS[layout], [chunk_bytes - 1, per_run])
        # What autovacuum would have done by the time a run is 30 days old.
        cursor.execute("VACUUM ANALYZE tunix_run_log_chunks")


def run_prune(env: dict[str, str], *args: str) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes, and output of one `tunix_prune` process."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "tunix_prune", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, output
    return seconds, usage.ru_maxrss * 1024, output


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--chunk-bytes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layout", choices=sorted(LAYOUTS), action="append")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        env = {**env, "LOG_LEVEL": "WARNING"}
        setup_django(env)
        from runs.models import LogChunk, Run
        from runs.retention import DEFAULT_BATCH_SIZE

        summary = []
        for layout in args.layout or list(LAYOUTS):
            seconds, peaks, longest, idle, idle_seconds = [], [], [], [], []
            for _ in range(args.repeat):
                fill(args.runs, args.chunks, args.chunk_bytes, layout)
                assert LogChunk.objects.count() == args.chunks
                took, peak, output = run_prune(env, "--older-than", "30", "--logs")
                assert not LogChunk.objects.exists(), output
                assert Run.objects.filter(stdout_tail="the last line").count() == args.runs
                assert not Run.objects.filter(log_pruned_at__isnull=True).exists()
                found = re.search(r"\(longest (\d+) ms\)", output)
                assert found, output
                print(f"  {layout}: {took:.2f} s, peak RSS {peak / 2**20:.0f} MiB")
                for line in output.splitlines()[:2]:
                    print(f"    {line}")
                seconds.append(took)
                peaks.append(peak)
                longest.append(int(found[1]))
                startup, reference, _ = run_prune(env, "--older-than", "30", "--logs")
                idle.append(reference)
                idle_seconds.append(startup)
                Run.objects.all().delete()
            pruning = median(seconds) - median(idle_seconds)
            summary.append(
                f"prune of {args.chunks:,} log chunks ({args.chunks * args.chunk_bytes / 1e6:,.0f}"
                f" MB, {args.runs} runs, {layout}) by manage.py tunix_prune, median of "
                f"{args.repeat}: {median(seconds):.1f} s ({median(idle_seconds):.1f} s of it "
                f"start-up; {args.chunks / max(pruning, 1e-3):,.0f} chunks/s deleting), peak RSS "
                f"{median(peaks) / 2**20:.0f} MiB (nothing to prune: {median(idle) / 2**20:.0f} "
                f"MiB), longest batch of {DEFAULT_BATCH_SIZE:,} held its run "
                f"{median(longest)} ms"
            )
        for line in summary:
            print(line)


if __name__ == "__main__":
    main()
