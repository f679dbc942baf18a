"""Traces stored per second through `POST /api/traces/batch`, 1,000 traces a request.

Each request goes through the whole Django stack in process (JSON parsing, validation, the single
INSERT, the response) against a throwaway PostgreSQL database that is dropped afterwards. Traces
look like real reasoning traces: a ~150-character prompt, 8 steps of ~250 characters, a short
answer and three meta keys (about 2.6 KB each, 2.6 MB a request). Prints the median of several
runs, the SQL statements one request takes, and for comparison the rate of the storage step alone
(`trace_create_batch` on documents that need no parsing).

    python bench/traces_batch.py [--batch 1000] [--repeat 7] [--steps 8]
"""

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from _common import median, scratch_database, setup_django


def trace(n: int, steps: int) -> dict[str, Any]:
    return {
        "trace_version": 1,
        "prompt": f"Problem {n}: a train leaves at {n % 24:02d}:00 travelling at {40 + n % 60} "
        "km/h. How far has it gone when a second train, leaving an hour later, catches up?",
        "steps": [
            {
                "i": i,
                "type": "thought" if i % 2 == 0 else "calculation",
                "content": f"Step {i} of problem {n}: " + "reason about distance and time. " * 7,
            }
            for i in range(steps)
        ],
        "final_answer": f"{(40 + n % 60) * 3} km",
        "meta": {"source": "bench", "split": "train" if n % 10 else "test", "difficulty": n % 5},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    # No collectstatic here; the warning about the missing STATIC_ROOT is noise.
    warnings.filterwarnings("ignore", "No directory at")
    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        # The in-process test client calls itself `testserver`.
        setup_django({**env, "ALLOWED_HOSTS": "testserver"})
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test.utils import CaptureQueriesContext
        from rest_framework.authtoken.models import Token
        from rest_framework.test import APIClient

        from traces.models import Trace
        from traces.services import trace_create_batch

        user = User.objects.create_user(username="bench")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")

        def post(n: int) -> tuple[float, int]:
            body = json.dumps(
                {"traces": [trace(n * args.batch + k, args.steps) for k in range(args.batch)]}
            )
            began = time.perf_counter()
            response = client.post("/api/traces/batch", body, content_type="application/json")
            elapsed = time.perf_counter() - began
            assert response.status_code == 201, response.content[:500]
            assert response.json()["count"] == args.batch
            return elapsed, len(body)

        post(0)  # warm-up: imports, connection, plan caches
        with CaptureQueriesContext(connection) as queries:
            post(1)
        # Read now: the next request starts by clearing the connection's query log.
        statements = [q["sql"].split()[0] for q in queries.captured_queries]
        rates, body_bytes = [], 0
        for n in range(2, 2 + args.repeat):
            elapsed, body_bytes = post(n)
            rates.append(args.batch / elapsed)
        # The storage step alone, on already validated documents: what the HTTP layer costs.
        stored = []
        for n in range(2 + args.repeat, 2 + 2 * args.repeat):
            docs = [trace(n * args.batch + k, args.steps) for k in range(args.batch)]
            began = time.perf_counter()
            trace_create_batch(traces=docs, created_by=None)
            stored.append(args.batch / (time.perf_counter() - began))
        assert Trace.objects.count() == (2 + 2 * args.repeat) * args.batch
        print(
            f"batch of {args.batch} traces ({body_bytes / 1e6:.1f} MB JSON, {args.steps} steps "
            f"each); SQL per request: {', '.join(statements)}"
        )
        print(f"POST /api/traces/batch runs: {', '.join(f'{r:,.0f}' for r in rates)} traces/s")
        print(
            f"traces per second, batches of 1,000, median: {median(rates):,.0f} traces/s "
            "end to end on PostgreSQL"
        )
        print(f"trace_create_batch alone: median {median(stored):,.0f} traces/s")


if __name__ == "__main__":
    main()
