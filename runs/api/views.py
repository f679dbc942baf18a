"""The run REST API: one view per operation, all logic in services and selectors."""

import uuid
from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from runs import permissions, selectors, services
from runs.api import serializers as s
from runs.live import limits
from runs.live.handoff import hand_off
from runs.live.wait import SyncWait
from runs.models import TERMINAL_STATUSES, Run
from tunixops.api.errors import errors
from tunixops.api.pagination import Pagination
from tunixops.api.permissions import writes_need

LINKS = {
    "self": "api-run-detail",
    "status": "api-run-status",
    "logs": "api-run-logs",
    "artifacts": "api-artifact-list",
    "cancel": "api-run-cancel",
}


def run_links(run: Run) -> dict[str, str]:
    return {name: reverse(route, kwargs={"run_id": run.pk}) for name, route in LINKS.items()}


def sync_answer(run_id: uuid.UUID) -> tuple[int, bytes]:
    """What a `mode=sync` enqueue answers once its wait is over: 200 done, 202 still going."""
    run = selectors.run_get_or_404(run_id, user=None)
    done = run.status in TERMINAL_STATUSES
    return (200 if done else 202), JSONRenderer().render(s.RunOutput(run).data)


def enqueued(run: Run) -> Response:
    """202 with the new run's id, status and links: how every operation that queues one answers."""
    out = {"run_id": run.pk, "status": run.status, "links": run_links(run)}
    return Response(s.RunEnqueuedOutput(out).data, status=status.HTTP_202_ACCEPTED)


class RunCreateApi(APIView):
    permission_classes = [writes_need(permissions.ADD_RUN, permissions.NOT_SUBMITTER)]

    @extend_schema(
        operation_id="run_create",
        parameters=[s.RunCreateQuery],
        request=s.RunCreateInput,
        responses={
            200: PolymorphicProxySerializer(
                component_name="RunCreateDone",
                serializers=[s.RunOutput, s.DryRunOutput],
                resource_type_field_name=None,
            ),
            202: PolymorphicProxySerializer(
                component_name="RunCreateAccepted",
                serializers=[s.RunEnqueuedOutput, s.RunOutput],
                resource_type_field_name=None,
            ),
            **errors(400, 403, 413),
        },
        description=(
            "Enqueue a run. `mode=async` (default) answers 202 with its id and links at once; "
            "`mode=sync` waits up to `wait_seconds` and answers 200 with the terminal run or 202 "
            "with the whole run in its current state; `mode=dry-run` validates and shows the "
            "argv and config, storing nothing (200), with `$RUN_DIR`-style placeholders for "
            "paths. Needs the `runs.add_run` permission (403 otherwise), and "
            "`runs.set_run_priority` for a `priority` other than 0 (403 naming `priority`). "
            "429 `too_many_active_runs` when the user already has "
            "TUNIX_MAX_ACTIVE_RUNS_PER_USER runs pending or running; 429 `too_many_sync_waits` "
            "past TUNIX_SYNC_WAITS_PER_USER (or TUNIX_SYNC_WAITS_MAX in all) `mode=sync` waits "
            "in one web process. A sync wait holds no server thread or database connection."
        ),
    )
    def post(self, request: Request) -> Response:
        query = s.RunCreateQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        body = s.RunCreateInput(data=request.data)
        body.is_valid(raise_exception=True)
        data: dict[str, Any] = body.validated_data
        mode = query.validated_data["mode"]
        if mode == "dry-run":
            plan = services.run_dry_run(
                user=request.user,
                recipe=data["recipe"],
                config=data["config"],
                model_id=data["model_id"],
                dataset_key=data["dataset_key"],
            )
            return Response(s.DryRunOutput(plan).data)
        if mode != "sync":
            return enqueued(services.run_enqueue(created_by=request.user, **data))
        # Taken before the run exists: a refused wait enqueues nothing.
        ticket = limits.SYNC_WAITS.take(request.user.pk)
        try:
            run = services.run_enqueue(created_by=request.user, **data)
        except BaseException:
            ticket.release()
            raise
        wait = SyncWait(run.pk, query.validated_data["wait_seconds"], sync_answer, ticket)
        if hand_off(request, wait):
            # The event loop waits from here, with neither this thread nor a connection; if it
            # cannot read the run at the end, this answer (the run as it is) stands.
            return Response(s.RunOutput(run).data, status=status.HTTP_202_ACCEPTED)
        # Served without the ASGI wrapper (tests, WSGI): wait here.
        try:
            run = services.run_wait(run_id=run.pk, timeout=wait.timeout)
        finally:
            ticket.release()
        done = run.status in TERMINAL_STATUSES
        return Response(s.RunOutput(run).data, status=200 if done else 202)


class RecipeListApi(APIView):
    @extend_schema(
        operation_id="recipe_list",
        responses={200: s.RecipeOutput(many=True), **errors()},
        description=(
            "Every recipe a run may name, by name, with its config keys: type, bounds, choices "
            "and default. Clients use it to type `key=value` settings before they enqueue."
        ),
    )
    def get(self, request: Request) -> Response:
        return Response(s.RecipeOutput(selectors.recipe_list(), many=True).data)


