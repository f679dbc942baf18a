"""ASGI entry point: `daphne tunixops.asgi:application`.

Channels routes a run's live-log stream through `SseHandoff`, which lets Django answer the
handshake and then streams from the event loop without a thread per client (runs/sse.py);
everything else is plain Django.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunixops.settings")

# Set up Django before importing anything that touches models.
django_application = get_asgi_application()

from typing import Any, cast  # noqa: E402

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from artifacts.backpressure import with_backpressure  # noqa: E402
from runs.sse import SseHandoff  # noqa: E402

# django.urls.path() is typed for views; channels' URLRouter takes ASGI applications.
sse_logs = cast(Any, SseHandoff(django_application))  # type: ignore[arg-type]
# Streamed responses (artifact downloads, step zips) wait for slow clients instead of piling up
# in daphne's buffer; the SSE route applies its own flow control.
django_app = cast(Any, with_backpressure(cast(Any, django_application)))

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                path("api/tunix/runs/<str:run_id>/logs", sse_logs),
                re_path(r"", django_app),
            ]
        ),
    }
)
