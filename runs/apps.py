from django.apps import AppConfig
from django.db.models.signals import post_save


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"

    def ready(self) -> None:
        # Imported here: it needs the models, and registers its collector once per process.
        from runs.models import Run
        from tunixops import metrics

        post_save.connect(
            metrics.run_status_saved, sender=Run, dispatch_uid="tunix_run_status_metrics"
        )
