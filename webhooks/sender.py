"""One HTTP POST to a webhook's URL, safe against server-side request forgery. Django-free.

A hook's host is resolved once per delivery; unless private targets are allowed, every address
it resolves to must be public (not loopback, private, link-local, multicast, reserved or
otherwise non-global, also when embedded in IPv6), and the request connects to one of exactly
those addresses. The name is never looked up again by the HTTP client, so a DNS answer that
changes between the check and the connection (rebinding) cannot reach an internal service. TLS
still verifies the certificate against the host name (SNI), and redirects are not followed.

The whole exchange, connect to the last byte read, is bounded by `timeout`: a receiver that
trickles its answer is cut off like one that never answers.
"""

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

SCHEMES = ("http", "https")
MAX_URL_CHARS = 2000
# What is kept of a receiver's answer for the delivery log.
RESPONSE_SNIPPET_BYTES = 1000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTarget(ValueError):
    """The URL is not one a webhook may call (bad syntax, or a refused address)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


@dataclass(frozen=True)
class Result:
    status: int | None  # the HTTP status, None when no answer came
    error: str  # empty on a 2xx
    seconds: float
    response: str = ""  # the start of the answer's body
    retry_after: float | None = None
    refused: bool = False  # the address was refused (SSRF guard): nothing was sent

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def parse_url(url: str) -> Target:
    """The parts of a webhook URL, or UnsafeTarget saying what is wrong with it."""
    if len(url) > MAX_URL_CHARS:
        raise UnsafeTarget(f"At most {MAX_URL_CHARS} characters.")
    if any(ord(c) < 0x21 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in url):
        raise UnsafeTarget("No spaces, control characters or NUL bytes.")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"Not a valid URL: {exc}.") from None
    if parts.scheme.lower() not in SCHEMES:
        raise UnsafeTarget("Only http:// and https:// URLs.")
    if not parts.hostname:
        raise UnsafeTarget("The URL needs a host.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget(
            "No user or password in the URL: receivers check the signature (or a token in "
            "the query string)."
        )
    scheme = parts.scheme.lower()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = 443 if scheme == "https" else 80
    return Target(scheme=scheme, host=parts.hostname, port=port or default, path=path)


def refused_because(address: IPAddress) -> str | None:
    """Why a hook may not reach this address, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 is judged as itself.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in ipaddress.IPv6Network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refused_because(embedded)
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:
        return "not globally routable"
    return None


Resolved = list[tuple[int, tuple[str, int] | tuple[str, int, int, int]]]


def resolve(host: str, port: int, *, allow_private: bool) -> Resolved:
    """The addresses to connect to (family, sockaddr); UnsafeTarget if any is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeTarget(f"Cannot resolve {host!r}: {exc}.") from None
    found: Resolved = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        reason = None if allow_private else refused_because(address)
        if reason is not None:
            # One refused address is enough: a name that also resolves inside is not trusted.
            raise UnsafeTarget(f"{host!r} resolves to {address}, a {reason} address.")
        found.append((family, sockaddr))  # type: ignore[arg-type]
    if not found:
        raise UnsafeTarget(f"Cannot resolve {host!r} to an IP address.")
    return found


def check(url: str, *, allow_private: bool) -> Target:
    """What registration checks: the syntax, and (unless allowed) where the name points now."""
    target = parse_url(url)
    if not allow_private:
        resolve(target.host, target.port, allow_private=False)
    return target


def _connect(addresses: Resolved, timeout: float) -> socket.socket:
    error: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    assert error is not None
    raise error


class _PinnedHTTP(http.client.HTTPConnection):
    """Sends `Host: <name>` but connects only to the addresses checked beforehand."""

    def __init__(self, target: Target, addresses: Resolved, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.addresses = addresses

    def connect(self) -> None:
        self.sock = _connect(self.addresses, self.timeout)  # type: ignore[arg-type]


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(
        self, target: Target, addresses: Resolved, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self.addresses = addresses
        self.tls = context

    def connect(self) -> None:
        raw = _connect(self.addresses, self.timeout)  # type: ignore[arg-type]
        # SNI and certificate checks use the host name, not the address connected to.
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def post(
    url: str, body: bytes, headers: dict[str, str], *, timeout: float, allow_private: bool
) -> Result:
    """POST `body` to `url`; never raises for what the network or the receiver does."""
    started = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - started

    try:
        target = parse_url(url)
        addresses = resolve(target.host, target.port, allow_private=allow_private)
    except UnsafeTarget as exc:
        return Result(status=None, error=f"refused: {exc}", seconds=elapsed(), refused=True)
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = _PinnedHTTPS(target, addresses, timeout, ssl.create_default_context())
    else:
        conn = _PinnedHTTP(target, addresses, timeout)
    timed_out = threading.Event()

    def cut_off() -> None:
        timed_out.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # The socket timeout bounds each read; this bounds the whole exchange.
    deadline = threading.Timer(timeout, cut_off)
    deadline.daemon = True
    deadline.start()
    try:
        conn.request("POST", target.path, body=body, headers=headers)
        response = conn.getresponse()
        snippet = response.read(RESPONSE_SNIPPET_BYTES)
        status = response.status
        retry_after = _retry_after(response.getheader("Retry-After"))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if timed_out.is_set() or isinstance(exc, TimeoutError):
            error = f"timed out after {timeout:g} s"
        else:
            error = _describe(exc)
        return Result(status=None, error=error, seconds=elapsed())
    finally:
        deadline.cancel()
        conn.close()
    text = snippet.decode("utf-8", errors="replace")
    if 200 <= status < 300:
        return Result(status=status, error="", seconds=elapsed(), response=text)
    error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
    return Result(
        status=status, error=error, seconds=elapsed(), response=text, retry_after=retry_after
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
