"""Operators manage webhooks: the `operators` group (created if missing) gets their permissions.

Django creates permissions after all migrations have run, so this creates the app's own first.
The group may already exist (another app's migration, or made by hand): only these
permissions are added to it, nothing else about it changes.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "operators"
CODENAMES = ["view_webhook", "add_webhook", "change_webhook", "delete_webhook", "view_webhookdelivery"]


def grant(apps, schema_editor):
    config = apps.get_app_config("webhooks")
    models_module = getattr(config, "models_module", None)
    config.models_module = models_module or True  # what create_permissions looks for
    create_permissions(config, apps=apps, verbosity=0)
    config.models_module = models_module
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label="webhooks", codename__in=CODENAMES)
    )


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group in Group.objects.filter(name=GROUP):
        group.permissions.remove(
            *Permission.objects.filter(content_type__app_label="webhooks", codename__in=CODENAMES)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("webhooks", "0001_initial"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
