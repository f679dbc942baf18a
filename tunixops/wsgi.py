"""WSGI entry point, kept for management tooling; production serves ASGI through daphne."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunixops.settings")
# A process that serves requests borrows its connections from a bounded pool (settings.py).
os.environ.setdefault("TUNIX_DB_POOL", "true")

application = get_wsgi_application()
