from django.urls import path

from webhooks.api import views

urlpatterns = [
    path("webhooks", views.WebhookCollectionApi.as_view(), name="api-webhooks"),
    path("webhooks/<str:webhook_id>", views.WebhookDetailApi.as_view(), name="api-webhook-detail"),
    path(
        "webhooks/<str:webhook_id>/rotate-secret",
        views.WebhookRotateSecretApi.as_view(),
        name="api-webhook-rotate-secret",
    ),
    path(
        "webhooks/<str:webhook_id>/deliveries",
        views.WebhookDeliveryListApi.as_view(),
        name="api-webhook-deliveries",
    ),
]
