"""Who may do what: every route of the URL resolver, for every role, in both visibility modes.

The routes come from the resolver, so a new one cannot slip through: it fails
`test_every_route_has_an_expectation` until it is given one below. The expectations are written
from the policy (README, "Who may do what"; runs/permissions.py), not read from the code:

- anonymous: the API answers 401, pages redirect to the login page, the admin to its own;
- plain (a user in no group) and viewer (staff holding only `runs.view_run`): read, cancel their
  own runs, nothing else; the viewer also lists runs in the admin but gets no action there;
- submitter (`submitters`): also submits and requeues their own runs, uploads traces, builds
  datasets;
- operator (`operators`, staff): also cancels and requeues anyone's run, sets priorities, sees
  every run in `owner` mode, reads the admin console;
- superuser: everything.

With TUNIX_RUN_VISIBILITY=owner another user's run (and all under it) is a 404 for everyone but
operators and superusers. Each request runs inside a savepoint that is rolled back, so every one
starts from the same rows; a refused request must leave them exactly as they were, and an
allowed write must have changed them.
"""

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.authtoken.models import Token

from artifacts.models import Artifact
from artifacts.services import artifacts_sync
from runs.models import LogChunk, RetentionPrune, Run, RunMetric, RunStatus, WorkerHeartbeat
from runs.permissions import OPERATORS, SUBMITTERS
from tests.traces.helpers import make_traces, trace_doc
from traces.models import Dataset, Trace
from traces.services import dataset_build
from webhooks.models import Webhook

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "plain", "viewer", "submitter", "operator", "superuser")
MODES = ("team", "owner")
STAFF = {"viewer", "operator", "superuser"}
SUBMIT = {"submitter", "operator", "superuser"}
MANAGE_ANY = {"operator", "superuser"}

# Outcomes besides a status code: a redirect to the site's or the admin's login page, or one
# that goes elsewhere.
LOGIN = "login"
ADMIN_LOGIN = "admin-login"
REDIRECT = "redirect"


def _routes(patterns: list[Any], prefix: str = "") -> Iterator[str]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern)


ROUTES = sorted(set(_routes(get_resolver().url_patterns)))


# -- the world each request sees ------------------------------------------------------------------


@dataclass
class World:
    actor: User | None
    runs: dict[str, dict[str, Run]] = field(default_factory=dict)  # target -> kind -> run
    objects: dict[str, dict[str, str]] = field(default_factory=dict)  # target -> model -> pk
    trace: Trace | None = None
    dataset: Dataset | None = None
    webhook: Webhook | None = None

    def run(self, target: str, kind: str = "done") -> Run:
        return self.runs[target][kind]


def _runs_of(owner: User | None, put: Callable[[Run, str, bytes], None]) -> dict[str, Run]:
    done = Run.objects.create(
        recipe="tiny_sft", timeout_seconds=60, status=RunStatus.COMPLETED, created_by=owner
    )
    pending = Run.objects.create(recipe="tiny_sft", timeout_seconds=60, created_by=owner)
    put(done, "checkpoints/10/commit_success.txt", b"ok")
    put(done, "checkpoints/10/state/data", b"weights")
    put(done, "config.json", b"{}")
    artifacts_sync(run_id=done.pk)
    LogChunk.objects.create(run=done, seq=1, stream="stdout", chunk="step 1 loss 2.0\n")
    RunMetric.objects.create(run=done, step=1, values={"loss": 2.0})
    return {"done": done, "pending": pending}


