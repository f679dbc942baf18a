from django.urls import path

from runs.api import logs, metrics, views

urlpatterns = [
    path("run", views.RunCreateApi.as_view(), name="api-run-create"),
    path("runs", views.RunListApi.as_view(), name="api-run-list"),
    path("runs/<str:run_id>", views.RunDetailApi.as_view(), name="api-run-detail"),
    path("runs/<str:run_id>/status", views.RunStatusApi.as_view(), name="api-run-status"),
    path("runs/<str:run_id>/cancel", views.RunCancelApi.as_view(), name="api-run-cancel"),
    path("runs/<str:run_id>/logs", logs.LogStreamApi.as_view(), name="api-run-logs"),
    path(
        "runs/<str:run_id>/logs/snapshot",
        logs.LogSnapshotApi.as_view(),
        name="api-run-logs-snapshot",
    ),
    path("runs/<str:run_id>/metrics", metrics.RunMetricsApi.as_view(), name="api-run-metrics"),
]
