"""Input and output shapes of the webhook API."""

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tunixops.api.serializers import StrictSerializer
from webhooks.conditions import MAX_NAME_CHARS
from webhooks.models import BodyFormat, DeliveryState, Event, Webhook, WebhookDelivery
from webhooks.sender import MAX_URL_CHARS
from webhooks.services import MAX_THRESHOLD_CHARS, MAX_THRESHOLDS


class WebhookInput(StrictSerializer):
    name = serializers.CharField(max_length=200)
    url = serializers.CharField(
        max_length=MAX_URL_CHARS, help_text="http:// or https://; not a private address."
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=Event.choices),
        min_length=1,
        max_length=len(Event.values),
    )
    thresholds = serializers.ListField(
        child=serializers.CharField(max_length=MAX_THRESHOLD_CHARS),
        max_length=MAX_THRESHOLDS,
        required=False,
        default=list,
        help_text=(
            "Conditions for `metric.threshold`: `<metric> <op> <number>`, op one of "
            f"< <= > >= == !=, metric name at most {MAX_NAME_CHARS} characters."
        ),
    )
    recipe = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default="", help_text="Filter."
    )
    pool = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default="", help_text="Filter."
    )
    user = serializers.CharField(
        max_length=150,
        required=False,
        allow_blank=True,
        allow_null=True,
        default="",
        help_text="Filter: runs created by this username.",
    )
    body_format = serializers.ChoiceField(choices=BodyFormat.choices, default=BodyFormat.JSON)
    active = serializers.BooleanField(default=True)


class WebhookLinksOutput(serializers.Serializer[Any]):
    self = serializers.CharField()
    deliveries = serializers.CharField()


class WebhookOutput(serializers.ModelSerializer[Webhook]):
    events = serializers.ListField(child=serializers.ChoiceField(choices=Event.choices))
    thresholds = serializers.ListField(child=serializers.CharField())
    user: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    links = serializers.SerializerMethodField()

    class Meta:
        model = Webhook
        fields = [
            "id",
            "name",
            "url",
            "events",
            "thresholds",
            "recipe",
            "pool",
            "user",
            "body_format",
            "active",
            "created_by",
            "created_at",
            "updated_at",
            "links",
        ]

    @extend_schema_field(WebhookLinksOutput)
    def get_links(self, hook: Webhook) -> dict[str, str]:
        return {
            "self": reverse("api-webhook-detail", kwargs={"webhook_id": hook.pk}),
            "deliveries": reverse("api-webhook-deliveries", kwargs={"webhook_id": hook.pk}),
        }


class WebhookWithSecretOutput(WebhookOutput):
    secret = serializers.CharField(
        help_text="Signs every delivery (HMAC-SHA256). Shown only now: store it."
    )

    class Meta(WebhookOutput.Meta):
        fields = [*WebhookOutput.Meta.fields, "secret"]


class DeliveryListQuery(serializers.Serializer[Any]):
    state = serializers.ChoiceField(choices=DeliveryState.choices, required=False)


class DeliveryOutput(serializers.ModelSerializer[WebhookDelivery]):
    class Meta:
        model = WebhookDelivery
        fields = [
            "delivery_id",
            "event",
            "run_id",
            "state",
            "attempts",
            "next_attempt_at",
            "last_attempt_at",
            "last_status_code",
            "last_error",
            "last_duration_ms",
            "delivered_at",
            "created_at",
            "body",
        ]