@pytest.fixture
def world_for(make_user: Any, artifact_root: Path, settings: Any) -> Callable[[str, str], World]:
    def put(run: Run, name: str, data: bytes) -> None:
        path = artifact_root / str(run.pk) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def build(role: str, mode: str) -> World:
        settings.TUNIX_RUN_VISIBILITY = mode
        bob = make_user("bob", roles=[SUBMITTERS])
        actor = {
            "anonymous": lambda: None,
            "plain": lambda: make_user("pat"),
            "viewer": lambda: make_user("vic", is_staff=True, perms=["runs.view_run"]),
            "submitter": lambda: make_user("sue", roles=[SUBMITTERS]),
            "operator": lambda: make_user("olga", roles=[OPERATORS], is_staff=True),
            "superuser": lambda: make_user("root", is_staff=True, is_superuser=True),
        }[role]()
        world = World(actor=actor)
        owners = {"other": bob} if actor is None else {"other": bob, "own": actor}
        Token.objects.create(user=bob)
        for target, owner in owners.items():
            runs = _runs_of(owner, put)
            world.runs[target] = runs
            done = runs["done"]
            world.objects[target] = {
                "runs/run": str(done.pk),
                "runs/logchunk": str(LogChunk.objects.get(run=done).pk),
                "runs/runmetric": str(RunMetric.objects.get(run=done).pk),
                "artifacts/artifact": str(Artifact.objects.filter(run=done).first().pk),  # type: ignore[union-attr]
            }
        trace = make_traces(2)[0]
        world.trace = trace
        world.dataset = dataset_build(name="base", version="v1", created_by=None, limit=2)
        beat = WorkerHeartbeat.objects.create(
            worker_id="w1",
            hostname="h",
            pid=1,
            started_at=done.created_at,
            last_seen=done.created_at,
        )
        attempt = AccessAttempt.objects.create(
            username="mallory",
            ip_address="10.0.0.1",
            user_agent="x",
            get_data="",
            post_data="",
            failures_since_start=1,
        )
        prune = RetentionPrune.objects.create(started_at=done.created_at, trigger="command")
        world.webhook = Webhook.objects.create(
            name="matrix", url="https://hooks.example/matrix", events=["run.completed"]
        )
        shared = {
            "runs/workerheartbeat": str(beat.pk),
            "runs/retentionprune": str(prune.pk),
            "webhooks/webhook": str(world.webhook.pk),
            "webhooks/webhookdelivery": "1",
            "traces/trace": str(trace.pk),
            "traces/dataset": str(world.dataset.pk),
            "auth/user": str(bob.pk),
            "auth/group": str(Group.objects.get(name=SUBMITTERS).pk),
            "authtoken/tokenproxy": str(bob.pk),
            "axes/accessattempt": str(attempt.pk),
            "axes/accesslog": "1",
            "axes/accessfailurelog": "1",
        }
        for objects in world.objects.values():
            objects.update(shared)
        return world

    return build


# What a request could write: a model's rows as these columns, or (None) just how many there are.
WATCHED: list[tuple[type[Any], tuple[str, ...] | None]] = [
    (Run, ("id", "status", "priority", "created_by", "pinned")),
    (Trace, None),
    (Dataset, ("key",)),
    (Artifact, None),
    (User, ("id", "username", "is_active")),
    (Group, ("name",)),
    (Token, None),
    (AccessAttempt, None),
    (WorkerHeartbeat, None),
    (Webhook, ("id", "secret", "active", "url")),
]
WIDTH = 5


def _snapshot_sql() -> str:
    """One query for all of WATCHED (it runs twice per request, ~1,000 times per case): each
    row as text columns padded to WIDTH, in SQL both PostgreSQL and SQLite speak."""
    quote = connection.ops.quote_name
    parts = []
    for model, fields in WATCHED:
        table = quote(model._meta.db_table)
        if fields is None:
            columns = ["CAST(COUNT(*) AS TEXT)"]
        else:
            columns = [
                f"COALESCE(CAST({quote(model._meta.get_field(f).column)} AS TEXT), '')"
                for f in fields
            ]
        padded = columns + ["''"] * (WIDTH - len(columns))
        parts.append(f"SELECT '{table}', {', '.join(padded)} FROM {table}")  # noqa: S608
    return " UNION ALL ".join(parts) + " ORDER BY 1, 2, 3, 4, 5, 6"


def snapshot() -> list[tuple[str, ...]]:
    """Every row a request could write, in a comparable form."""
    with connection.cursor() as cursor:
        cursor.execute(_snapshot_sql())
        return list(cursor.fetchall())


# -- what each route must answer -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    role: str
    mode: str
    target: str  # "own" or "other": whose run (or run's row) the URL names

    @property
    def sees(self) -> bool:
        return self.target == "own" or self.mode == "team" or self.role in MANAGE_ANY

    @property
    def manages(self) -> bool:
        return self.target == "own" or self.role in MANAGE_ANY


Expect = tuple[Any, ...]  # acceptable outcomes; the first decides whether it is a refusal
NOT_ALLOWED: Expect = (405,)


def _api(case: Case, method: str, get: Expect, post: Expect) -> Expect:
    if case.role == "anonymous":
        return (401,)
    return get if method == "GET" else post


