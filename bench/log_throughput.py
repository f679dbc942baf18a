"""Log lines persisted per second from a child printing as fast as it can.

For the ratio, the same child's output is first drained from a pipe with nothing stored (the
pipe-only ceiling), then run through a real worker into PostgreSQL; every line is checked to be
stored. Prints the median of several runs.

    python bench/log_throughput.py [--lines 2000000] [--repeat 3]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, median, scratch_database, setup_django

CHILD = REPO / "tests" / "children" / "child.py"


def pipe_ceiling(lines: int, tmp: Path) -> float:
    """The same child drained from its pipe the way the worker reads it, storing nothing."""
    config = tmp / "ceiling.json"
    config.write_text(json.dumps({"lines": lines}))
    began = time.perf_counter()
    # The worker gives children a clean environment; PYTHONUNBUFFERED would make every line a
    # write(2) and measure the child, not the pipe.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(config)], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while os.read(fd, 65536):
        pass
    proc.wait()
    return lines / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        setup_django(env)
        from django.db.models import Sum
        from django.db.models.functions import Length

        from runs.models import LogChunk, Run, RunStatus
        from runs.services import run_enqueue

        ceilings, rates = [], []
        for _ in range(args.repeat):
            ceilings.append(pipe_ceiling(args.lines, Path(tmp)))
            run = run_enqueue(recipe="child", created_by=None, config={"lines": args.lines})
            subprocess.run(
                [sys.executable, "manage.py", "tunix_worker", "--once"],
                cwd=REPO,
                env=env,
                check=True,
            )
            run.refresh_from_db()
            assert run.status == RunStatus.COMPLETED, run.status_reason
            assert run.started_at and run.finished_at
            seconds = (run.finished_at - run.started_at).total_seconds()
            chunks = LogChunk.objects.filter(run=run)
            newlines = sum(c.count("\n") for c in chunks.values_list("chunk", flat=True).iterator())
            assert newlines == args.lines, f"lost lines: {newlines} of {args.lines}"
            size = chunks.aggregate(s=Sum(Length("chunk")))["s"]
            rates.append(args.lines / seconds)
            print(
                f"  run: {args.lines:,} lines ({size:,} chars, {chunks.count()} rows) "
                f"in {seconds:.2f} s -> {args.lines / seconds:,.0f} lines/s; "
                f"pipe only {ceilings[-1]:,.0f} lines/s",
                flush=True,
            )
            Run.objects.filter(pk=run.pk).delete()
        print(
            f"log lines persisted per second (median of {args.repeat}): {median(rates):,.0f} "
            f"| pipe-only ceiling {median(ceilings):,.0f} "
            f"| ratio {median(rates) / median(ceilings):.2f} | lines lost: 0"
        )


if __name__ == "__main__":
    main()
