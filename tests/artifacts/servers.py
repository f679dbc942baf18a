"""Real servers for download tests and the bench: daphne subprocesses and an nginx in front.

Each server listens on a free loopback port that the OS picks and is stopped by the caller
(`stop()`, or the context manager); nothing is left running.
"""

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.tls_selfsigned import write_selfsigned

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deploy" / "nginx.conf"
NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen within {timeout} s:\n{log.read_text()}")


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status value in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class Daphne:
    env: dict[str, str]
    workdir: Path
    app: str = "tunixops.asgi:application"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.workdir / f"daphne-{self.port}.log"

    def start(self) -> "Daphne":
        log = self.log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), self.app],
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_listening(self.port, self.proc, log, timeout=30)
        # One request loads the URLconf and views, so memory baselines and first-request
        # timings measured by callers start from a warm process.
        healthz = f"{self.base_url}/healthz"
        with urllib.request.urlopen(healthz, timeout=30) as response:  # noqa: S310 (loopback http)
            assert response.status == 200
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def rss_kib(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def reset_peak_rss(self) -> None:
        """Linux resets VmHWM to the current RSS when 5 is written to clear_refs."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def __enter__(self) -> "Daphne":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def render_nginx_conf(
    *,
    listen_port: int,
    tls_port: int,
    upstream: str,
    artifact_root: Path,
    workdir: Path,
    direct_root: Path | None = None,
) -> str:
    """deploy/nginx.conf with this machine's ports and paths in place of the compose ones, and a
    self-signed certificate made by deploy/tls_selfsigned.py, as compose's `tls` service does.

    Every substitution must hit exactly once, so the test keeps exercising the file as shipped.
    """
    text = NGINX_CONF.read_text()
    tls_dir = workdir / "tls"
    write_selfsigned(tls_dir, ["127.0.0.1", "localhost"])
    replacements = [
        (r"listen 80;", f"listen 127.0.0.1:{listen_port};"),
        (r"listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;"),
        (r"/etc/nginx/tls/fullchain\.pem", f"{tls_dir}/fullchain.pem"),
        (r"/etc/nginx/tls/privkey\.pem", f"{tls_dir}/privkey.pem"),
        (r"server web:8000;", f"server {upstream};"),
        (r"alias /var/lib/tunixops/artifacts/;", f"alias {artifact_root}/;"),
        (r"pid /run/nginx\.pid;", f"pid {workdir}/nginx.pid;"),
        (r"error_log /dev/stderr warn;", f"error_log {workdir}/error.log warn;"),
        (r"access_log /dev/stdout tunixops;", f"access_log {workdir}/access.log tunixops;"),
    ]
    for pattern, value in replacements:
        text, count = re.subn(pattern, value, text)
        if count != 1:
            raise AssertionError(f"deploy/nginx.conf: {pattern!r} matched {count} times")
    # The compose container runs nginx as root and its workers as nginx; here the tests' files
    # live in a private temporary directory, so the workers run as the current user.
    user = "" if os.geteuid() else "user root;\n"
    temp = "".join(
        f"    {kind}_temp_path {workdir}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = user + text.replace("http {\n", "http {\n" + temp, 1)
    if direct_root is not None:
        # A second server block serving the same files straight from disk: the bench's yardstick.
        direct = (
            "    server {\n"
            f"        listen 127.0.0.1:{direct_root_port(listen_port)};\n"
            f"        root {direct_root};\n"
            "    }\n"
        )
        text = text.rstrip().removesuffix("}") + direct + "}\n"
    return text


def direct_root_port(listen_port: int) -> int:
    return listen_port + 1


@dataclass
class Nginx:
    upstream_port: int
    artifact_root: Path
    workdir: Path
    direct_root: Path | None = None
    port: int = 0
    tls_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    # More daphne processes behind the same upstream, as compose's replicas.
    more_upstream_ports: tuple[int, ...] = ()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def start(self) -> "Nginx":
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            self.port = free_port()
            if self.direct_root is None or _port_free(direct_root_port(self.port)):
                break
        self.tls_port = free_port()
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            render_nginx_conf(
                listen_port=self.port,
                tls_port=self.tls_port,
                upstream=";\n        server ".join(
                    f"127.0.0.1:{port}" for port in (self.upstream_port, *self.more_upstream_ports)
                ),
                artifact_root=self.artifact_root,
                workdir=self.workdir,
                direct_root=self.direct_root,
            )
        )
        log = self.workdir / "error.log"
        log.touch()
        test = subprocess.run(
            [NGINX_BIN, "-t", "-q", "-c", str(conf), "-p", str(self.workdir)],
            capture_output=True,
            check=False,
        )
        if test.returncode:
            raise RuntimeError(f"nginx -t failed: {test.stderr.decode()}")
        self.proc = subprocess.Popen(
            [NGINX_BIN, "-c", str(conf), "-p", str(self.workdir), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port, self.proc, log, timeout=10)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # QUIT lets the master stop its workers; they would outlive a KILLed master.
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> "Nginx":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- raw HTTP ----------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(
    port: int, target: bytes, headers: dict[str, str] | None = None, method: bytes = b"GET"
) -> RawResponse:
    """Send exactly this request line (no normalisation of `..` or escapes, unlike HTTP client
    libraries) and read the whole response."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = bytearray()
        while chunk := sock.recv(1 << 20):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(status=int(status_line.split()[1]), headers=parsed, body=body)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stream_download(
    url: str, token: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> Iterator[bytes]:
    import httpx

    with httpx.stream(
        "GET",
        url,
        headers={"Authorization": f"Token {token}", **(headers or {})},
        timeout=60,
        **kwargs,
    ) as response:
        response.raise_for_status()
        yield from response.iter_raw()


def open_stream(
    port: int, target: str, headers: dict[str, str] | None = None, rcvbuf: int = 64 * 1024
) -> tuple[socket.socket, RawResponse]:
    """Send a GET and read only the response head; the caller reads the body at its own pace."""
    sock = socket.socket()
    # A small receive buffer so the kernel cannot soak up the response on the client's behalf.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(30)
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return sock, RawResponse(status=int(status_line.split()[1]), headers=parsed, body=rest)


def read_slowly(sock: socket.socket, rate: float, seconds: float, limit: int | None = None) -> int:
    """Read at about `rate` bytes/s for `seconds` (or until `limit` bytes); returns bytes read."""
    got = 0
    started = time.monotonic()
    piece = max(1024, int(rate / 100))
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= seconds or (limit is not None and got >= limit):
            return got
        if got > rate * elapsed:
            time.sleep(min(0.01, (got - rate * elapsed) / rate))
            continue
        chunk = sock.recv(piece if limit is None else min(piece, limit - got))
        if not chunk:
            return got
        got += len(chunk)
