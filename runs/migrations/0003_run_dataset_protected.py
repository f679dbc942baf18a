"""`Run.dataset_key` becomes a protected foreign key to the dataset's key.

The column keeps its name and values; a run whose dataset was deleted before this guard existed
loses the dangling key (listed on the console), since no row can point at a missing dataset.
"""

import django.db.models.deletion
from django.db import migrations, models


def drop_dangling_keys(apps, schema_editor):
    Run = apps.get_model("runs", "Run")
    Dataset = apps.get_model("traces", "Dataset")
    dangling = Run.objects.exclude(dataset_key__isnull=True).exclude(
        dataset_key__in=Dataset.objects.values("key")
    )
    for run_id, key in dangling.values_list("id", "dataset_key"):
        print(f"  run {run_id}: dataset {key!r} no longer exists; the run's key is cleared")
    dangling.update(dataset_key=None)


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0002_metrics_and_worker_heartbeats"),
        ("traces", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(drop_dangling_keys, migrations.RunPython.noop),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="run", name="dataset_key"),
                migrations.AddField(
                    model_name="run",
                    name="dataset",
                    field=models.ForeignKey(
                        blank=True,
                        db_column="dataset_key",
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="runs",
                        to="traces.dataset",
                        to_field="key",
                    ),
                ),
            ],
            database_operations=[
                migrations.AlterField(
                    model_name="run",
                    name="dataset_key",
                    field=models.ForeignKey(
                        blank=True,
                        db_column="dataset_key",
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="runs",
                        to="traces.dataset",
                        to_field="key",
                    ),
                ),
            ],
        ),
    ]
