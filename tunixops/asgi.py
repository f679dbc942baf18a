"""ASGI entry point: `daphne tunixops.asgi:application`.

Channels routes a run's live-log stream and the run enqueue (for `mode=sync`) through `Handoff`,
which lets Django answer the handshake and then streams or waits from the event loop without a
thread or a database connection per client (runs/live/handoff.py); everything else is plain
Django.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunixops.settings")
# A process that serves requests borrows its connections from a bounded pool (settings.py).
os.environ.setdefault("TUNIX_DB_POOL", "true")

# Set up Django before importing anything that touches models.
django_application = get_asgi_application()

from typing import Any, cast  # noqa: E402

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from runs.live.handoff import Handoff  # noqa: E402
from tunixops.api.flow import with_backpressure  # noqa: E402

# django.urls.path() is typed for views; channels' URLRouter takes ASGI applications.
handoff = cast(Any, Handoff(django_application))  # type: ignore[arg-type]
# Streamed responses (artifact downloads, step zips) wait for slow clients instead of piling up
# in daphne's buffer; the SSE route applies its own flow control.
django_app = cast(Any, with_backpressure(cast(Any, django_application)))

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                path("api/tunix/runs/<str:run_id>/logs", handoff),
                path("api/tunix/run", handoff),
                re_path(r"", django_app),
            ]
        ),
    }
)
