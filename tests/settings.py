"""Settings for the test suite and the processes it starts: production settings, a fast hasher.

About half the suite's time went into PBKDF2 for the users the tests create; every anchor
project (healthchecks, djangoproject.com, django-tasks) uses MD5 in tests. Processes the tests
start (workers, daphne) inherit DJANGO_SETTINGS_MODULE, so a user created here logs in there.
"""

from tunixops.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
