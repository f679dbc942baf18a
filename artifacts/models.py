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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tunix_run_artifacts"
        ordering = ["run", "name"]
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="tunix_artifacts_run_name_uniq"),
        ]

    def __str__(self) -> str:
        return self.name
