"""Who may do what with runs, decided in the services so that API, pages and admin agree.

The HTTP side of the same rules, route by route: tests/reliability/test_authorization_matrix.py.
"""

import threading
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import connections

from runs.models import Run, RunStatus
from runs.permissions import OPERATORS, ROLE_PERMISSIONS, SUBMITTERS
from runs.selectors import run_get_or_404, run_list
from runs.services import run_cancel, run_dry_run, run_enqueue, run_requeue
from tunixops.exceptions import LimitExceeded, NotFound, PermissionDenied

pytestmark = pytest.mark.django_db


@pytest.fixture
def plain(make_user: Any) -> Any:
    return make_user("pat")


def test_submitting_needs_the_add_run_permission(plain: Any, alice: Any) -> None:
    with pytest.raises(PermissionDenied, match=r"runs\.add_run"):
        run_enqueue(recipe="tiny_sft", created_by=plain)
    with pytest.raises(PermissionDenied):
        run_dry_run(recipe="tiny_sft", config={}, user=plain)
    assert not Run.objects.exists()
    assert run_enqueue(recipe="tiny_sft", created_by=alice).created_by == alice


def test_the_system_may_submit_without_a_user() -> None:
    assert run_enqueue(recipe="tiny_sft", created_by=None).created_by is None


def test_a_priority_other_than_zero_needs_set_run_priority(alice: Any, operator: Any) -> None:
    for priority in (1, -1, 1000):
        with pytest.raises(PermissionDenied) as refused:
            run_enqueue(recipe="tiny_sft", created_by=alice, priority=priority)
        assert refused.value.fields is not None and "priority" in refused.value.fields
    assert not Run.objects.exists()
    assert run_enqueue(recipe="tiny_sft", created_by=operator, priority=1000).priority == 1000


def test_anyone_may_cancel_their_own_run_even_without_a_role(make_run: Any, plain: Any) -> None:
    run = make_run(created_by=plain)
    assert run_cancel(run_id=run.pk, user=plain).status == RunStatus.CANCELLED


def test_cancelling_someone_elses_run_needs_manage_any_run(
    make_run: Any, bob: Any, operator: Any
) -> None:
    run = make_run()  # alice's
    with pytest.raises(PermissionDenied, match="manage_any_run"):
        run_cancel(run_id=run.pk, user=bob)
    assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING
    assert run_cancel(run_id=run.pk, user=operator).status == RunStatus.CANCELLED
    assert "olga" in Run.objects.get(pk=run.pk).status_reason


def test_requeue_needs_add_run_and_the_run_or_manage_any_run(
    make_run: Any, plain: Any, bob: Any, alice: Any, operator: Any
) -> None:
    mine = make_run(status=RunStatus.FAILED, created_by=plain)
    with pytest.raises(PermissionDenied, match=r"runs\.add_run"):
        run_requeue(run_id=mine.pk, user=plain)
    alices = make_run(status=RunStatus.FAILED)
    with pytest.raises(PermissionDenied, match="manage_any_run"):
        run_requeue(run_id=alices.pk, user=bob)
    assert Run.objects.count() == 2
    assert run_requeue(run_id=alices.pk, user=alice).created_by == alice
    assert run_requeue(run_id=alices.pk, user=operator).created_by == operator


def test_requeueing_a_prioritised_run_keeps_the_priority_rule(
    make_run: Any, alice: Any, operator: Any
) -> None:
    run = make_run(status=RunStatus.COMPLETED, priority=7)
    with pytest.raises(PermissionDenied):
        run_requeue(run_id=run.pk, user=alice)
    assert run_requeue(run_id=run.pk, user=operator).priority == 7


def test_in_owner_mode_another_users_run_is_not_found(
    make_run: Any, bob: Any, operator: Any, settings: Any
) -> None:
    settings.TUNIX_RUN_VISIBILITY = "owner"
    alices = make_run()
    bobs = make_run(created_by=bob)
    assert list(run_list(user=bob)) == [bobs]
    assert set(run_list(user=operator)) == {alices, bobs}
    with pytest.raises(Exception, match="No such run"):
        run_get_or_404(alices.pk, user=bob)
    # Not a 403: the service says the run does not exist, so ids do not leak.
    with pytest.raises(NotFound):
        run_cancel(run_id=alices.pk, user=bob)
    assert run_get_or_404(alices.pk, user=operator) == alices


