from django.urls import path

from runs.api import compare, logs, storage, training_metrics, views

urlpatterns = [
    path("run", views.RunCreateApi.as_view(), name="api-run-create"),
    path("recipes", views.RecipeListApi.as_view(), name="api-recipe-list"),
    path("runs", views.RunListApi.as_view(), name="api-run-list"),
    # Before `runs/<run_id>`, which would otherwise take "compare" for a run id.
    path("runs/compare", compare.RunCompareApi.as_view(), name="api-run-compare"),
    path("storage", storage.StorageApi.as_view(), name="api-storage"),
    path("runs/<str:run_id>", views.RunDetailApi.as_view(), name="api-run-detail"),
    path("runs/<str:run_id>/status", views.RunStatusApi.as_view(), name="api-run-status"),
    path("runs/<str:run_id>/cancel", views.RunCancelApi.as_view(), name="api-run-cancel"),
    path("runs/<str:run_id>/pin", views.RunPinApi.as_view(), name="api-run-pin"),
    path("runs/<str:run_id>/unpin", views.RunUnpinApi.as_view(), name="api-run-unpin"),
    path("runs/<str:run_id>/requeue", views.RunRequeueApi.as_view(), name="api-run-requeue"),
    path("runs/<str:run_id>/continue", views.RunContinueApi.as_view(), name="api-run-continue"),
    path("runs/<str:run_id>/logs", logs.LogStreamApi.as_view(), name="api-run-logs"),
    path(
        "runs/<str:run_id>/logs/snapshot",
        logs.LogSnapshotApi.as_view(),
        name="api-run-logs-snapshot",
    ),
    path(
        "runs/<str:run_id>/metrics",
        training_metrics.RunMetricsApi.as_view(),
        name="api-run-metrics",
    ),
]
