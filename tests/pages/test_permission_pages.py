"""The pages and the admin show what a user may do: what they may not is hidden, or shown
disabled with the reason, and refused if tried anyway."""

from typing import Any

import pytest
from django.test import Client

from runs.models import Run, RunStatus
from runs.permissions import NOT_SUBMITTER, NOT_YOURS, SUBMITTERS

pytestmark = pytest.mark.django_db


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def html(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    return str(response.content.decode())


@pytest.fixture
def plain(make_user: Any) -> Any:
    return make_user("pat")


def test_a_user_who_may_not_submit_sees_why_instead_of_the_new_run_button(plain: Any) -> None:
    body = html(signed_in(plain).get("/runs/"))
    assert 'data-testid="new-run-refusal"' in body and NOT_SUBMITTER in body
    assert '<button type="button" class="primary" disabled' in body
    assert 'href="/runs/new/"' not in body  # neither the button nor the menu link
    refused = signed_in(plain).get("/runs/new/")
    assert refused.status_code == 403 and NOT_SUBMITTER in refused.content.decode()


def test_a_submitter_gets_the_new_run_button(alice: Any) -> None:
    body = html(signed_in(alice).get("/runs/"))
    assert 'href="/runs/new/"' in body and "new-run-refusal" not in body


def test_cancel_is_offered_on_your_own_run_and_disabled_with_the_reason_on_others(
    make_run: Any, alice: Any, bob: Any
) -> None:
    run = make_run()  # alice's, pending
    own = html(signed_in(alice).get(f"/runs/{run.pk}/"))
    assert 'data-testid="confirm-cancel"' in own and "cancel-refusal" not in own

    other = html(signed_in(bob).get(f"/runs/{run.pk}/"))
    assert 'data-testid="confirm-cancel"' not in other
    assert 'data-testid="cancel-run">Cancel run</button>' in other and "disabled" in other
    assert NOT_YOURS in other
    confirm = html(signed_in(bob).get(f"/runs/{run.pk}/cancel/"))
    assert NOT_YOURS in confirm and "confirm-cancel" not in confirm

    refused = signed_in(bob).post(f"/runs/{run.pk}/cancel/")
    assert refused.status_code == 403 and NOT_YOURS in refused.content.decode()
    assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING


def test_an_operator_may_cancel_anyones_run_from_the_page(make_run: Any, operator: Any) -> None:
    run = make_run()
    page = html(signed_in(operator).get(f"/runs/{run.pk}/"))
    assert 'data-testid="confirm-cancel"' in page
    assert signed_in(operator).post(f"/runs/{run.pk}/cancel/").status_code == 302
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED


def test_run_again_says_why_it_is_disabled(make_run: Any, alice: Any, bob: Any, plain: Any) -> None:
    alices = make_run(status=RunStatus.COMPLETED)
    assert 'data-testid="requeue">Run again' in html(signed_in(alice).get(f"/runs/{alices.pk}/"))
    others = html(signed_in(bob).get(f"/runs/{alices.pk}/panels/overview/"))
    assert "requeue-refusal" in others and NOT_YOURS in others
    plains = make_run(status=RunStatus.COMPLETED, created_by=plain)
    own = html(signed_in(plain).get(f"/runs/{plains.pk}/panels/overview/"))
    assert "requeue-refusal" in own and NOT_SUBMITTER in own
    assert signed_in(bob).post(f"/runs/{alices.pk}/requeue/").status_code == 403
    assert Run.objects.count() == 2


def test_in_owner_mode_the_pages_show_only_your_runs(
    make_run: Any, alice: Any, bob: Any, operator: Any, settings: Any
) -> None:
    settings.TUNIX_RUN_VISIBILITY = "owner"
    alices = make_run(name="alices-run", status=RunStatus.COMPLETED)
    bobs = make_run(name="bobs-run", created_by=bob)
    requeued = make_run(name="bobs-copy", created_by=bob, requeued_from=alices)
    listing = html(signed_in(bob).get("/runs/"))
    assert "bobs-run" in listing and "alices-run" not in listing
    for path in ("", "panels/overview/", "panels/artifacts/", "cancel/"):
        assert signed_in(bob).get(f"/runs/{alices.pk}/{path}").status_code == 404
    # Nor does alice's page name the copy bob made of her run.
    assert str(requeued.pk) not in html(signed_in(alice).get(f"/runs/{alices.pk}/"))
    everything = html(signed_in(operator).get("/runs/"))
    assert "alices-run" in everything and "bobs-run" in everything
    assert bobs.pk


# -- the admin ----------------------------------------------------------------------------------

CHANGELIST = "/admin/runs/run/"


def act(client: Client, action: str, *runs: Run) -> Any:
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(r.pk) for r in runs]},
        follow=True,
    )


def test_staff_with_only_view_permission_gets_no_action(make_run: Any, make_user: Any) -> None:
    viewer = make_user("vic", is_staff=True, perms=["runs.view_run"])
    run = make_run()
    client = signed_in(viewer)
    body = html(client.get(CHANGELIST))
    assert str(run.pk) in body
    assert "cancel_selected" not in body and "requeue_selected" not in body
    act(client, "cancel_selected", run)
    assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING


def test_staff_submitters_cancel_their_own_runs_and_are_told_which_are_not(
    make_run: Any, make_user: Any, bob: Any
) -> None:
    staff = make_user("sam", roles=[SUBMITTERS], is_staff=True, perms=["runs.view_run"])
    mine = make_run(created_by=staff)
    bobs = make_run(created_by=bob)
    page = act(signed_in(staff), "cancel_selected", mine, bobs).content.decode()
    assert Run.objects.get(pk=mine.pk).status == RunStatus.CANCELLED
    assert Run.objects.get(pk=bobs.pk).status == RunStatus.PENDING
    assert f"Not cancelled: {bobs.pk}: {NOT_YOURS}" in page.replace("&#x27;", "'")


def test_operators_get_both_actions_on_anyones_run(make_run: Any, operator: Any) -> None:
    client = signed_in(operator)
    pending, failed = make_run(), make_run(status=RunStatus.FAILED)
    body = html(client.get(CHANGELIST))
    assert "cancel_selected" in body and "requeue_selected" in body
    act(client, "cancel_selected", pending)
    act(client, "requeue_selected", failed)
    assert Run.objects.get(pk=pending.pk).status == RunStatus.CANCELLED
    assert Run.objects.filter(requeued_from=failed, created_by=operator).exists()


def test_in_owner_mode_the_admin_lists_only_your_runs_and_their_rows(
    make_run: Any, make_user: Any, bob: Any, operator: Any, settings: Any
) -> None:
    settings.TUNIX_RUN_VISIBILITY = "owner"
    viewer = make_user(
        "vic", roles=[SUBMITTERS], is_staff=True, perms=["runs.view_run", "runs.view_logchunk"]
    )
    mine, bobs = make_run(created_by=viewer), make_run(created_by=bob)
    body = html(signed_in(viewer).get(CHANGELIST))
    assert str(mine.pk) in body and str(bobs.pk) not in body
    # No creator filter either: it would list every user's name.
    assert "created_by__id__exact" not in body
    hidden = signed_in(viewer).get(f"{CHANGELIST}{bobs.pk}/change/")
    assert hidden.status_code == 302  # "doesn't exist", back to the index
    everything = html(signed_in(operator).get(CHANGELIST))
    assert str(mine.pk) in everything and str(bobs.pk) in everything
