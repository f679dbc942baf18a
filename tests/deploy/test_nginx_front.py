"""deploy/nginx.conf in front of a daphne with deploy/production.env's hardening: TLS, the http
to https redirect, HSTS and secure cookies, limit_req on the login pages and the API, and
slow clients dropped. Real nginx, real daphne, real sockets."""

import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.artifacts.conftest import daphne_env
from tests.artifacts.servers import NGINX_BIN, Daphne, Nginx

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(NGINX_BIN).exists(), reason="nginx is not installed"),
]

HARDENED = {
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "TUNIX_TRUST_X_FORWARDED_PROTO": "true",
    "TUNIX_SSL_REDIRECT": "true",
    "TUNIX_SECURE_COOKIES": "true",
    "TUNIX_HSTS_SECONDS": "3600",
    "TUNIX_HSTS_INCLUDE_SUBDOMAINS": "true",
}


@pytest.fixture
def front(django_db_setup: Any, tmp_path: Path, artifact_root: Path) -> Iterator[Nginx]:
    """A fresh nginx (its rate-limit counters start empty) before a hardened daphne."""
    env = daphne_env(artifact_root, **HARDENED)
    (tmp_path / "daphne").mkdir()
    with (
        Daphne(env=env, workdir=tmp_path / "daphne") as web,
        Nginx(
            upstream_port=web.port, artifact_root=artifact_root, workdir=tmp_path / "nginx"
        ) as proxy,
    ):
        yield proxy


def tls_client(proxy: Nginx) -> httpx.Client:
    cert = proxy.workdir / "tls" / "fullchain.pem"
    return httpx.Client(base_url=proxy.tls_url, verify=ssl.create_default_context(cafile=cert))


def test_plain_http_is_redirected_to_https_except_for_probes(front: Nginx) -> None:
    page = httpx.get(f"{front.base_url}/accounts/login/", timeout=30)
    assert page.status_code == 301
    # Django keeps the Host the client sent; on the standard ports (production) that is the
    # https URL of the same page.
    assert page.headers["location"] == f"https://127.0.0.1:{front.port}/accounts/login/"
    assert httpx.get(f"{front.base_url}/healthz", timeout=30).status_code == 200


def test_over_tls_the_login_works_with_hsts_csp_and_secure_cookies(
    front: Nginx, make_user: Any
) -> None:
    make_user("tess")
    with tls_client(front) as client:
        page = client.get("/accounts/login/")
        assert page.status_code == 200
        assert page.headers["strict-transport-security"] == "max-age=3600; includeSubDomains"
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        csrf = client.cookies["csrftoken"]
        assert "secure" in page.headers["set-cookie"].lower()
        login = client.post(
            "/accounts/login/",
            data={"username": "tess", "password": "tess-password-1", "csrfmiddlewaretoken": csrf},
            headers={"Referer": f"{front.tls_url}/accounts/login/"},
        )
        assert login.status_code == 302, login.text
        session = [c for c in login.headers.get_list("set-cookie") if c.startswith("sessionid=")]
        assert session and "Secure" in session[0] and "HttpOnly" in session[0]
        assert client.get("/runs/").status_code == 200


def test_one_address_hammering_the_login_page_gets_429_from_nginx(front: Nginx) -> None:
    with tls_client(front) as client:
        statuses = [client.get("/accounts/login/").status_code for _ in range(25)]
    # rate 10/min, burst 10: the first 11 pass, the rest wait their turn as 429s.
    assert statuses[:11] == [200] * 11
    assert statuses[11:] == [429] * 14


@pytest.mark.slow
def test_one_address_flooding_the_api_gets_429_in_the_json_error_shape(front: Nginx) -> None:
    def hit(_: int) -> httpx.Response:
        with httpx.Client(base_url=front.base_url, timeout=30) as client:
            for _ in range(100):
                response = client.get("/api/tunix/runs")
                if response.status_code == 429:
                    return response
        return response

    # 16 clients x up to 100 requests: far past 50/s with a burst of 200 unless daphne answered
    # fewer than 50 requests a second.
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(hit, range(16)))
    limited = [r for r in answers if r.status_code == 429]
    assert limited, [r.status_code for r in answers]
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert limited[0].headers["retry-after"] == "1"


@pytest.mark.slow
def test_a_client_that_never_finishes_its_request_is_dropped(front: Nginx) -> None:
    with socket.create_connection(("127.0.0.1", front.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        started = time.monotonic()
        # nginx closes it after client_header_timeout (10 s) instead of waiting forever.
        assert sock.recv(1024) == b""
        waited = time.monotonic() - started
    assert 8 <= waited <= 20, waited
