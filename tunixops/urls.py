from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView

from tunixops import views
from tunixops.api import auth

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    # Log in and out, and change a password; no reset by e-mail, as no mail is configured.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("", include("runs.urls")),
    path("api/schema/", SpectacularJSONAPIView.as_view(), name="api-schema"),
    path("api/auth/token", auth.TokenIssueApi.as_view(), name="api-token"),
    path("api/auth/whoami", auth.WhoAmIApi.as_view(), name="api-whoami"),
    path("api/tunix/", include("runs.api.urls")),
    path("api/tunix/", include("artifacts.api.urls")),
    path("api/", include("traces.api.urls")),
    path("api/", include("webhooks.api.urls")),
]

# A saturated database pool answers 503 with Retry-After instead of a 500 (tunixops/views.py).
handler500 = "tunixops.views.server_error"
