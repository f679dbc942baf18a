from typing import Any

import pytest
from django.test import Client

from tests.traces.helpers import make_traces
from traces.models import Dataset, Trace
from traces.services import dataset_build

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_browser(admin_user: Any) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def test_the_admin_lists_and_shows_traces_read_only(admin_browser: Client) -> None:
    trace = make_traces(2)[0]
    listing = admin_browser.get("/admin/traces/trace/")
    assert listing.status_code == 200
    assert f"trace {trace.pk}" in listing.content.decode()
    found = admin_browser.get(f"/admin/traces/trace/?q={trace.pk}")
    assert f"trace {trace.pk}" in found.content.decode()
    assert admin_browser.get("/admin/traces/trace/?q=abc").status_code == 200
    page = admin_browser.get(f"/admin/traces/trace/{trace.pk}/change/")
    assert page.status_code == 200
    assert "What is 0 + 0?" in page.content.decode()
    assert admin_browser.get("/admin/traces/trace/add/").status_code == 403
    admin_browser.post(f"/admin/traces/trace/{trace.pk}/change/", {"prompt": "edited"})
    trace.refresh_from_db()
    assert trace.prompt == "What is 0 + 0?"


def test_the_admin_lists_and_shows_datasets(admin_browser: Client) -> None:
    make_traces(2)
    dataset = dataset_build(name="arith", version="v1", created_by=None, limit=2)
    listing = admin_browser.get("/admin/traces/dataset/")
    assert listing.status_code == 200 and "arith-v1" in listing.content.decode()
    page = admin_browser.get(f"/admin/traces/dataset/{dataset.pk}/change/")
    assert page.status_code == 200 and "steps_total" in page.content.decode()


def test_the_admin_refuses_to_delete_a_trace_a_dataset_holds(admin_browser: Client) -> None:
    make_traces(1)
    dataset_build(name="arith", version="v1", created_by=None, limit=1)
    trace = Trace.objects.get()
    page = admin_browser.post(f"/admin/traces/trace/{trace.pk}/delete/", {"post": "yes"})
    assert "Cannot delete" in page.content.decode()
    assert Trace.objects.filter(pk=trace.pk).exists()
    assert Dataset.objects.get().trace_ids() == [trace.pk]
