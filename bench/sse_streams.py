"""How many concurrent SSE streams one daphne process holds, and what each one costs.

Opens streams in steps (spread over --runs running runs) from one asyncio client, each reading
continuously as a browser would. At each step it prints daphne's memory per stream, its thread
count and the database connections it holds, the latency of a plain API call while those streams
are open, and how long one new chunk per run takes to reach every stream. Median of --repeat
rounds, each against a fresh daphne.

    python bench/sse_streams.py [--steps 500,1000,2000] [--runs 20] [--repeat 3]

With --processes N (and --streams, default 8,000) it runs the production layout instead: N
daphne processes behind deploy/nginx.conf's nginx, the streams opened through nginx from many
loopback addresses (nginx limits each address). Every stream must receive every line (counted);
it reports the fan-out p50/p99, the API p99 through nginx, and the client's own CPU share, since
on 2 cores the client competes with the servers it measures.

    python bench/sse_streams.py --processes 4 --streams 8000 [--lines 5] [--repeat 3]
"""

import argparse
import asyncio
import contextlib
import os
import resource
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import median, percentile, scratch_database, setup_django
from sse_common import bench_token, daphne, proc_status

from tests.artifacts.servers import Daphne, Nginx

CONNECT_BATCH = 50


class Stream:
    """One raw HTTP/1.1 SSE connection that reads everything and notes when a marker arrives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.marker = b""
        self.seen_at = 0.0
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        tail = b""
        while data := await self.reader.read(65536):
            window = tail + data
            if self.marker and self.marker in window and not self.arrived.is_set():
                self.seen_at = time.monotonic()
                self.arrived.set()
            tail = window[-64:]

    def expect(self, marker: bytes) -> None:
        self.marker = marker
        self.arrived.clear()

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


async def open_stream(
    host: str, port: int, path: str, token: str, source: str | None = None
) -> Stream:
    local = None if source is None else (source, 0)
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Token {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"event: status")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return Stream(reader, writer)


def api_latencies(url: str, token: str, run_id: str, count: int = 50) -> list[float]:
    out = []
    with httpx.Client(timeout=30, headers={"Authorization": f"Token {token}"}) as client:
        for _ in range(count):
            began = time.perf_counter()
            assert client.get(f"{url}/api/tunix/runs/{run_id}/status").status_code == 200
            out.append(time.perf_counter() - began)
    return out


def pg_connections(dbname: str) -> int:
    """Connections to the bench database but this one: daphne's, once the bench closed its own."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [dbname],
        )
        return int(cursor.fetchone()[0])


def append_marker(runs: list[str], seq: dict[str, int], marker: str) -> dict[str, float]:
    """One chunk per run, written and announced the way the worker does it; when each run's
    line was committed and announced (the fan-out of a line is timed from there)."""
    from runs.live import notify
    from runs.models import LogChunk

    announced = {}
    for run_id in runs:
        seq[run_id] += 1
        LogChunk.objects.create(run_id=run_id, seq=seq[run_id], stream="stdout", chunk=marker)
        notify.logs_appended(uuid.UUID(run_id), seq[run_id])
        announced[run_id] = time.monotonic()
    return announced


