"""Plumbing shared by the SSE bench scripts: a daphne process, a token, process figures."""

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import REPO

sys.path.insert(0, str(REPO))

from tests.artifacts.servers import Daphne, proc_status

__all__ = ["bench_token", "daphne", "proc_status"]


@contextmanager
def daphne(env: dict[str, str], **extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`daphne tunixops.asgi:application` on a loopback port; stopped on exit."""
    with (
        tempfile.TemporaryDirectory() as logs,
        Daphne(env={**env, **extra}, workdir=Path(logs)) as server,
    ):
        assert server.proc is not None
        yield server.base_url, server.proc


def bench_token() -> str:
    """A token for a throwaway user (Django must be set up)."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user, _ = get_user_model().objects.get_or_create(username="bench")
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)
