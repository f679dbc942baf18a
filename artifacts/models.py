from django.db import models

from artifacts.fs import Identity
from runs.models import Run


class Artifact(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    # Relative to the run's own directory; never an absolute path.
    name = models.CharField(max_length=1024)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # The Orbax checkpoint step the file belongs to, if any.
    step = models.PositiveIntegerField(null=True, blank=True)
    # The file's identity as last hashed (artifacts/fs.Identity): a sync re-hashes a file only
    # when one of these changed, and a download refuses a file that no longer matches what its
    # sha256 describes. 0 for inode and ctime: registered before they were recorded.
    mtime_ns = models.BigIntegerField(default=0)
    inode = models.BigIntegerField(default=0)
    ctime_ns = models.BigIntegerField(default=0)
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

    @property
    def identity(self) -> Identity:
        return Identity(self.size_bytes, self.mtime_ns, self.inode, self.ctime_ns)

    def matches(self, found: Identity) -> bool:
        """Whether `found` is the version of the file this row hashed. Rows from before inode
        and ctime were recorded compare size and mtime only."""
        if not self.inode:
            return (found.size, found.mtime_ns) == (self.size_bytes, self.mtime_ns)
        return found == self.identity
