from django.apps import AppConfig
from django.db.models.signals import post_save


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"

    def ready(self) -> None:
        # Imported here: it needs the models, and registers its collector once per process.
        from runs.models import Run
        from tunixops import telemetry

        post_save.connect(
            telemetry.run_status_saved, sender=Run, dispatch_uid="tunix_run_status_metrics"
        )
        # A bad TUNIX_RECIPES_FILE stops the web process, the worker and every command at start,
        # naming the file, the recipe and the key, instead of failing runs one by one later.
        from runs.recipes import all_recipes

        all_recipes()