async def one_round(
    url: str, pid: int, token: str, runs: list[str], steps: list[int]
) -> list[dict[str, float]]:
    from django.db import connection

    # Django's database calls are synchronous: one thread keeps one connection for them.
    db = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    host, port = url.removeprefix("http://").split(":")
    streams: list[tuple[str, Stream]] = []
    base_rss = proc_status(pid, "VmRSS")
    base_threads = proc_status(pid, "Threads")
    results: list[dict[str, float]] = []
    seq = {run_id: 0 for run_id in runs}
    for step in steps:
        while len(streams) < step:
            batch = min(CONNECT_BATCH, step - len(streams))
            chosen = [runs[(len(streams) + i) % len(runs)] for i in range(batch)]
            opened = await asyncio.gather(
                *(open_stream(host, int(port), f"/api/tunix/runs/{r}/logs", token) for r in chosen)
            )
            streams.extend(zip(chosen, opened, strict=True))
        await asyncio.sleep(1)
        rss = proc_status(pid, "VmRSS")
        threads = proc_status(pid, "Threads")
        api = await asyncio.to_thread(api_latencies, url, token, runs[0])
        marker = f"fanout-{step}".encode()
        for _, stream in streams:
            stream.expect(marker)
        began = time.monotonic()
        announced = await loop.run_in_executor(db, append_marker, runs, seq, f"{marker.decode()}\n")
        await asyncio.wait_for(asyncio.gather(*(s.arrived.wait() for _, s in streams)), timeout=60)
        # From the commit of each run's line, and (as the first figures did) from before the
        # bench began writing the 20 lines one after the other.
        fanout = [s.seen_at - announced[run_id] for run_id, s in streams]
        fanout_all = [s.seen_at - began for _, s in streams]
        results.append(
            {
                "streams": step,
                "kib_per_stream": (rss - base_rss) / step,
                "rss_mib": rss / 1024,
                "threads": threads - base_threads,
                "db_connections": await loop.run_in_executor(
                    db, pg_connections, connection.settings_dict["NAME"]
                ),
                "api_p50_ms": percentile(api, 50) * 1000,
                "api_p99_ms": percentile(api, 99) * 1000,
                "fanout_p50_ms": percentile(fanout, 50) * 1000,
                "fanout_p99_ms": percentile(fanout, 99) * 1000,
                "fanout_max_ms": max(fanout) * 1000,
                "written_p50_ms": percentile(fanout_all, 50) * 1000,
                "written_max_ms": max(fanout_all) * 1000,
            }
        )
        r = results[-1]
        print(
            f"  {step:>5} streams: {r['kib_per_stream']:.1f} KiB/stream (daphne RSS "
            f"{r['rss_mib']:.0f} MiB), +{r['threads']} threads, {r['db_connections']} DB "
            f"connections, API p50 {r['api_p50_ms']:.1f} ms p99 {r['api_p99_ms']:.1f} ms, "
            f"one line to every stream p50 {r['fanout_p50_ms']:.0f} ms p99 "
            f"{r['fanout_p99_ms']:.0f} ms max {r['fanout_max_ms']:.0f} ms (from the first write: "
            f"p50 {r['written_p50_ms']:.0f} ms max {r['written_max_ms']:.0f} ms)",
            flush=True,
        )
    for _, stream in streams:
        stream.close()
    db.shutdown()
    return results


# -- several daphne processes behind nginx --------------------------------------------------------

# nginx allows 50 API requests a second per client address (deploy/nginx.conf): the bench's
# streams come from this many loopback addresses, as from many browsers.
SOURCES = 64


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *(int(c) for c in children)]