def _run_read(case: Case, method: str, ok: int = 200) -> Expect:
    return _api(case, method, (ok,) if case.sees else (404,), NOT_ALLOWED)


def _page(case: Case, method: str, get: Expect, post: Expect) -> Expect:
    if case.role == "anonymous":
        return (LOGIN,)
    return get if method == "GET" else post


def _run_page(case: Case, method: str) -> Expect:
    return _page(case, method, (200,) if case.sees else (404,), NOT_ALLOWED)


def _cancel_api(case: Case, method: str) -> Expect:
    if not case.sees:
        post: Expect = (404,)
    else:
        post = (200,) if case.manages else (403,)
    return _api(case, method, NOT_ALLOWED, post)


def _cancel_page(case: Case, method: str) -> Expect:
    if not case.sees:
        return _page(case, method, (404,), (404,))
    return _page(case, method, (200,), (REDIRECT,) if case.manages else (403,))


def _requeue_page(case: Case, method: str) -> Expect:
    if not case.sees:
        post: Expect = (404,)
    else:
        post = (REDIRECT,) if case.manages and case.role in SUBMIT else (403,)
    return _page(case, method, NOT_ALLOWED, post)


def _requeue_api(case: Case, method: str) -> Expect:
    """Requeue and continue submit a run: a user who may not submit is refused before the run
    is looked up (the same 403 for any id); a submitter then needs to see the run and own it,
    or to manage any run."""
    if case.role not in SUBMIT:
        post: Expect = (403,)
    elif not case.sees:
        post = (404,)
    else:
        post = (202,) if case.manages else (403,)
    return _api(case, method, NOT_ALLOWED, post)


def _pin_api(case: Case, method: str) -> Expect:
    if not case.sees:
        post: Expect = (404,)
    else:
        post = (200,) if case.manages else (403,)
    return _api(case, method, NOT_ALLOWED, post)


def _operators_only(case: Case, method: str, page: bool = False) -> Expect:
    get: Expect = (200,) if case.role in MANAGE_ANY else (403,)
    return (_page if page else _api)(case, method, get, NOT_ALLOWED)


def _webhook_api(case: Case, method: str, get: int, post: int) -> Expect:
    if case.role not in MANAGE_ANY:
        return _api(case, method, (403,), (403,))
    return _api(case, method, (get,), (post,))


def _continue_page(case: Case, method: str) -> Expect:
    if not case.sees:
        return _page(case, method, (404,), (404,))
    if not (case.manages and case.role in SUBMIT):
        return _page(case, method, (403,), (403,))
    # An empty form is refused in place.
    return _page(case, method, (200,), (400,))


def _submit_api(case: Case, method: str, created: int) -> Expect:
    return _api(case, method, NOT_ALLOWED, (created,) if case.role in SUBMIT else (403,))


# Per model in the admin: who may list and view its rows (view), and who may add, change or
# delete them. TunixOps' own rows are never written through the admin (one write path), so
# even superusers get 403 there; the admin's only writes are the run actions, through services.
ADMIN_VIEW: dict[str, set[str]] = {
    "runs/run": {"viewer", "operator", "superuser"},
    "runs/logchunk": MANAGE_ANY,
    "runs/runmetric": MANAGE_ANY,
    "runs/workerheartbeat": MANAGE_ANY,
    "runs/retentionprune": MANAGE_ANY,
    "artifacts/artifact": MANAGE_ANY,
    "traces/trace": MANAGE_ANY,
    "traces/dataset": MANAGE_ANY,
    "auth/user": {"superuser"},
    "auth/group": {"superuser"},
    "authtoken/tokenproxy": {"superuser"},
    "axes/accessattempt": {"superuser"},
    "axes/accesslog": {"superuser"},
    "axes/accessfailurelog": {"superuser"},
    "webhooks/webhook": MANAGE_ANY,
    "webhooks/webhookdelivery": MANAGE_ANY,
}
# Who may delete rows there. Traces and datasets are never edited, but a superuser may delete
# one that nothing uses (a dataset a run names, a trace a dataset holds, is protected).
ADMIN_DELETE: dict[str, set[str]] = {
    "traces/trace": {"superuser"},
    "traces/dataset": {"superuser"},
}
# Tables a superuser administers with Django's and the libraries' own admin (users, groups,
# tokens, lockouts): their answers are those libraries' business; what this test holds is that
# nobody else gets in.
THIRD_PARTY = {"auth", "authtoken", "axes"}
RUN_ROWS = {"runs/run", "runs/logchunk", "runs/runmetric", "artifacts/artifact"}
# Tables this deployment keeps empty (AXES_DISABLE_ACCESS_LOG, no failure log): any row is absent.
NO_ROWS = {"axes/accesslog", "axes/accessfailurelog", "webhooks/webhookdelivery"}
# Webhooks are the operators' (the webhooks app's permissions, its own migration): what they do
# in its admin is that app's business, as users and groups are for superusers.
OPERATED = {"webhooks"}
ANY_ANSWER: Expect = ("any",)


