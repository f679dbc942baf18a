from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from runs.admin import CappedCountPaginator
from tunixops.admin import ReadOnlyAdminMixin
from tunixops.exceptions import InvalidInput
from webhooks import services
from webhooks.models import BodyFormat, Event, Webhook, WebhookDelivery

FORM_FIELDS = (
    "name",
    "url",
    "events",
    "thresholds",
    "recipe",
    "pool",
    "user",
    "body_format",
    "active",
)


class WebhookForm(forms.ModelForm[Webhook]):
    """The hook's settings, checked by `services.webhook_clean` like the API's."""

    events = forms.MultipleChoiceField(choices=Event.choices, widget=forms.CheckboxSelectMultiple)
    thresholds = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="For metric.threshold: one condition a line, e.g. <code>loss &lt; 0.5</code>.",
    )
    body_format = forms.ChoiceField(choices=BodyFormat.choices)

    class Meta:
        model = Webhook
        fields = FORM_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["thresholds"] = "\n".join(self.instance.thresholds)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        lines = [line.strip() for line in data.get("thresholds", "").splitlines()]
        try:
            cleaned = services.webhook_clean(
                name=data.get("name", ""),
                url=data.get("url", ""),
                events=data.get("events", []),
                thresholds=[line for line in lines if line],
                recipe=data.get("recipe", ""),
                pool=data.get("pool", ""),
                user=data.get("user") or "",
                body_format=data.get("body_format", BodyFormat.JSON),
            )
        except InvalidInput as exc:
            for field, problems in (exc.fields or {}).items():
                name = field.split(".")[0]
                self.add_error(name if name in self.fields else None, problems)
            return data
        data["cleaned"] = cleaned
        return data


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin[Webhook]):
    """Hooks are written through the services, as from the API: the form's checks are theirs,
    and the secret is shown once, in the message after adding (or rotating)."""

    form = WebhookForm
    list_display = ("name", "url", "events_display", "filters", "body_format", "active", "log")
    list_filter = ("active", "body_format")
    search_fields = ("name", "url")
    raw_id_fields = ("user",)
    actions = ("rotate_secret",)

    @admin.display(description="events")
    def events_display(self, hook: Webhook) -> str:
        events = ", ".join(hook.events)
        return f"{events} ({'; '.join(hook.thresholds)})" if hook.thresholds else events

    @admin.display(description="filters")
    def filters(self, hook: Webhook) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("recipe", hook.recipe),
                ("pool", hook.pool),
                ("user", hook.user.get_username() if hook.user else ""),
            )
            if value
        ]
        return ", ".join(parts) or "all runs"

    @admin.display(description="deliveries")
    def log(self, hook: Webhook) -> SafeString:
        url = (
            reverse("admin:webhooks_webhookdelivery_changelist") + f"?webhook__id__exact={hook.pk}"
        )
        return format_html('<a href="{}">delivery log</a>', url)

    def save_model(self, request: HttpRequest, obj: Webhook, form: Any, change: bool) -> None:
        cleaned = dict(form.cleaned_data["cleaned"])
        active = form.cleaned_data["active"]
        if change:
            saved = services.webhook_update(
                webhook_id=obj.pk, actor=request.user, active=active, **cleaned
            )
        else:
            saved = services.webhook_create(created_by=request.user, active=active, **cleaned)
            self._show_secret(request, saved)
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Webhook) -> None:
        services.webhook_delete(webhook_id=obj.pk, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        for hook in queryset:
            services.webhook_delete(webhook_id=hook.pk, actor=request.user)

    def _show_secret(self, request: HttpRequest, hook: Webhook) -> None:
        self.message_user(
            request,
            format_html(
                "Secret of webhook “{}”: <code>{}</code>. It signs every delivery and is shown "
                "only now: store it with the receiver.",
                hook.name,
                hook.secret,
            ),
            level=messages.WARNING,
        )

    @admin.action(description="Rotate the secret (shown once)", permissions=["change"])
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        for hook in queryset:
            self._show_secret(
                request, services.webhook_rotate_secret(webhook_id=hook.pk, actor=request.user)
            )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin[WebhookDelivery]):
    """The delivery log, read-only: the outbox writes it, the delivery process updates it."""

    list_display = (
        "id",
        "webhook",
        "event",
        "run_link",
        "state_badge",
        "attempts",
        "last_status_code",
        "error_preview",
        "last_duration_ms",
        "created_at",
        "last_attempt_at",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("state", "event", "webhook")
    list_select_related = ("webhook",)
    search_fields = ("=run_id", "=delivery_id")
    readonly_fields = (
        "delivery_id",
        "webhook",
        "run_id",
        "event",
        "once_key",
        "state",
        "attempts",
        "created_at",
        "next_attempt_at",
        "last_attempt_at",
        "last_status_code",
        "last_duration_ms",
        "last_error",
        "last_response",
        "delivered_at",
        "claimed_by",
        "lease_until",
        "body",
    )
    fields = readonly_fields
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 200
    actions = ("retry_now",)

    class Media:
        css = {"all": ("runs/admin.css",)}

    @admin.display(description="state", ordering="state")
    def state_badge(self, delivery: WebhookDelivery) -> SafeString:
        css = {"delivered": "completed", "delivering": "running"}.get(
            delivery.state, delivery.state
        )
        return format_html(
            '<span class="tunix-status tunix-status-{}">{}</span>', css, delivery.state
        )

    @admin.display(description="run")
    def run_link(self, delivery: WebhookDelivery) -> SafeString:
        url = reverse("run-detail", kwargs={"run_id": delivery.run_id})
        return format_html('<a href="{}">{}</a>', url, str(delivery.run_id)[:8])

    @admin.display(description="last error")
    def error_preview(self, delivery: WebhookDelivery) -> str:
        error = delivery.last_error
        return error if len(error) <= 120 else error[:120] + "…"

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(services.CHANGE))

    @admin.action(description="Retry selected deliveries now", permissions=["retry"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = services.deliveries_retry(
            delivery_ids=list(queryset.values_list("pk", flat=True)), actor=request.user
        )
        self.message_user(request, f"{count} delivery(ies) will be sent again shortly.")
