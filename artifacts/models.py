from django.db import models

from runs.models import Run


class Artifact(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    # Relative to the run's own directory; never an absolute path.
    name = models.CharField(max_length=1024)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # The Orbax checkpoint step the file belongs to, if any.
    step = models.PositiveIntegerField(null=True, blank=True)
    # Size and mtime as last hashed: a sync re-hashes a file only when either changed, and a
    # download refuses a file that no longer matches what its sha256 describes.
    mtime_ns = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tunix_run_artifacts"
        ordering = ["run", "name"]
        constraints = [
            # Also the index the run's listing and every sync use: `WHERE run_id = %s`.
            models.UniqueConstraint(fields=["run", "name"], name="tunix_artifacts_run_name_uniq"),
        ]
        indexes = [
            # The checkpoint listing and a step's zip: `WHERE run_id = %s AND step = %s`.
            models.Index(
                fields=["run", "step"],
                name="tunix_artifacts_run_step_idx",
                condition=models.Q(step__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.name