def _admin(case: Case, method: str, staff_answer: Expect) -> Expect:
    if case.role not in STAFF:
        return (ADMIN_LOGIN,)
    return staff_answer


def _admin_model(case: Case, method: str, model: str, view: str) -> Expect:
    """`view`: changelist, add, change, delete, history, or redirect (the bare object URL).

    Django's own order of checks decides between 403 and "no such object" (a redirect to the
    admin's index): a change page refuses a user without the model's view permission first; a
    history page looks the row up first. Another user's run the user may not see is as absent
    as a deleted one.
    """
    if case.role not in STAFF:
        return (ADMIN_LOGIN,)
    app = model.split("/")[0]
    if case.role == "superuser" and app in THIRD_PARTY:
        return ANY_ANSWER
    if case.role in MANAGE_ANY and app in OPERATED:
        return ANY_ANSWER
    may_view = case.role in ADMIN_VIEW[model]
    absent = (model in RUN_ROWS and not case.sees) or model in NO_ROWS
    if view == "changelist":
        if not may_view:
            return (403,)
        # The runs list takes its Cancel action from those it offers it to; for anyone else
        # (no action at all) a POST just shows the list again.
        offered = model == "runs/run" and case.role in MANAGE_ANY
        return (REDIRECT,) if method == "POST" and offered else (200,)
    if view == "add":
        return (403,)
    if view == "delete":
        if case.role not in ADMIN_DELETE.get(model, set()):
            return (403,)
        # A trace a dataset holds is protected: the page says so (200) instead of deleting.
        return (200,) if method == "GET" else (200, REDIRECT)
    if view == "redirect":
        return (REDIRECT,)
    if view == "change":
        if method == "POST" or not may_view:
            return (403,)
        return (REDIRECT,) if absent else (200,)
    # history
    if absent:
        return (REDIRECT,)
    return (200,) if may_view else (403,)


def _admin_page(case: Case, method: str, get: int) -> Expect:
    """Django's admin pages around the models: the login is what matters; a method a page does
    not take is its own business."""
    return _admin(case, method, (get,) if method == "GET" else (get, 405))


