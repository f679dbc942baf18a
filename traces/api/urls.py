from django.urls import path

from traces.api import views

urlpatterns = [
    path("traces", views.TraceCollectionApi.as_view(), name="api-traces"),
    path("traces/batch", views.TraceBatchCreateApi.as_view(), name="api-trace-batch"),
    path("traces/<str:trace_id>", views.TraceDetailApi.as_view(), name="api-trace-detail"),
    path("datasets/build", views.DatasetBuildApi.as_view(), name="api-dataset-build"),
    path("datasets/<str:key>", views.DatasetDetailApi.as_view(), name="api-dataset-detail"),
    path(
        "datasets/<str:key>/export.jsonl",
        views.DatasetExportApi.as_view(),
        name="api-dataset-export",
    ),
]
