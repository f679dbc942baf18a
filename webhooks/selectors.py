"""Reads of webhooks and their delivery log."""

from django.db.models import QuerySet

from tunixops.exceptions import NotFound
from webhooks.models import Webhook, WebhookDelivery


def webhook_list() -> QuerySet[Webhook]:
    return Webhook.objects.select_related("user", "created_by").order_by("name", "id")


def webhook_get_or_404(webhook_id: str | int) -> Webhook:
    try:
        number = int(webhook_id)
    except (TypeError, ValueError):
        raise NotFound("No such webhook.") from None
    found = webhook_list().filter(pk=number).first() if 0 < number < 2**63 else None
    if found is None:
        raise NotFound("No such webhook.")
    return found


def delivery_list(*, webhook: Webhook, state: str | None = None) -> QuerySet[WebhookDelivery]:
    """A hook's delivery log, newest first (index `tunix_wh_deliveries_hook_idx`)."""
    deliveries = WebhookDelivery.objects.filter(webhook=webhook).order_by("-id")
    if state:
        deliveries = deliveries.filter(state=state)
    return deliveries


def active_webhooks() -> list[Webhook]:
    """The hooks that take new events. A handful of rows, read whole on each status change."""
    return list(Webhook.objects.filter(active=True).order_by("id"))