def expect(route: str, method: str, case: Case) -> Expect:
    api_reads = {
        "api/tunix/runs/<str:run_id>": 200,
        "api/tunix/runs/<str:run_id>/status": 200,
        "api/tunix/runs/<str:run_id>/logs/snapshot": 200,
        "api/tunix/runs/<str:run_id>/metrics": 200,
        "api/tunix/runs/<str:run_id>/artifacts": 200,
        "api/tunix/runs/<str:run_id>/artifacts/<str:artifact_id>/download": 200,
        "api/tunix/runs/<str:run_id>/checkpoints": 200,
        "api/tunix/runs/<str:run_id>/checkpoints/<str:step>/download": 200,
        # The stream itself needs daphne (501 under the test client) but is authorized first.
        "api/tunix/runs/<str:run_id>/logs": 501,
    }
    if route in api_reads:
        return _run_read(case, method, api_reads[route])
    table: dict[str, Callable[[], Expect]] = {
        "healthz": lambda: (200,) if method == "GET" else NOT_ALLOWED,
        "readyz": lambda: (200,) if method == "GET" else NOT_ALLOWED,
        "metrics": lambda: (200,) if method == "GET" else NOT_ALLOWED,
        "": lambda: (REDIRECT,),
        "accounts/login/": lambda: (200, REDIRECT),
        "accounts/logout/": lambda: (200, REDIRECT) if method == "POST" else NOT_ALLOWED,
        "accounts/password_change/": lambda: _page(case, method, (200,), (200,)),
        "accounts/password_change/done/": lambda: _page(case, method, (200,), NOT_ALLOWED),
        "runs/": lambda: _page(case, method, (200,), NOT_ALLOWED),
        "runs/new/": lambda: _page(
            case,
            method,
            (200,) if case.role in SUBMIT else (403,),
            (REDIRECT,) if case.role in SUBMIT else (403,),
        ),
        "runs/<uuid:run_id>/": lambda: _run_page(case, method),
        "runs/<uuid:run_id>/panels/overview/": lambda: _run_page(case, method),
        "runs/<uuid:run_id>/panels/artifacts/": lambda: _run_page(case, method),
        "runs/<uuid:run_id>/cancel/": lambda: _cancel_page(case, method),
        "runs/<uuid:run_id>/requeue/": lambda: _requeue_page(case, method),
        "api/schema/": lambda: _api(case, method, (200,), NOT_ALLOWED),
        "api/tunix/run": lambda: _submit_api(case, method, 202),
        "api/tunix/runs": lambda: _api(case, method, (200,), NOT_ALLOWED),
        "api/tunix/runs/<str:run_id>/cancel": lambda: _cancel_api(case, method),
        "api/tunix/runs/<str:run_id>/requeue": lambda: _requeue_api(case, method),
        "api/tunix/runs/<str:run_id>/continue": lambda: _requeue_api(case, method),
        "api/tunix/recipes": lambda: _api(case, method, (200,), NOT_ALLOWED),
        # The token login is open to anyone (an empty body is refused); whoami needs a user.
        "api/auth/token": lambda: (400,) if method == "POST" else NOT_ALLOWED,
        "api/auth/whoami": lambda: _api(case, method, (200,), NOT_ALLOWED),
        "runs/<uuid:run_id>/continue/": lambda: _continue_page(case, method),
        # Pinning: the owner or an operator. The page says a refusal in a message on the run.
        "api/tunix/runs/<str:run_id>/pin": lambda: _pin_api(case, method),
        "api/tunix/runs/<str:run_id>/unpin": lambda: _pin_api(case, method),
        "runs/<uuid:run_id>/pin/": lambda: _page(
            case, method, NOT_ALLOWED, (REDIRECT,) if case.sees else (404,)
        ),
        # Comparing the user's own run with another's: that one must be visible.
        "api/tunix/runs/compare": lambda: _api(
            case, method, (200,) if case.sees else (404,), NOT_ALLOWED
        ),
        "runs/compare/": lambda: _page(case, method, (200,) if case.sees else (404,), NOT_ALLOWED),
        "runs/compare/final/": lambda: _page(
            case, method, (200,) if case.sees else (404,), NOT_ALLOWED
        ),
        "api/tunix/storage": lambda: _operators_only(case, method),
        # Webhooks: every operation needs a permission of the webhooks app (operators), checked
        # before the method and the body.
        "api/webhooks": lambda: _webhook_api(case, method, 200, 400),
        "api/webhooks/<str:webhook_id>": lambda: _webhook_api(case, method, 200, 405),
        "api/webhooks/<str:webhook_id>/rotate-secret": lambda: _webhook_api(case, method, 405, 200),
        "api/webhooks/<str:webhook_id>/deliveries": lambda: _webhook_api(case, method, 200, 405),
        "storage/": lambda: _operators_only(case, method, page=True),
        "api/traces": lambda: _api(case, method, (200,), (201,) if case.role in SUBMIT else (403,)),
        "api/traces/batch": lambda: _submit_api(case, method, 201),
        "api/traces/<str:trace_id>": lambda: _api(case, method, (200,), NOT_ALLOWED),
        "api/datasets/build": lambda: _submit_api(case, method, 201),
        "api/datasets/<str:key>": lambda: _api(case, method, (200,), NOT_ALLOWED),
        "api/datasets/<str:key>/export.jsonl": lambda: _api(case, method, (200,), NOT_ALLOWED),
        "admin/": lambda: _admin_page(case, method, 200),
        "admin/login/": lambda: (200, REDIRECT),
        # For staff a logout page (POST only); others are sent to the admin's index (and on).
        "admin/logout/": lambda: (
            ((200,) if method == "POST" else NOT_ALLOWED) if case.role in STAFF else (REDIRECT,)
        ),
        "admin/password_change/": lambda: _admin_page(case, method, 200),
        "admin/password_change/done/": lambda: _admin_page(case, method, 200),
        # Needs query parameters it is not given here: refused before any lookup.
        "admin/autocomplete/": lambda: _admin_page(case, method, 403),
        "admin/jsi18n/": lambda: _admin_page(case, method, 200),
        # Our models have no get_absolute_url: nothing to redirect to.
        "admin/r/<path:content_type_id>/<path:object_id>/": lambda: _admin_page(case, method, 404),
        "admin/(?P<url>.*)$": lambda: _admin_page(case, method, 404),
    }
    if route in table:
        return table[route]()
    if route.startswith("admin/^(?P<app_label>"):
        # /admin/runs/: the app's page lists the models the user may view (here: any staff
        # role views some model of the runs app).
        return _admin_page(case, method, 200)
    model_route = re.fullmatch(r"admin/(\w+/\w+)/(?:(add)/|<path:object_id>/(?:(\w+)/)?)?", route)
    if model_route:
        model, add, view = model_route.groups()
        if add:
            return _admin_model(case, method, model, "add")
        if "<path:object_id>" not in route:
            return _admin_model(case, method, model, "changelist")
        return _admin_model(case, method, model, view or "redirect")
    if route == "admin/auth/user/<id>/password/":
        return _admin_model(case, method, "auth/user", "change")
    raise KeyError(route)


