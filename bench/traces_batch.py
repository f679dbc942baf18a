"""Traces stored per second through `POST /api/traces/batch`, 1,000 traces a request.

Each request goes through the whole Django stack in process (JSON parsing, validation, the single
COPY, the response) against a throwaway PostgreSQL database that is dropped afterwards. Traces
look like real reasoning traces: a ~150-character prompt, 8 steps of ~250 characters, a short
answer and three meta keys (about 2.6 KB each, 2.6 MB a request). Prints the median of several
runs, the SQL statements one request takes, the CPU time a batch costs (the process's and its
PostgreSQL backend's, what a shared machine's load changes least), and for comparison the rate of
the storage step alone (`trace_create_batch` on documents that need no parsing).

    python bench/traces_batch.py [--batch 1000] [--repeat 7] [--steps 8] [--profile]

`--profile` also prints where one more request spends its time (cProfile, top 15 by own time).
Then the RSS of a real web process (daphne) while three clients upload a batch of about 28 MB
each at once: before, at the peak and after (`--memory` runs only this, `--clients N`).
"""

import argparse
import cProfile
import http.client
import io
import json
import os
import pstats
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from _common import REPO, median, scratch_database, setup_django

sys.path.insert(0, str(REPO))

from tests.artifacts.servers import Daphne

VERBOSE = "-v" in sys.argv
if VERBOSE:
    sys.argv.remove("-v")


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
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--clients", type=int, default=3, help="with --memory")
    args = parser.parse_args()
    # No collectstatic here; the warning about the missing STATIC_ROOT is noise.
    warnings.filterwarnings("ignore", "No directory at")
    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        # The in-process test client calls itself `testserver`.
        setup_django({**env, "ALLOWED_HOSTS": "testserver"})
        from django.contrib.auth.models import Group, User
        from rest_framework.authtoken.models import Token

        from runs.permissions import SUBMITTERS

        user = User.objects.create_user(username="bench")
        # Uploading traces needs traces.add_trace, which the submitters group holds.
        user.groups.add(Group.objects.get(name=SUBMITTERS))
        token = Token.objects.create(user=user).key
        if args.memory:
            with Daphne(env=env, workdir=Path(tmp)) as server:
                memory(server, token, args.batch, args.clients)
            return
        throughput(args, token)
        # Last, as its uploads leave the web process larger than they found it.
        with Daphne(env=env, workdir=Path(tmp)) as server:
            memory(server, token, args.batch, args.clients)


def throughput(args: argparse.Namespace, token: str) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    from traces.models import Trace
    from traces.services import trace_create_batch

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")

    def batch(n: int) -> str:
        return json.dumps(
            {"traces": [trace(n * args.batch + k, args.steps) for k in range(args.batch)]}
        )

    def send(body: str, url: str = "/api/traces/batch") -> None:
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 201, response.content[:500]
        assert response.json()["count"] == args.batch

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = Path(f"/proc/{cursor.fetchone()[0]}/schedstat")
    cpu: dict[str, list[tuple[float, float]]] = {"/api/traces/batch": [], PREVIOUS: []}
    previous_path(PREVIOUS)

    def post(n: int, url: str = "/api/traces/batch") -> tuple[float, int]:
        body = batch(n)
        # CPU time as well as wall time: this machine is shared, and CPU time per batch
        # (the web process's and its PostgreSQL backend's) is what load changes least.
        db_began = int(backend.read_text().split()[0])
        cpu_began, began = time.process_time(), time.perf_counter()
        send(body, url)
        elapsed = time.perf_counter() - began
        db = (int(backend.read_text().split()[0]) - db_began) / 1e9
        cpu[url].append((time.process_time() - cpu_began, db))
        return elapsed, len(body)

    post(0)  # warm-up: imports, connection, plan caches
    with CaptureQueriesContext(connection) as queries:
        post(1)
    # Read now: the next request starts by clearing the connection's query log.
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    post(1000, PREVIOUS)
    rates, previous_rates, body_bytes = [], [], 0
    for samples in cpu.values():
        samples.clear()
    load_began = os.getloadavg()[0]
    # In turns with the reference, so that both see the same load.
    for n in range(2, 2 + args.repeat):
        elapsed, body_bytes = post(n)
        rates.append(args.batch / elapsed)
        elapsed, _ = post(1001 + n, PREVIOUS)
        previous_rates.append(args.batch / elapsed)
    load_ended = os.getloadavg()[0]
    # The storage step alone, on already validated documents: what the HTTP layer costs.
    stored = []
    for n in range(2 + args.repeat, 2 + 2 * args.repeat):
        docs = [trace(n * args.batch + k, args.steps) for k in range(args.batch)]
        began = time.perf_counter()
        trace_create_batch(traces=docs, created_by=None)
        stored.append(args.batch / (time.perf_counter() - began))
    assert Trace.objects.count() == (3 + 3 * args.repeat) * args.batch
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(send, batch(2 + 2 * args.repeat))
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue().strip())
    print(
        f"batch of {args.batch} traces ({body_bytes / 1e6:.1f} MB JSON, {args.steps} steps "
        f"each); SQL per request: {', '.join(statements)}"
    )
    print(f"POST /api/traces/batch runs: {', '.join(f'{r:,.0f}' for r in rates)} traces/s")
    print(
        f"traces per second, batches of 1,000, median: {median(rates):,.0f} traces/s "
        "end to end on PostgreSQL"
    )
    print(
        f"reference run in turns, the previous path (the serializers' fields, a multi-row "
        f"INSERT by bulk_create): runs {', '.join(f'{r:,.0f}' for r in previous_rates)}, "
        f"median {median(previous_rates):,.0f} traces/s; "
        f"{median(rates) / median(previous_rates):.1f}x"
    )
    print(f"trace_create_batch alone: median {median(stored):,.0f} traces/s")
    for name, url in (("this path", "/api/traces/batch"), ("previous path", PREVIOUS)):
        web = median([c[0] for c in cpu[url]])
        db = median([c[1] for c in cpu[url]])
        print(
            f"CPU per batch, {name}, median: web process {web * 1000:.0f} ms + its "
            f"PostgreSQL backend {db * 1000:.0f} ms, so {args.batch / (web + db):,.0f} "
            "traces/s with no overlap and no wait for a core"
        )
    print(
        f"load average {load_began:.1f} at the start, {load_ended:.1f} at the end, on "
        f"{os.cpu_count()} cores"
    )


