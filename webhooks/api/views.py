"""The webhook REST API: one view per operation, all logic in services and selectors.

Every operation needs a permission of the `webhooks` app (the `operators` group holds them all):
reads `view_webhook`, registering `add_webhook`, changing and rotating the secret
`change_webhook`, removing `delete_webhook`. The refusal comes before the body is read.
"""

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tunixops.api.errors import errors
from tunixops.api.pagination import Pagination
from webhooks import selectors, services
from webhooks.api import serializers as s

VIEW = "webhooks.view_webhook"
PERMS = {
    "GET": VIEW,
    "HEAD": VIEW,
    "OPTIONS": VIEW,
    "POST": services.ADD,
    "PATCH": services.CHANGE,
    "PUT": services.CHANGE,
    "DELETE": services.DELETE,
}


class HasWebhookPermission(IsAuthenticated):
    """The method's permission (PERMS), or the view's own `perms` for a method."""

    message = "Managing webhooks needs a permission of the webhooks app (the operators group)."

    def has_permission(self, request: Request, view: Any) -> bool:
        if not super().has_permission(request, view):
            return False
        perm = {**PERMS, **getattr(view, "perms", {})}.get(request.method or "")
        if perm is None or not request.user.has_perm(perm):
            self.message = f"This needs the {perm} permission (the operators group has it)."
            return False
        return True


class WebhookApi(APIView):
    permission_classes = [HasWebhookPermission]


def _filters(data: dict[str, Any]) -> dict[str, Any]:
    if "user" in data and data["user"] is None:
        data = {**data, "user": ""}
    return data


class WebhookListApi(WebhookApi):
    pagination_class = Pagination

    @extend_schema(
        operation_id="webhook_list",
        parameters=[
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="At most 100."),
        ],
        responses={200: s.WebhookOutput(many=True), **errors(403, 404)},
        description="Every registered webhook, by name. Secrets are never listed.",
    )
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.webhook_list(), request, view=self)
        return paginator.get_paginated_response(s.WebhookOutput(page, many=True).data)


class WebhookCreateApi(WebhookApi):
    @extend_schema(
        operation_id="webhook_create",
        request=s.WebhookInput,
        responses={201: s.WebhookWithSecretOutput, **errors(400, 403, 413)},
        description=(
            "Register a webhook. The answer holds its `secret`, which signs every delivery; it "
            "is shown only here (and on rotation). A URL that is not http(s), or whose host "
            "resolves to a private address (unless TUNIX_WEBHOOKS_ALLOW_PRIVATE), answers 400."
        ),
    )
    def post(self, request: Request) -> Response:
        body = s.WebhookInput(data=request.data)
        body.is_valid(raise_exception=True)
        hook = services.webhook_create(created_by=request.user, **_filters(body.validated_data))
        return Response(s.WebhookWithSecretOutput(hook).data, status=status.HTTP_201_CREATED)


class WebhookCollectionApi(WebhookListApi, WebhookCreateApi):
    """`/api/webhooks` serves two operations; each keeps its own view class above."""


class WebhookDetailApi(WebhookApi):
    @extend_schema(
        operation_id="webhook_retrieve", responses={200: s.WebhookOutput, **errors(403, 404)}
    )
    def get(self, request: Request, webhook_id: str) -> Response:
        return Response(s.WebhookOutput(selectors.webhook_get_or_404(webhook_id)).data)

    @extend_schema(
        operation_id="webhook_update",
        request=s.WebhookInput(partial=True),
        responses={200: s.WebhookOutput, **errors(400, 403, 404, 413)},
        description="Change some settings; the others stay. The secret stays too.",
    )
    def patch(self, request: Request, webhook_id: str) -> Response:
        hook = selectors.webhook_get_or_404(webhook_id)
        body = s.WebhookInput(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        hook = services.webhook_update(
            webhook_id=hook.pk, actor=request.user, **_filters(body.validated_data)
        )
        return Response(s.WebhookOutput(hook).data)

    @extend_schema(
        operation_id="webhook_destroy",
        responses={204: None, **errors(403, 404)},
        description="Remove the webhook and its delivery log.",
    )
    def delete(self, request: Request, webhook_id: str) -> Response:
        hook = selectors.webhook_get_or_404(webhook_id)
        services.webhook_delete(webhook_id=hook.pk, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookRotateSecretApi(WebhookApi):
    perms = {"POST": services.CHANGE}

    @extend_schema(
        operation_id="webhook_rotate_secret",
        request=None,
        responses={200: s.WebhookWithSecretOutput, **errors(403, 404)},
        description="A new secret, shown once; every delivery from now on is signed with it.",
    )
    def post(self, request: Request, webhook_id: str) -> Response:
        hook = selectors.webhook_get_or_404(webhook_id)
        hook = services.webhook_rotate_secret(webhook_id=hook.pk, actor=request.user)
        return Response(s.WebhookWithSecretOutput(hook).data)


class WebhookDeliveryListApi(WebhookApi):
    pagination_class = Pagination

    @extend_schema(
        operation_id="webhook_delivery_list",
        parameters=[
            s.DeliveryListQuery,
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="At most 100."),
        ],
        responses={200: s.DeliveryOutput(many=True), **errors(400, 403, 404)},
        description="The hook's delivery log, newest first: state, attempts, last answer.",
    )
    def get(self, request: Request, webhook_id: str) -> Response:
        hook = selectors.webhook_get_or_404(webhook_id)
        query = s.DeliveryListQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        deliveries = selectors.delivery_list(webhook=hook, **query.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(deliveries, request, view=self)
        return paginator.get_paginated_response(s.DeliveryOutput(page, many=True).data)
