"""One user cannot exhaust PostgreSQL connections: hundreds of live-log stream opens at 40 a
second and 60 `mode=sync` waits, against one daphne with a pool of 8 (issue 13, section 2).

Before the pool and the caps, the same load gave 58 of 300 handshakes a 500 (`too many clients
already`), and `/healthz` took up to 9.4 s; 30 sync waits held 32 connections for their whole wait.
"""

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from runs.live.hub import LISTEN_APPLICATION_NAME
from runs.models import RunStatus
from tests.sse.conftest import daphne
from tests.sse.rawclient import OpenStream, RawResponse, client_loop, request

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

POOL = 8
STREAMS = 300
OPENS_PER_SECOND = 40
SYNC_WAITS = 60
WAIT_SECONDS = 6
PROBE_INTERVAL = 0.05

# /healthz probed as a monitor would: from a process of its own (not the test's event loop, busy
# with 360 clients, nor coverage's tracer), one request at a time until its stdin closes; it
# prints each answer's status and seconds.
PROBE = """
import http.client, json, select, sys, time
host, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
answers = []
while not select.select([sys.stdin], [], [], interval)[0]:
    began = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    response.read()
    conn.close()
    answers.append((response.status, time.monotonic() - began))
print(json.dumps(answers))
"""


def web_connections() -> int:
    """The web process's connections to the test database: all but its LISTEN one and ours."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name <> %s AND pid <> pg_backend_pid()",
            [connection.settings_dict["NAME"], LISTEN_APPLICATION_NAME],
        )
        return int(cursor.fetchone()[0])


def test_a_flood_of_streams_and_sync_waits_stays_within_the_pool(
    tmp_path: Path, alice: Any, make_run: Any
) -> None:
    token = str(Token.objects.create(user=alice).key)
    run = make_run(status=RunStatus.RUNNING)
    body = json.dumps({"recipe": "tiny_sft", "config": {"max_steps": 5}}).encode()
    with (
        daphne(
            tmp_path,
            # /healthz's p99 bound is the product's latency under the flood, not that of
            # coverage's tracer: empty, this keeps coverage from starting in the server.
            COVERAGE_PROCESS_CONFIG="",
            TUNIX_DB_POOL_MAX=str(POOL),
            TUNIX_DB_POOL_TIMEOUT="2",
            TUNIX_SYNC_WAITS_PER_USER=str(SYNC_WAITS),
        ) as server,
        client_loop() as clients,
    ):
        host, port = server.url.removeprefix("http://").split(":")
        streams: list[OpenStream] = []

        async def open_streams() -> None:
            for _ in range(STREAMS):
                streams.append(
                    OpenStream().start(host, int(port), f"/api/tunix/runs/{run.pk}/logs", token)
                )
                await asyncio.sleep(1 / OPENS_PER_SECOND)
            await asyncio.wait_for(asyncio.gather(*(s.headed.wait() for s in streams)), 30)

        async def sync_waits() -> list[RawResponse]:
            path = f"/api/tunix/run?mode=sync&wait_seconds={WAIT_SECONDS}"
            pending = []
            for _ in range(SYNC_WAITS):
                pending.append(
                    asyncio.create_task(
                        request(host, int(port), "POST", path, token, body=body, timeout=40)
                    )
                )
                await asyncio.sleep(STREAMS / OPENS_PER_SECOND / SYNC_WAITS)
            return list(await asyncio.gather(*pending))

        async def scenario() -> list[RawResponse]:
            answers, _ = await asyncio.gather(sync_waits(), open_streams())
            return answers

        async def warm_up() -> None:
            # A server's first stream and first sync wait load what they use (~0.25 s of
            # imports and set-up): done before the flood, as any server in service has.
            first = OpenStream().start(host, int(port), f"/api/tunix/runs/{run.pk}/logs", token)
            await asyncio.wait_for(first.headed.wait(), 30)
            first.close()
            path = "/api/tunix/run?mode=sync&wait_seconds=0.1"
            answer = await request(host, int(port), "POST", path, token, body=body, timeout=30)
            assert answer.status == 202

        asyncio.run_coroutine_threadsafe(warm_up(), clients.loop).result(60)

        environ = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
        prober = subprocess.Popen(
            [sys.executable, "-c", PROBE, host, port, str(PROBE_INTERVAL)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environ,
        )
        try:
            began = time.monotonic()
            running = asyncio.run_coroutine_threadsafe(scenario(), clients.loop)
            most = 0
            while not running.done():
                most = max(most, web_connections())
                time.sleep(0.1)
            answers = running.result()
            took = time.monotonic() - began
            probed, _ = prober.communicate(b"stop\n", timeout=60)
        finally:
            prober.kill()
            prober.wait()
        for stream in streams:
            stream.close()

    opened = [s.status for s in streams]
    waited = [a.status for a in answers]
    probes = json.loads(probed)
    assert {status for status, _ in probes} == {200}
    health = sorted(seconds for _, seconds in probes)
    assert len(health) >= 100
    p99 = health[math.ceil(len(health) * 0.99) - 1]  # nearest rank
    print(
        f"\n{STREAMS} stream opens at {OPENS_PER_SECOND}/s + {SYNC_WAITS} sync waits in "
        f"{took:.1f} s: streams 200 x{opened.count(200)}, 429 x{opened.count(429)}, "
        f"503 x{opened.count(503)}; sync 200 x{waited.count(200)}, 202 x{waited.count(202)}, "
        f"429 x{waited.count(429)}, 503 x{waited.count(503)}; web connections at most {most} "
        f"(pool {POOL}); /healthz p50 {health[len(health) // 2] * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms over {len(health)} probes"
    )
    assert set(opened) <= {200, 429, 503}
    assert set(waited) <= {200, 202, 429, 503}
    assert opened.count(200) <= 50
    assert most <= POOL
    assert p99 < 0.5
