"""How a delivery is signed. Django-free, so the README's verification example mirrors it.

The signature is HMAC-SHA256, keyed with the hook's secret, over `<timestamp>.<body>`: the exact
body bytes sent, prefixed with the Unix time in `X-TunixOps-Timestamp` and a dot. Signing the
timestamp too means a captured request cannot be replayed later with a fresh timestamp; a
receiver refuses timestamps older than a few minutes and dedupes on `X-TunixOps-Delivery`.
"""

import hashlib
import hmac

SIGNATURE_HEADER = "X-TunixOps-Signature"
TIMESTAMP_HEADER = "X-TunixOps-Timestamp"
DELIVERY_HEADER = "X-TunixOps-Delivery"
EVENT_HEADER = "X-TunixOps-Event"
USER_AGENT = "TunixOps-Webhooks/1"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-TunixOps-Signature` value: `sha256=<hex>`."""
    signed = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def headers(
    *, secret: str, timestamp: int, body: bytes, delivery_id: str, event: str
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }
