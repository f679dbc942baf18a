"""Python client of the TunixOps API; the `tunixops` command is built on it.

from tunixops_client import Client
with Client("http://127.0.0.1:8000", token) as client:
    run = client.runs.create("tiny_sft", config={"max_steps": 20})
    for item in client.runs.follow(run.id):
        print(item)
"""

__version__ = "0.1.0"

from tunixops_client.client import Client, TracePushError, login
from tunixops_client.errors import (
    ApiError,
    AuthenticationFailed,
    ConfigurationError,
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    TooLarge,
    TransportError,
    TunixOpsError,
    Unavailable,
    UnsafePathError,
)
from tunixops_client.models import (
    Artifact,
    ConfigKey,
    Download,
    LogLine,
    MetricPoint,
    PushResult,
    Recipe,
    Run,
    RunStatus,
)

__all__ = [
    "ApiError",
    "Artifact",
    "AuthenticationFailed",
    "Client",
    "ConfigKey",
    "ConfigurationError",
    "Conflict",
    "Download",
    "IntegrityError",
    "InvalidInput",
    "LogLine",
    "MetricPoint",
    "NotFound",
    "PermissionDenied",
    "PushResult",
    "RateLimited",
    "Recipe",
    "Run",
    "RunStatus",
    "ServerError",
    "TooLarge",
    "TracePushError",
    "TransportError",
    "TunixOpsError",
    "Unavailable",
    "UnsafePathError",
    "login",
]
