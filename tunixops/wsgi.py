"""WSGI entry point, kept for management tooling; production serves ASGI through daphne."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunixops.settings")

application = get_wsgi_application()
