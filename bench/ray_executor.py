"""The Ray executor against Ray's own tools, on one local Ray head and the same test child.

- submit -> command running: TunixOps (enqueue, a worker claims and submits) vs Ray's own
  `submit_job`, both until the child's first line is printed (its stamp).
- print -> client: TunixOps' SSE stream (the job's output file, the log sink, daphne) vs Ray's
  own log follow (`tail_job_logs`, what `ray job logs --follow` runs), per line, from the
  child's `time.time()` stamp to the moment the client reads it; lines lost counted on both.
  Reference: the same child as a local run, through the same SSE stream.
- cancel -> ended: TunixOps' cancel until the run is `cancelled` vs Ray's `stop_job` until the
  job is STOPPED, with a cooperative child.

    python bench/ray_executor.py [--runs 10] [--repeat 3] [--seconds 3] [--rate 1000]
"""

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from _common import REPO, median, percentile, scratch_database, setup_django, start_worker
from sse_common import bench_token, daphne

STAMPED = re.compile(r"line (\d+) t=([0-9.]+)")
CHILD = REPO / "tests" / "children" / "child.py"


def wait(predicate: Any, timeout: float = 60.0, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(interval)
    return value


def first_stamp(text: str) -> float:
    found = STAMPED.search(text)
    return float(found.group(2)) if found else 0.0


def p(values: list[float]) -> str:
    return f"p50 {percentile(values, 50) * 1000:.0f} ms, p99 {percentile(values, 99) * 1000:.0f} ms"


class Native:
    """The same child as a plain Ray job, through Ray's own client and CLI."""

    def __init__(self, address: str, tmp: Path) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address = address
        self.client = JobSubmissionClient(address)
        self.tmp = tmp
        self.count = 0

    def submit(self, config: dict[str, Any], delay: float = 0.0) -> tuple[str, Path]:
        self.count += 1
        work = self.tmp / f"native-{self.count}"
        work.mkdir()
        (work / "config.json").write_text(json.dumps(config))
        entry = f"cd {work} && sleep {delay} && exec {sys.executable} {CHILD} {work}/config.json"
        return self.client.submit_job(entrypoint=entry, entrypoint_num_cpus=0.5), work

    def status(self, job: str) -> str:
        return str(self.client.get_job_status(job))

    def ended(self, job: str) -> bool:
        return self.status(job) in ("SUCCEEDED", "FAILED", "STOPPED")


def stored_stdout(run: Any, chunks: Any) -> str:
    text = "".join(chunks.objects.filter(run=run, stream="stdout").values_list("chunk", flat=True))
    return text if "line 1 " in text else ""


def submit_to_running(native: Native, runs: int) -> tuple[list[float], list[float]]:
    from runs.models import LogChunk
    from runs.services import run_enqueue

    ours, theirs = [], []
    config = {"lines": 1, "stamp": True}
    for _ in range(runs):
        start = time.time()
        run = run_enqueue(recipe="ray_child", created_by=None, config=config)
        text = wait(lambda r=run: stored_stdout(r, LogChunk))
        ours.append(first_stamp(text) - start)
        start = time.time()
        job, _ = native.submit(config)
        wait(lambda j=job: native.ended(j), interval=0.05)
        theirs.append(first_stamp(native.client.get_job_logs(job)) - start)
    return ours, theirs


def ours_follow(
    url: str, token: str, lines: int, rate: int, recipe: str = "ray_child"
) -> tuple[list[float], int]:
    from runs.services import run_enqueue
    from tests.sse.sseclient import auth, parse_events, stream_url

    run = run_enqueue(
        recipe=recipe, created_by=None, config={"lines": lines, "rate": rate, "stamp": True}
    )
    latencies: list[float] = []
    seen: set[int] = set()
    final = None
    with (
        httpx.Client(timeout=60) as client,
        client.stream("GET", stream_url(url, run.pk), headers=auth(token)) as response,
    ):
        for event in parse_events(response.iter_lines()):
            if event.event == "status":
                final = event.json()["status"]
            if event.event != "log":
                continue
            for number, stamp in STAMPED.findall(event.json()["chunk"]):
                seen.add(int(number))
                latencies.append(event.received - float(stamp))
    assert final == "completed", final
    return latencies, lines - len(seen)


def theirs_follow(native: Native, lines: int, rate: int) -> tuple[list[float], int]:
    """Ray's own follow (what `ray job logs --follow` runs: `tail_job_logs`), connected before
    the child prints: the job's entry point waits 2 s first."""
    job, _ = native.submit({"lines": lines, "rate": rate, "stamp": True}, delay=2.0)
    latencies: list[float] = []
    seen: set[int] = set()

    async def follow() -> None:
        async for text in native.client.tail_job_logs(job):
            now = time.time()
            for number, stamp in STAMPED.findall(text):
                seen.add(int(number))
                latencies.append(now - float(stamp))

    asyncio.run(follow())
    return latencies, lines - len(seen)


def cancel_one(recipe: str) -> float:
    from runs.models import Run, RunStatus
    from runs.services import run_cancel, run_dir, run_enqueue

    run = run_enqueue(
        recipe=recipe,
        created_by=None,
        config={"sleep": 120, "ready_file": "ready"},
        cancel_grace_seconds=5,
    )
    wait((run_dir(run.pk) / "ready").exists)
    start = time.monotonic()
    run_cancel(run_id=run.pk, user=None)
    wait(lambda: Run.objects.filter(pk=run.pk, status=RunStatus.CANCELLED).exists())
    return time.monotonic() - start


def cancel_to_ended(native: Native, runs: int) -> tuple[list[float], list[float], list[float]]:
    ours, theirs, local = [], [], []
    for _ in range(runs):
        ours.append(cancel_one("ray_child"))
        local.append(cancel_one("child"))
        job, work = native.submit({"sleep": 120, "ready_file": "ready"})
        wait((work / "ready").exists)
        start = time.monotonic()
        native.client.stop_job(job)
        wait(lambda j=job: native.status(j) == "STOPPED")
        theirs.append(time.monotonic() - start)
    return ours, theirs, local


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.ray.conftest import start_head

    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        head = start_head()
        env = {**env, "RAY_ADDRESS": head.address}
        setup_django(env)
        token = bench_token()
        worker = start_worker(env, "--worker-id", "bench", "--poll-interval", "0.1")
        native = Native(head.address, Path(tmp))
        try:
            with daphne(env) as (url, _):
                time.sleep(2)
                submit_to_running(native, 1)  # warm-up: the head's first job starts its workers
                print(
                    f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
                )
                ours, theirs = submit_to_running(native, args.runs)
                print(f"  submit -> command running: tunixops {p(ours)}; ray {p(theirs)}")
                print(
                    f"submit -> command running ({args.runs} jobs): TunixOps {p(ours)} "
                    f"| Ray submit_job {p(theirs)}"
                )
                lines = int(args.rate * args.seconds)
                rounds: dict[str, list[tuple[float, float, int]]] = {
                    "ours": [],
                    "ray": [],
                    "local": [],
                }
                for _ in range(args.repeat):
                    follows: list[tuple[str, Callable[[], tuple[list[float], int]]]] = [
                        ("ours", partial(ours_follow, url, token, lines, args.rate)),
                        ("ray", partial(theirs_follow, native, lines, args.rate)),
                        ("local", partial(ours_follow, url, token, lines, args.rate, "child")),
                    ]
                    for name, follow in follows:
                        latencies, lost = follow()
                        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
                        rounds[name].append((p50, p99, lost))
                        print(
                            f"  {name}: {lines:,} lines at {args.rate:,}/s: p50 {p50 * 1000:.0f} "
                            f"ms, p99 {p99 * 1000:.0f} ms, lost {lost}",
                            flush=True,
                        )
                summary = {
                    name: (
                        median([r[0] for r in got]) * 1000,
                        median([r[1] for r in got]) * 1000,
                        sum(r[2] for r in got),
                    )
                    for name, got in rounds.items()
                }
                print(
                    f"print -> client at {args.rate:,} lines/s (median of {args.repeat}): "
                    f"TunixOps SSE p50 {summary['ours'][0]:.0f} ms, p99 {summary['ours'][1]:.0f} "
                    f"ms, lines lost {summary['ours'][2]} | Ray's log follow (`ray job logs "
                    f"--follow`) p50 {summary['ray'][0]:.0f} ms, p99 {summary['ray'][1]:.0f} ms, "
                    f"lines lost {summary['ray'][2]} | reference, the same child run locally: "
                    f"p50 {summary['local'][0]:.0f} ms, p99 {summary['local'][1]:.0f} ms"
                )
                ours, theirs, local = cancel_to_ended(native, args.runs)
                print(
                    f"cancel -> ended, cooperative child ({args.runs} jobs): TunixOps cancelled "
                    f"{p(ours)} | Ray stop_job -> STOPPED {p(theirs)} | reference, the same "
                    f"child run locally: cancelled {p(local)}"
                )
            print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        finally:
            worker.terminate()
            worker.wait(60)
            head.stop()


if __name__ == "__main__":
    main()