async def multi_round(
    url: str, server_pids: list[int], token: str, runs: list[str], total: int, lines: int
) -> dict[str, float]:
    db = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    host, port = url.removeprefix("http://").split(":")
    streams: list[Stream] = []
    while len(streams) < total:
        batch = min(100, total - len(streams))
        base = len(streams)
        streams.extend(
            await asyncio.gather(
                *(
                    open_stream(
                        host,
                        int(port),
                        f"/api/tunix/runs/{runs[(base + i) % len(runs)]}/logs",
                        token,
                        source=f"127.0.0.{2 + (base + i) % SOURCES}",
                    )
                    for i in range(batch)
                )
            )
        )
    await asyncio.sleep(2)
    seq = {run_id: 0 for run_id in runs}
    fanout: list[float] = []
    received = 0
    cpu_client = time.process_time()
    cpu_servers = sum(cpu_seconds(pid) for pid in server_pids)
    wall = time.monotonic()
    for line in range(lines):
        marker = f"multi-{total}-{line}".encode()
        for stream in streams:
            stream.expect(marker)
        announced = await loop.run_in_executor(db, append_marker, runs, seq, f"{marker.decode()}\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.arrived.wait() for s in streams)), timeout=60)
        for i, stream in enumerate(streams):
            if stream.arrived.is_set():
                received += 1
                fanout.append(stream.seen_at - announced[runs[i % len(runs)]])
        await asyncio.sleep(1)
    wall = time.monotonic() - wall
    cpu_client = time.process_time() - cpu_client
    cpu_servers = sum(cpu_seconds(pid) for pid in server_pids) - cpu_servers
    api = await asyncio.to_thread(api_latencies, url, token, runs[0])
    for stream in streams:
        stream.close()
    db.shutdown()
    result = {
        "streams": total,
        "received": received,
        "expected": total * lines,
        "fanout_p50_ms": percentile(fanout, 50) * 1000,
        "fanout_p99_ms": percentile(fanout, 99) * 1000,
        "api_p50_ms": percentile(api, 50) * 1000,
        "api_p99_ms": percentile(api, 99) * 1000,
        "client_cpu_share": cpu_client / (cpu_client + cpu_servers),
        "client_cores": cpu_client / wall,
    }
    print(
        f"  {total} streams: {received:,} of {total * lines:,} lines received, fan-out p50 "
        f"{result['fanout_p50_ms']:.0f} ms p99 {result['fanout_p99_ms']:.0f} ms, API p50 "
        f"{result['api_p50_ms']:.1f} ms p99 {result['api_p99_ms']:.1f} ms, client CPU "
        f"{result['client_cpu_share']:.0%} of all CPU used ({result['client_cores']:.2f} cores)",
        flush=True,
    )
    return result


def multi_process(
    args: argparse.Namespace, env: dict[str, str], token: str, runs: list[str]
) -> None:
    from django.db import connection

    from runs.models import LogChunk

    server_env = {
        **env,
        "TUNIX_SSE_MAX_STREAMS_PER_USER": "1000000",
        # Four processes share the bench machine's PostgreSQL with others: a small pool each.
        "TUNIX_DB_POOL_MAX": "4",
        "TUNIX_DB_POOL_TIMEOUT": "30",
    }
    rounds = []
    for _ in range(args.repeat):
        LogChunk.objects.filter(run_id__in=runs).delete()
        connection.close()
        with contextlib.ExitStack() as stack:
            logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            servers = [
                stack.enter_context(Daphne(env=server_env, workdir=logs))
                for _ in range(args.processes)
            ]
            nginx = stack.enter_context(
                Nginx(
                    upstream_port=servers[0].port,
                    more_upstream_ports=tuple(s.port for s in servers[1:]),
                    artifact_root=Path(env["TUNIX_ARTIFACT_ROOT"]),
                    workdir=logs / "nginx",
                )
            )
            assert nginx.proc is not None
            pids = [s.pid for s in servers] + nginx_pids(nginx.proc.pid)
            time.sleep(1)
            rounds.append(
                asyncio.run(
                    multi_round(nginx.base_url, pids, token, runs, args.streams, args.lines)
                )
            )

    def med(key: str) -> float:
        return median([r[key] for r in rounds])

    print(
        f"{args.streams} SSE streams over {args.processes} daphne processes behind nginx (median "
        f"of {args.repeat}): every stream received every line: "
        f"{'yes' if all(r['received'] == r['expected'] for r in rounds) else 'NO'} "
        f"({min(r['received'] for r in rounds):,.0f} of {args.streams * args.lines:,} at worst), "
        f"fan-out p50 {med('fanout_p50_ms'):.0f} ms / p99 {med('fanout_p99_ms'):.0f} ms, "
        f"API p50 {med('api_p50_ms'):.1f} ms / p99 {med('api_p99_ms'):.1f} ms, "
        f"client {med('client_cpu_share'):.0%} of the CPU used ({med('client_cores'):.2f} cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="500,1000,2000")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes", type=int, default=0)
    parser.add_argument("--streams", type=int, default=8000)
    parser.add_argument("--lines", type=int, default=5)
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    # Each stream is a socket in this process and in daphne (which inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(*steps, args.streams if args.processes else 0) + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    with tempfile.TemporaryDirectory() as tmp, scratch_database(Path(tmp)) as env:
        setup_django(env)
        from runs.models import Run, RunStatus

        token = bench_token()
        runs = [
            str(
                Run.objects.create(recipe="child", timeout_seconds=600, status=RunStatus.RUNNING).pk
            )
            for _ in range(args.runs)
        ]
        if args.processes:
            multi_process(args, env, token, runs)
            return
        from django.db import connection

        from runs.models import LogChunk

        rounds = []
        for _ in range(args.repeat):
            LogChunk.objects.filter(run_id__in=runs).delete()
            connection.close()
            # One bench user opens every stream: no per-user cap here.
            with daphne(env, TUNIX_SSE_MAX_STREAMS_PER_USER="1000000") as (url, proc):
                time.sleep(1)
                rounds.append(asyncio.run(one_round(url, proc.pid, token, runs, steps)))
        for i, step in enumerate(steps):

            def med(key: str, i: int = i) -> float:
                return median([r[i][key] for r in rounds])

            print(
                f"{step} concurrent SSE streams on one daphne (median of {args.repeat}): "
                f"{med('kib_per_stream'):.1f} KiB per stream, "
                f"+{med('threads'):.0f} threads, {med('db_connections'):.0f} DB connections, "
                f"API p50 {med('api_p50_ms'):.1f} ms / p99 {med('api_p99_ms'):.1f} ms, "
                f"fan-out from each line's commit p50 {med('fanout_p50_ms'):.0f} ms / p99 "
                f"{med('fanout_p99_ms'):.0f} ms / max {med('fanout_max_ms'):.0f} ms; from before "
                f"the 20 lines were written p50 {med('written_p50_ms'):.0f} ms / max "
                f"{med('written_max_ms'):.0f} ms"
            )


if __name__ == "__main__":
    main()
