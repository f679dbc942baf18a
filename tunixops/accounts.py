"""API tokens for people who log in from a script or the `tunixops` command."""

from django.contrib.auth import authenticate
from django.db import transaction
from django.http import HttpRequest
from rest_framework.authtoken.models import Token

from tunixops.exceptions import InvalidInput


def token_issue(*, request: HttpRequest, username: str, password: str) -> Token:
    """The user's API token, created on first use; the same token on every later call.

    One message for an unknown user, a wrong password and an inactive account, so the answer
    does not tell which usernames exist. The request goes to `authenticate` so that the login
    lockout (django-axes) counts these failures as it does the login pages', and refuses a
    locked-out username here too.
    """
    user = authenticate(request, username=username, password=password)
    if user is None:
        raise InvalidInput(
            "Unable to log in with that username and password.", code="invalid_credentials"
        )
    with transaction.atomic():
        token, _ = Token.objects.get_or_create(user=user)
    return token
