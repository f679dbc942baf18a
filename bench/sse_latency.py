"""Latency from a child's print to the SSE client's receipt, through a real worker and daphne.

The child stamps `time.time()` in every line (tests/children/child.py `stamp`); the client
compares it with the moment the event carrying that line is parsed. Lines printed before the
client was connected are left out. Prints p50/p99 per rate, median of --repeat runs.

    python bench/sse_latency.py [--repeat 3] [--seconds 4]
"""

import argparse
import re
import tempfile
import time
from pathlib import Path

import httpx
from _common import median, percentile, scratch_database, setup_django, start_worker
from sse_common import bench_token, daphne

STAMPED = re.compile(r"line \d+ t=([0-9.]+)")


def one_run(url: str, token: str, rate: int, seconds: float) -> tuple[list[float], int]:
    from runs.services import run_enqueue
    from tests.sse.sseclient import auth, parse_events, stream_url

    lines = int(rate * seconds)
    run = run_enqueue(
        recipe="child", created_by=None, config={"lines": lines, "rate": rate, "stamp": True}
    )
    latencies: list[float] = []
    seen = 0
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", stream_url(url, run.pk), headers=auth(token)) as response,
    ):
        connected = None
        final = None
        for event in parse_events(response.iter_lines()):
            if connected is None:
                connected = event.received
            if event.event == "status":
                final = event.json()["status"]
            if event.event != "log":
                continue
            for stamp in STAMPED.findall(event.json()["chunk"]):
                seen += 1
                if float(stamp) >= connected:
                    latencies.append(event.received - float(stamp))
    assert final == "completed", final
    assert seen == lines, f"saw {seen} of {lines} lines"
    return latencies, lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="How long each child prints.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        setup_django(env)
        token = bench_token()
        worker = start_worker(env, "--worker-id", "bench", "--poll-interval", "0.1")
        try:
            with daphne(env) as (url, _):
                time.sleep(2)  # the worker's imports and LISTEN connection
                for rate in (10, 10_000):
                    p50s, p99s = [], []
                    for _ in range(args.repeat):
                        latencies, lines = one_run(url, token, rate, args.seconds)
                        p50s.append(percentile(latencies, 50) * 1000)
                        p99s.append(percentile(latencies, 99) * 1000)
                        print(
                            f"  {rate:>6,} lines/s: {lines:,} lines, {len(latencies):,} timed, "
                            f"p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms",
                            flush=True,
                        )
                    print(
                        f"print -> SSE receipt at {rate:,} lines/s (median of {args.repeat}): "
                        f"p50 {median(p50s):.1f} ms, p99 {median(p99s):.1f} ms",
                        flush=True,
                    )
        finally:
            worker.terminate()
            worker.wait(30)


if __name__ == "__main__":
    main()
