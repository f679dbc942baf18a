"""The two role groups of runs/permissions.py, with the permissions they held at this version.

Django creates permissions after all migrations have run, so this one creates those it needs
first. A group that already exists (another app's migration may have made it, as the webhooks
app does for `operators`) gets these permissions added; nothing else about it changes.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

SUBMIT = [("runs", "add_run"), ("traces", "add_trace"), ("traces", "add_dataset")]
ROLES = {
    "submitters": SUBMIT,
    "operators": [
        *SUBMIT,
        ("runs", "manage_any_run"),
        ("runs", "set_run_priority"),
        ("runs", "view_run"),
        ("runs", "view_logchunk"),
        ("runs", "view_runmetric"),
        ("runs", "view_workerheartbeat"),
        ("runs", "view_retentionprune"),
        ("artifacts", "view_artifact"),
        ("traces", "view_trace"),
        ("traces", "view_dataset"),
    ],
}


def create_groups(apps, schema_editor):
    for label in ("runs", "artifacts", "traces"):
        config = apps.get_app_config(label)
        config.models_module = True
        create_permissions(config, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, codename in perms:
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )


def remove_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in ROLES.items():
        for group in Group.objects.filter(name=name):
            for app_label, codename in perms:
                group.permissions.remove(
                    *Permission.objects.filter(content_type__app_label=app_label, codename=codename)
                )


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("runs", "0009_run_permissions"),
        ("artifacts", "0002_artifact_mtime_and_step_index"),
        ("traces", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
