"""Give a user one of TunixOps' roles, or take them away (see runs/permissions.py).

    python manage.py tunix_role alice submitters     # may submit runs, upload traces
    python manage.py tunix_role bob operators        # may also cancel anyone's run, set priority
    python manage.py tunix_role carol --none         # back to read-only
    python manage.py tunix_role alice                # show alice's roles

The roles are Django groups, so the admin (Users → Groups) does the same. Operators who should
use the admin console also need "Staff status" (`is_staff`), which this command does not set.
"""

from argparse import ArgumentParser
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from runs import services
from runs.permissions import ROLE_PERMISSIONS
from tunixops.exceptions import ApplicationError


class Command(BaseCommand):
    help = "Set a user's TunixOps roles (submitters, operators) or show them."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("roles", nargs="*", metavar="role", help=", ".join(ROLE_PERMISSIONS))
        parser.add_argument("--none", action="store_true", help="Remove every role.")

    def handle(self, *args: Any, **options: Any) -> None:
        roles: list[str] = options["roles"]
        try:
            if roles or options["none"]:
                if roles and options["none"]:
                    raise CommandError("Give roles or --none, not both.")
                user = services.role_set(username=options["username"], roles=roles)
            else:
                user = User.objects.get(username=options["username"])
        except User.DoesNotExist as exc:
            raise CommandError(f"No user {options['username']!r}.") from exc
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        held = sorted(user.groups.filter(name__in=ROLE_PERMISSIONS).values_list("name", flat=True))
        superuser = " (superuser: every permission)" if user.is_superuser else ""
        self.stdout.write(f"{user.username}: {', '.join(held) or 'no role'}{superuser}")
