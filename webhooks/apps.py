from django.apps import AppConfig
from django.db.models.signals import post_save


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from runs.models import Run
        from webhooks import services

        # Every status write (runs/state_machine.transition) and every new run (run_enqueue)
        # saves the Run row: one receiver turns them into outbox rows in the same transaction.
        post_save.connect(services.run_saved, sender=Run, dispatch_uid="tunix_webhook_run_events")