class RunListApi(APIView):
    pagination_class = Pagination

    @extend_schema(
        operation_id="run_list",
        parameters=[
            s.RunListQuery,
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="At most 100."),
        ],
        responses={200: s.RunOutput(many=True), **errors(400, 404)},
        description=(
            "Newest first, 50 a page. A page past the last one answers 404. With "
            "TUNIX_RUN_VISIBILITY=owner, only the user's own runs (operators: all)."
        ),
    )
    def get(self, request: Request) -> Response:
        query = s.RunListQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        runs = selectors.run_list(user=request.user, **query.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(runs, request, view=self)
        return paginator.get_paginated_response(s.RunOutput(page, many=True).data)


class RunDetailApi(APIView):
    @extend_schema(operation_id="run_retrieve", responses={200: s.RunOutput, **errors(404)})
    def get(self, request: Request, run_id: str) -> Response:
        return Response(s.RunOutput(selectors.run_get_or_404(run_id, user=request.user)).data)


class RunStatusApi(APIView):
    @extend_schema(operation_id="run_status", responses={200: s.RunStatusOutput, **errors(404)})
    def get(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get_or_404(run_id, user=request.user)
        return Response(s.RunStatusOutput(run).data)


class RunCancelApi(APIView):
    @extend_schema(
        operation_id="run_cancel",
        request=s.RunCancelInput,
        responses={200: s.RunStatusOutput, **errors(400, 403, 404, 409, 413)},
        description=(
            "Pending runs are cancelled at once; running ones move to `cancel_requested` and the "
            "worker terminates them. Repeating a cancel is safe; a finished run answers 409. "
            "Your own run needs no permission; anyone else's needs `runs.manage_any_run` (403)."
        ),
    )
    def post(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get_or_404(run_id, user=request.user)
        body = s.RunCancelInput(data=request.data or {})
        body.is_valid(raise_exception=True)
        run = services.run_cancel(
            run_id=run.pk, user=request.user, reason=body.validated_data["reason"]
        )
        return Response(s.RunStatusOutput(run).data)


class RunPinApi(APIView):
    pinned = True

    @extend_schema(
        operation_id="run_pin",
        request=None,
        responses={200: s.RunPinOutput, **errors(403, 404)},
        description=(
            "Pin the run: retention never prunes its log or checkpoints. Its owner or an "
            "operator (`runs.manage_any_run`) may; others get 403. Repeating is safe."
        ),
    )
    def post(self, request: Request, run_id: str) -> Response:
        run = selectors.run_get_or_404(run_id, user=request.user)
        run = services.run_pin(run_id=run.pk, user=request.user, pinned=self.pinned)
        return Response(s.RunPinOutput(run).data)


class RunUnpinApi(RunPinApi):
    pinned = False

    @extend_schema(
        operation_id="run_unpin",
        request=None,
        responses={200: s.RunPinOutput, **errors(403, 404)},
        description="Unpin the run: retention may prune it again. Same rules as pinning.",
    )
    def post(self, request: Request, run_id: str) -> Response:
        return super().post(request, run_id)


# Requeue and continue submit a new run: they need what a submission needs, before the body.
SUBMITTERS_ONLY = writes_need(permissions.ADD_RUN, permissions.NOT_SUBMITTER)


class RunRequeueApi(APIView):
    permission_classes = [SUBMITTERS_ONLY]

    @extend_schema(
        operation_id="run_requeue",
        request=s.RunRequeueInput,
        responses={202: s.RunEnqueuedOutput, **errors(400, 403, 404, 409, 413)},
        description=(
            "Run a finished run again: a new pending run with the same recipe, config, model, "
            "dataset and limits, whose `requeued_from` names the original (as the pages' \"Run "
            "again\" and the admin's Requeue). A run not yet finished answers 409; a recipe "
            "since removed or tightened refuses the copy with the same 400 as a new run. Needs "
            "`runs.add_run`, and `runs.manage_any_run` for someone else's run (403); 429 past "
            "the user's quota of active runs."
        ),
    )
    def post(self, request: Request, run_id: str) -> Response:
        original = selectors.run_get_or_404(run_id, user=request.user)
        s.RunRequeueInput(data=request.data or {}).is_valid(raise_exception=True)
        run = services.run_requeue(run_id=original.pk, user=request.user)
        return enqueued(run)


class RunContinueApi(APIView):
    permission_classes = [SUBMITTERS_ONLY]

    @extend_schema(
        operation_id="run_continue",
        request=s.RunContinueInput,
        responses={202: s.RunEnqueuedOutput, **errors(400, 403, 404, 409, 413)},
        description=(
            "Continue a finished run from a committed checkpoint step (its last by default): a "
            "new pending run, linked by `continued_from`, whose run directory starts with that "
            "step's files so training resumes from it; `config` changes settings within the "
            "recipe's bounds (e.g. more `max_steps`). With `recipe`, fork into another recipe "
            "that declares it can start from this one's checkpoints. A run not yet finished "
            "answers 409; no such step, or a recipe that cannot start from it, 400. Needs what "
            "a requeue needs (403)."
        ),
    )
    def post(self, request: Request, run_id: str) -> Response:
        parent = selectors.run_get_or_404(run_id, user=request.user)
        body = s.RunContinueInput(data=request.data or {})
        body.is_valid(raise_exception=True)
        run = services.run_continue(run_id=parent.pk, user=request.user, **body.validated_data)
        return enqueued(run)