# -- turning a route into a request ----------------------------------------------------------------


def concrete(route: str, world: World, target: str) -> str:
    run = world.run(
        target, "pending" if route.endswith("cancel/") or route.endswith("/cancel") else "done"
    )
    artifact = Artifact.objects.filter(run=world.run(target)).exclude(step__isnull=True).first()
    assert artifact is not None and world.trace is not None and world.dataset is not None
    objects = world.objects[target]
    model = re.match(r"admin/(\w+/\w+)/", route)
    values = {
        "run_id": str(run.pk),
        "artifact_id": str(artifact.pk),
        "step": "10",
        "trace_id": str(world.trace.pk),
        "key": world.dataset.key,
        "webhook_id": str(world.webhook.pk) if world.webhook else "1",
        "object_id": objects.get(model.group(1), "1") if model else "1",
        "id": objects["auth/user"],
        "content_type_id": "1",
        "url": "nowhere/",
    }
    # The admin's two regex routes first: an app's page, and the catch-all.
    path = re.sub(r"\^\(\?P<app_label>[^)]*\)/\$", "runs/", route)
    path = path.replace("(?P<url>.*)$", "nowhere/")
    path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[str(m.group(1))], path)
    if "compare" in route:
        # The actor's own run (when there is an actor) beside the target's.
        ids = [str(world.run(t).pk) for t in ("own", target) if t in world.runs]
        path += "?ids=" + ",".join(dict.fromkeys(ids))
    return path


def body_for(route: str, world: World, target: str) -> tuple[Any, str | None]:
    if route == "api/tunix/run":
        return {"recipe": "tiny_sft", "config": {"max_steps": 2}}, "application/json"
    if route == "api/traces":
        return trace_doc(7), "application/json"
    if route == "api/traces/batch":
        return {"traces": [trace_doc(8)]}, "application/json"
    if route == "api/datasets/build":
        return {"name": "matrix", "version": "v1", "limit": 1}, "application/json"
    if route.startswith("api/"):
        return {}, "application/json"
    if route == "runs/new/":
        return {"recipe": "tiny_sft", "name": "from the matrix"}, None
    if route == "admin/runs/run/":
        pending = world.run(target, "pending")
        return {"action": "cancel_selected", "_selected_action": [pending.pk], "index": "0"}, None
    if route.endswith("/delete/"):
        return {"post": "yes"}, None
    return {}, None


def outcome(response: Any) -> Any:
    if response.status_code in (301, 302):
        location = response["Location"]
        if location.startswith("/admin/login/"):
            return ADMIN_LOGIN
        if location.startswith("/accounts/login/"):
            return LOGIN
        return REDIRECT
    return response.status_code


def client_for(world: World) -> Client:
    """Logged in again after each logout route, which ends the session."""
    client = Client()
    if world.actor is not None:
        client.force_login(world.actor)
    return client


def cases() -> Iterator[tuple[str, str]]:
    for role in ROLES:
        for mode in MODES:
            yield role, mode


