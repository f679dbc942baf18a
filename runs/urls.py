from django.urls import path
from django.views.generic import RedirectView

from runs import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="run-list"), name="home"),
    path("runs/", views.run_list, name="run-list"),
    path("runs/new/", views.run_new, name="run-new"),
    path("runs/compare/", views.run_compare, name="run-compare"),
    path("runs/compare/final/", views.run_compare_final, name="run-compare-final"),
    path("storage/", views.storage, name="storage"),
    path("runs/<uuid:run_id>/", views.run_detail, name="run-detail"),
    path("runs/<uuid:run_id>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<uuid:run_id>/requeue/", views.run_requeue, name="run-requeue"),
    path("runs/<uuid:run_id>/pin/", views.run_pin, name="run-pin"),
    path("runs/<uuid:run_id>/continue/", views.run_continue, name="run-continue"),
    path(
        "runs/<uuid:run_id>/panels/overview/",
        views.run_panel_overview,
        name="run-panel-overview",
    ),
    path(
        "runs/<uuid:run_id>/panels/artifacts/",
        views.run_panel_artifacts,
        name="run-panel-artifacts",
    ),
]
