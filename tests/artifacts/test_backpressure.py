"""The backpressure middleware under a real daphne: memory stays flat for a slow client."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.artifacts.asgi_apps import BODY_BYTES
from tests.artifacts.conftest import daphne_env
from tests.artifacts.servers import Daphne, open_stream, raw_request, read_slowly

MIB = 1024 * 1024
# 4 MB/s for 4 s: a client this slow has read ~16 MB of the 256 MiB body when the check runs.
SLOW_RATE = 4_000_000
SLOW_SECONDS = 4.0


@pytest.fixture(params=["plain", "wrapped"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daphne]:
    app = f"tests.artifacts.asgi_apps:{request.param}"
    with Daphne(env=daphne_env(tmp_path), workdir=tmp_path, app=app) as daphne:
        yield daphne


def slow_client_growth_mib(server: Daphne) -> tuple[float, int]:
    """Peak RSS growth of the server while a slow client reads, and the bytes it read."""
    raw_request(server.port, b"/", {"X-Body-Bytes": "1024"})  # warm up
    server.reset_peak_rss()
    before = server.rss_kib()
    sock, head = open_stream(server.port, "/")
    with sock:
        assert head.status == 200
        got = read_slowly(sock, SLOW_RATE, SLOW_SECONDS)
        growth = (server.peak_rss_kib() - before) / 1024
    return growth, got


def test_a_slow_client_holds_the_server_to_a_few_chunks_only_with_backpressure(
    server: Daphne,
) -> None:
    growth, got = slow_client_growth_mib(server)
    assert got > SLOW_RATE * SLOW_SECONDS / 3, "the client read too little to mean anything"
    if server.app.endswith(":wrapped"):
        assert growth < 16, f"grew {growth:.0f} MiB with backpressure"
    else:
        # Daphne alone: the body is copied into Twisted's buffer as fast as it is produced.
        assert growth > BODY_BYTES / MIB / 2, f"grew only {growth:.0f} MiB without backpressure"


def test_a_fast_client_gets_every_byte_through_the_middleware(tmp_path: Path) -> None:
    app = "tests.artifacts.asgi_apps:wrapped"
    with Daphne(env=daphne_env(tmp_path), workdir=tmp_path, app=app) as server:
        response = raw_request(server.port, b"/", {"X-Body-Bytes": str(64 * MIB + 5)})
        assert response.status == 200
        assert len(response.body) == 64 * MIB + 5
        assert set(response.body) == {ord("t")}


def test_keep_alive_requests_and_early_disconnects_leave_no_producer_behind(
    tmp_path: Path,
) -> None:
    app = "tests.artifacts.asgi_apps:wrapped"
    with Daphne(env=daphne_env(tmp_path), workdir=tmp_path, app=app) as server:
        sock, _ = open_stream(server.port, "/")
        with sock:
            read_slowly(sock, 10 * MIB, 0.5)
        # Two responses on one connection: the second can register its own producer only if
        # the first unregistered its one.
        sock, head = open_stream(server.port, "/", {"X-Body-Bytes": "300000"})
        with sock:
            rest = 300000 - len(head.body)
            assert read_slowly(sock, 1e9, 10, limit=rest) == rest
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Body-Bytes: 1000\r\n\r\n")
            second = b""
            while b"t" * 1000 not in second:
                second += sock.recv(65536)
            assert second.startswith(b"HTTP/1.1 200")
        assert raw_request(server.port, b"/", {"X-Body-Bytes": "10"}).body == b"t" * 10
    log = "".join(p.read_text() for p in tmp_path.glob("daphne-*.log"))
    assert "Traceback" not in log
    assert "Producer was not unregistered" not in log