def test_every_route_has_an_expectation() -> None:
    case = Case("plain", "team", "own")
    missing = []
    for route in ROUTES:
        try:
            expect(route, "GET", case)
        except KeyError:
            missing.append(route)
    assert not missing, f"routes without an authorization expectation: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize(("role", "mode"), list(cases()))
def test_the_authorization_matrix(
    role: str, mode: str, world_for: Callable[[str, str], World], settings: Any
) -> None:
    world = world_for(role, mode)
    # Every request is rolled back, so each one starts from these very rows.
    baseline = snapshot()
    client = client_for(world)
    targets = ["other"] if world.actor is None else ["own", "other"]
    failures: list[str] = []
    checked = 0
    for route in ROUTES:
        names_a_run = "<" in route or route == "admin/runs/run/"
        for target in targets if names_a_run else targets[-1:]:
            for method in ("GET", "POST"):
                case = Case(role, mode, target)
                wanted = expect(route, method, case)
                got, changed = request(client, world, route, method, target, baseline)
                if "logout" in route:
                    client = client_for(world)
                checked += 1
                where = f"{method} {route} as {role}, {mode}, {target}"
                if wanted == ANY_ANSWER:
                    continue
                if got not in wanted:
                    failures.append(f"{where}: {got}, expected {wanted}")
                elif refused(route, method, wanted, case) and changed:
                    failures.append(f"{where}: refused ({got}) but changed the database")
                elif writes(route, method, got, case) and not changed:
                    failures.append(f"{where}: allowed ({got}) but changed nothing")
    assert not failures, f"{len(failures)} of {checked} checks failed:\n" + "\n".join(failures)


def request(
    client: Client,
    world: World,
    route: str,
    method: str,
    target: str,
    before: list[tuple[str, ...]],
) -> tuple[Any, bool]:
    """One request inside a savepoint rolled back afterwards; whether it changed any row."""
    path = concrete(route, world, target)
    body, content_type = body_for(route, world, target)
    with transaction.atomic():
        if method == "GET":
            response = client.get(path)
        elif content_type:
            response = client.post(path, json.dumps(body), content_type=content_type)
        else:
            response = client.post(path, body)
        changed = snapshot() != before
        transaction.set_rollback(True)
    return outcome(response), changed


def refused(route: str, method: str, wanted: Expect, case: Case) -> bool:
    first = wanted[0]
    if isinstance(first, int) and first >= 400:
        return True
    # The admin's run list takes the Cancel action only from those it offers it to; for the
    # others the POST just shows the list. The page's Pin refuses in a message.
    if route == "runs/<uuid:run_id>/pin/" and method == "POST":
        return not case.manages
    return route == "admin/runs/run/" and method == "POST" and not admin_cancels(case)


def admin_cancels(case: Case) -> bool:
    return case.role in MANAGE_ANY


def writes(route: str, method: str, got: Any, case: Case) -> bool:
    """Requests that succeed only by writing: a success that changed nothing is a failure."""
    if method != "POST":
        return False
    if route == "admin/runs/run/":
        return admin_cancels(case) and got == REDIRECT
    if route == "runs/<uuid:run_id>/pin/":
        return case.manages and got == REDIRECT
    successes = {
        "api/tunix/run": 202,
        "api/tunix/runs/<str:run_id>/cancel": 200,
        "api/tunix/runs/<str:run_id>/requeue": 202,
        "api/tunix/runs/<str:run_id>/continue": 202,
        "api/tunix/runs/<str:run_id>/pin": 200,
        "api/traces": 201,
        "api/traces/batch": 201,
        "api/datasets/build": 201,
        "runs/new/": REDIRECT,
        "runs/<uuid:run_id>/cancel/": REDIRECT,
        "runs/<uuid:run_id>/requeue/": REDIRECT,
    }
    return bool(successes.get(route) == got)


def test_the_matrix_covers_what_the_issue_names() -> None:
    names = set(ROUTES)
    for route in (
        "api/tunix/run",
        "api/tunix/runs/<str:run_id>/cancel",
        "api/tunix/runs/<str:run_id>/logs",
        "api/traces/batch",
        "runs/<uuid:run_id>/requeue/",
        "admin/runs/run/",
    ):
        assert route in names
    assert len(ROUTES) >= 100
