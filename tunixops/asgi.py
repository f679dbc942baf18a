"""ASGI entry point: `daphne tunixops.asgi:application`."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunixops.settings")

application = get_asgi_application()
