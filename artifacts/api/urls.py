from django.urls import path

from artifacts.api import views

urlpatterns = [
    path("runs/<str:run_id>/artifacts", views.ArtifactListApi.as_view(), name="api-artifact-list"),
    path(
        "runs/<str:run_id>/artifacts/<str:artifact_id>/download",
        views.ArtifactDownloadApi.as_view(),
        name="api-artifact-download",
    ),
    path(
        "runs/<str:run_id>/checkpoints",
        views.CheckpointListApi.as_view(),
        name="api-checkpoint-list",
    ),
    path(
        "runs/<str:run_id>/checkpoints/<str:step>/download",
        views.CheckpointDownloadApi.as_view(),
        name="api-checkpoint-download",
    ),
]
