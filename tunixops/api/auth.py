"""Token login for scripts and the `tunixops` command, and who a token belongs to.

Logging in is the one API operation open to anonymous callers, so it is throttled twice: per
client address and per username tried, each at TUNIX_TOKEN_RATE. DRF keeps the counts in the
default cache, which is per process unless CACHES names a shared one.
"""

import hashlib
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from tunixops import accounts
from tunixops.api.errors import errors
from tunixops.api.serializers import StrictSerializer


class _TokenThrottle(SimpleRateThrottle):
    # Read when the throttle is made, so a changed setting applies to the next request.
    @property
    def rate(self) -> str:
        return str(settings.TUNIX_TOKEN_RATE)

    @rate.setter
    def rate(self, value: str) -> None:
        """SimpleRateThrottle assigns its rate in __init__; the setting stays the source."""


class TokenAddressThrottle(_TokenThrottle):
    scope = "token_address"

    def get_cache_key(self, request: Request, view: APIView) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class TokenUsernameThrottle(_TokenThrottle):
    scope = "token_username"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        data = request.data if isinstance(request.data, dict) else {}
        username = data.get("username")
        if not isinstance(username, str) or not username:
            return None
        # Hashed: a username may hold anything (NUL, a lone surrogate) that a cache key may not.
        digest = hashlib.sha256(username.lower().encode("utf-8", "surrogatepass")).hexdigest()
        return self.cache_format % {"scope": self.scope, "ident": digest}


class TokenInput(StrictSerializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False)


class TokenOutput(serializers.Serializer[Any]):
    token = serializers.CharField()
    username = serializers.CharField()


class WhoAmIOutput(serializers.Serializer[Any]):
    username = serializers.CharField()
    is_staff = serializers.BooleanField()


class TokenIssueApi(APIView):
    # No session authentication: a JSON login needs no CSRF token, and no cookie logs it in.
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenAddressThrottle, TokenUsernameThrottle]

    @extend_schema(
        operation_id="token_issue",
        auth=[],
        request=TokenInput,
        responses={200: TokenOutput, **errors(400, 413)},
        description=(
            "The API token of the user with this username and password, created on first use "
            "(the same one `manage.py drf_create_token` shows). Wrong credentials answer 400 "
            "`invalid_credentials`. Throttled per client address and per username to "
            "TUNIX_TOKEN_RATE (default 10/minute): 429 `throttled` with `Retry-After`. Failures "
            "count towards the login lockout (TUNIX_LOGIN_FAILURE_LIMIT) like the login pages': "
            "a locked-out username answers 429 `locked_out`."
        ),
    )
    def post(self, request: Request) -> Response:
        body = TokenInput(data=request.data)
        body.is_valid(raise_exception=True)
        token = accounts.token_issue(request=request._request, **body.validated_data)
        return Response(TokenOutput({"token": token.key, "username": token.user.username}).data)


class WhoAmIApi(APIView):
    @extend_schema(
        operation_id="whoami",
        responses={200: WhoAmIOutput, **errors()},
        description="The user the request's token (or session) belongs to.",
    )
    def get(self, request: Request) -> Response:
        return Response(WhoAmIOutput(request.user).data)