PREVIOUS = "/api/traces/batch-previous"


def previous_path(url: str) -> None:
    """Serve at `url`, in this process, the batch view as it was before the plain check and
    COPY: the serializers' fields, and a multi-row INSERT (bulk_create) returning models."""
    import types

    from django.conf import settings
    from django.db import transaction
    from django.urls import include, path
    from rest_framework import status
    from rest_framework.request import Request
    from rest_framework.response import Response

    from traces.api.serializers import TraceBatchInput
    from traces.api.views import TraceBatchCreateApi
    from traces.models import Trace
    from traces.services import trace_size_bytes
    from tunixops.api.serializers import StrictSerializer

    class FieldsOnly(TraceBatchInput):
        def to_internal_value(self, data: Any) -> Any:
            return StrictSerializer.to_internal_value(self, data)

    class PreviousBatchApi(TraceBatchCreateApi):
        def post(self, request: Request) -> Response:
            body = FieldsOnly(data=request.data)
            body.is_valid(raise_exception=True)
            rows = [
                Trace(
                    **doc,
                    step_count=len(doc["steps"]),
                    size_bytes=trace_size_bytes(doc),
                    created_by_id=request.user.pk,
                )
                for doc in body.validated_data["traces"]
            ]
            with transaction.atomic():
                ids = [trace.pk for trace in Trace.objects.bulk_create(rows)]
            return Response({"count": len(ids), "ids": ids}, status=status.HTTP_201_CREATED)

    urls = types.ModuleType("bench_traces_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path(url.lstrip("/"), PreviousBatchApi.as_view()),
        path("", include(settings.ROOT_URLCONF)),
    ]
    sys.modules[urls.__name__] = urls
    settings.ROOT_URLCONF = urls.__name__


def upload(port: int, token: str, body: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    conn.request("POST", "/api/traces/batch", body, headers)
    response = conn.getresponse()
    assert response.status == 201, response.read()[:500]
    response.read()
    conn.close()


def memory(server: Daphne, token: str, batch: int, clients: int) -> None:
    # 90 steps of ~250 characters: about 28 KB a trace, 28 MB a batch of 1,000 (the limit,
    # TUNIX_TRACE_BATCH_MAX_REQUEST_BYTES, is 32 MiB).
    bodies = [
        json.dumps({"traces": [trace((c + 1) * batch + k, 90) for k in range(batch)]}).encode()
        for c in range(clients)
    ]
    upload(server.port, token, json.dumps({"traces": [trace(0, 8)]}).encode())  # warm-up
    before = server.rss_kib()
    server.reset_peak_rss()
    threads = [threading.Thread(target=upload, args=(server.port, token, b)) for b in bodies]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    samples = []
    while any(thread.is_alive() for thread in threads):
        samples.append(server.rss_kib())
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    if VERBOSE:
        print("RSS MiB every 50 ms:", " ".join(f"{s / 1024:.0f}" for s in samples))
    elapsed = time.perf_counter() - began
    peak, after = server.peak_rss_kib(), server.rss_kib()
    print(
        f"{clients} concurrent uploads of {batch} traces ({len(bodies[0]) / 1e6:.1f} MB each) "
        f"to daphne in {elapsed:.1f} s: web process RSS {before / 1024:.0f} MiB before, "
        f"peak {peak / 1024:.0f} MiB (+{(peak - before) / 1024:.0f}), "
        f"{after / 1024:.0f} MiB after"
    )


if __name__ == "__main__":
    main()