def test_in_team_mode_everyone_sees_every_run(make_run: Any, bob: Any, plain: Any) -> None:
    runs = {make_run(), make_run(created_by=bob)}
    assert set(run_list(user=plain)) == runs


# -- quota ------------------------------------------------------------------------------------


def test_past_the_quota_of_active_runs_an_enqueue_is_refused(
    alice: Any, make_run: Any, settings: Any
) -> None:
    settings.TUNIX_MAX_ACTIVE_RUNS_PER_USER = 3
    make_run(status=RunStatus.RUNNING)
    make_run(status=RunStatus.CANCEL_REQUESTED)
    make_run(status=RunStatus.COMPLETED)  # finished runs do not count
    run_enqueue(recipe="tiny_sft", created_by=alice)
    with pytest.raises(LimitExceeded) as refused:
        run_enqueue(recipe="tiny_sft", created_by=alice)
    assert refused.value.code == "too_many_active_runs"
    assert Run.objects.filter(status=RunStatus.PENDING).count() == 1
    # Another user has their own quota; the system has none.
    run_enqueue(recipe="tiny_sft", created_by=None)


def test_a_quota_of_zero_means_no_limit(alice: Any, settings: Any) -> None:
    settings.TUNIX_MAX_ACTIVE_RUNS_PER_USER = 0
    for _ in range(5):
        run_enqueue(recipe="tiny_sft", created_by=alice)
    assert Run.objects.count() == 5


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_enqueues_cannot_both_take_the_last_place(alice: Any, settings: Any) -> None:
    settings.TUNIX_MAX_ACTIVE_RUNS_PER_USER = 5
    barrier = threading.Barrier(12)
    outcomes: list[str] = []

    def enqueue() -> None:
        try:
            barrier.wait(10)
            run_enqueue(recipe="tiny_sft", created_by=alice)
            outcomes.append("queued")
        except LimitExceeded:
            outcomes.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=enqueue) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["queued"] * 5 + ["refused"] * 7
    assert Run.objects.filter(created_by=alice).count() == 5


# -- roles --------------------------------------------------------------------------------------


def test_the_migration_made_both_role_groups_with_their_permissions() -> None:
    # Run by the test database's migrations (a data migration), not by a fixture. Operators
    # also hold the webhooks app's permissions, which that app's migration adds.
    for name, perms in ROLE_PERMISSIONS.items():
        group = Group.objects.get(name=name)
        held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        assert held >= set(perms)
        assert {p.split(".")[0] for p in held - set(perms)} <= {"webhooks"}


def test_tunix_role_grants_shows_and_removes_roles(plain: Any) -> None:
    out = StringIO()
    call_command("tunix_role", "pat", OPERATORS, stdout=out)
    assert out.getvalue().strip() == "pat: operators"
    plain.refresh_from_db()
    assert plain.has_perm("runs.manage_any_run") and plain.has_perm("runs.add_run")

    out = StringIO()
    call_command("tunix_role", "pat", SUBMITTERS, stdout=out)
    assert out.getvalue().strip() == "pat: submitters"

    out = StringIO()
    call_command("tunix_role", "pat", stdout=out)
    assert out.getvalue().strip() == "pat: submitters"

    call_command("tunix_role", "pat", "--none", stdout=StringIO())
    out = StringIO()
    call_command("tunix_role", "pat", stdout=out)
    assert out.getvalue().strip() == "pat: no role"


def test_tunix_role_refuses_an_unknown_role_or_user(plain: Any) -> None:
    with pytest.raises(CommandError, match="Unknown role admins"):
        call_command("tunix_role", "pat", "admins", stdout=StringIO())
    with pytest.raises(CommandError, match="No user 'nobody'"):
        call_command("tunix_role", "nobody", SUBMITTERS, stdout=StringIO())
    assert not plain.groups.exists()


def test_a_superuser_has_every_permission_without_a_group(make_user: Any) -> None:
    root = make_user("root", is_superuser=True)
    run = run_enqueue(recipe="tiny_sft", created_by=root, priority=5)
    assert run.priority == 5
    out = StringIO()
    call_command("tunix_role", "root", stdout=out)
    assert "superuser" in out.getvalue()
