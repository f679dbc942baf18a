"""New trace texts are compressed with lz4 rather than pglz on PostgreSQL, where the server has it.

A batch of traces of a few KB each is compressed row by row as it is stored (a row over ~2 KB is
compressed before it is written); with pglz that was about a third of the server's CPU time for
a batch (bench/traces_batch.py), with lz4 about a tenth, at a similar ratio. Existing values keep
their compression; both are read alike.
"""

from django.db import migrations

COLUMNS = ("prompt", "steps", "final_answer", "meta")


def _set_compression(schema_editor, method: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT %s = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
            [method],
        )
        row = cursor.fetchone()
    # Before PostgreSQL 14, or built without lz4: nothing to choose.
    if row is None or not row[0]:
        return
    for column in COLUMNS:
        schema_editor.execute(
            f"ALTER TABLE tunix_traces ALTER COLUMN {column} SET COMPRESSION {method}"
        )


def to_lz4(apps, schema_editor):
    _set_compression(schema_editor, "lz4")


def to_pglz(apps, schema_editor):
    _set_compression(schema_editor, "pglz")


class Migration(migrations.Migration):
    dependencies = [("traces", "0001_initial")]

    operations = [migrations.RunPython(to_lz4, to_pglz)]
